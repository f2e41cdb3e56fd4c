"""A call's recorded timing as phases on the run's time axis: what the terminal timeline, the
Perfetto trace, the HTML page and the OpenTelemetry spans all draw from. Data only, no I/O.

An attempt waits (for a concurrency slot, the rate limiter, the budget), then waits for its
first token, then streams; a failed attempt is followed by its back-off. An answer asked for
whole has no streaming phase: its wait for the first token is the wait for the answer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from fanout.models import CallResult, CallTiming, RunReport

PhaseKind = Literal["waiting", "backoff", "first_token", "streaming"]
PHASE_KINDS: tuple[PhaseKind, ...] = ("waiting", "backoff", "first_token", "streaming")
PHASE_NAMES: dict[str, str] = {
    "waiting": "waiting",
    "backoff": "retry back-off",
    "first_token": "until first token",
    "streaming": "streaming",
}


@dataclass(frozen=True)
class Phase:
    kind: PhaseKind
    start_s: float
    end_s: float
    attempt: int

    @property
    def duration_s(self) -> float:
        return max(self.end_s - self.start_s, 0.0)


def phases(timing: CallTiming) -> list[Phase]:
    """The phases of every attempt, in time order. Phases of no length are left out."""
    found: list[Phase] = []

    def add(kind: PhaseKind, start: float, end: float | None, attempt: int) -> None:
        if end is not None and end > start:
            found.append(Phase(kind, start, end, attempt))

    for attempt in timing.attempts:
        n, end = attempt.attempt, attempt.end_s
        if attempt.sent_s is None:  # never sent: cut short or refused while it waited
            add("waiting", attempt.queued_s, end, n)
        else:
            add("waiting", attempt.queued_s, attempt.sent_s, n)
            first = attempt.first_token_s
            add("first_token", attempt.sent_s, first if first is not None else end, n)
            if first is not None:
                add("streaming", first, end, n)
        if end is not None and attempt.backoff_s:
            add("backoff", end, end + attempt.backoff_s, n)
    return found


def call_span(result: CallResult) -> tuple[float, float] | None:
    """When the call was queued and when it ended, on the run's axis; None without timing."""
    timing = result.timing
    if timing is None:
        return None
    ends = [a.end_s for a in timing.attempts if a.end_s is not None]
    end = timing.end_s if timing.end_s is not None else max(ends, default=timing.queued_s)
    return timing.queued_s, end


def axis_end(report: RunReport) -> float:
    """The end of the run's time axis: its duration, or the last recorded moment if later."""
    ends: Iterable[float] = (span[1] for r in report.calls if (span := call_span(r)) is not None)
    return max([report.duration_s or 0.0, *ends])
