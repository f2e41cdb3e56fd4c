"""A run as Chrome trace-event JSON (``fanout runs export RUN --format perfetto``), to open in
ui.perfetto.dev or chrome://tracing.

One process is the run; its first track holds the run and its stages, then one track per
call. On a call's track: ``queued`` (waiting for its first slot), then the call itself (as long
as its recorded ``latency_s``), holding its attempts, each holding its phases (waiting, until
first token, streaming) and followed by its retry back-off; the first token is an instant
event. Times are microseconds from the run's start, as the trace-event format wants.
"""

from __future__ import annotations

from fanout.models import AttemptTiming, CallResult, RunReport
from fanout.timing import PHASE_NAMES, axis_end

_PID = 1
_RUN_TRACK = 0


def perfetto_trace(report: RunReport) -> dict[str, object]:
    """The trace-event document of a run (the JSON object form, with ``traceEvents``)."""
    events: list[dict[str, object]] = [
        _meta("process_name", 0, {"name": f"fanout run {report.run_id}"}),
        _meta("thread_name", _RUN_TRACK, {"name": "run"}),
        _meta("thread_sort_index", _RUN_TRACK, {"sort_index": 0}),
    ]
    end = axis_end(report)
    events.append(
        _slice(
            "run", "run", _RUN_TRACK, 0.0, end,
            {"run_id": report.run_id, "trace_id": report.trace_id, "status": report.status},
        )
    )  # fmt: skip
    track = _RUN_TRACK
    for stage in report.stages:
        spans = [s for r in stage.calls if (s := _window(r)) is not None]
        if spans:
            start, stop = min(s for s, _ in spans), max(e for _, e in spans)
            events.append(_slice(stage.kind, "stage", _RUN_TRACK, start, stop, {"id": stage.id}))
        for result in stage.calls:
            track += 1
            events.append(_meta("thread_name", track, {"name": f"{result.call_id}"}))
            events.append(_meta("thread_sort_index", track, {"sort_index": track}))
            events.extend(_call_events(result, track))
    return {
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {"run_id": report.run_id, "trace_id": report.trace_id or ""},
    }


def _window(result: CallResult) -> tuple[float, float] | None:
    """From the call's first slot (where its latency starts) to its end."""
    timing = result.timing
    if timing is None or not timing.attempts or timing.end_s is None:
        return None
    first = timing.attempts[0]
    start = first.slot_s if first.slot_s is not None else first.queued_s
    return min(start, timing.end_s), timing.end_s


def _call_events(result: CallResult, track: int) -> list[dict[str, object]]:
    timing, window = result.timing, _window(result)
    if timing is None or window is None:
        return []
    start, end = window
    events: list[dict[str, object]] = []
    if start > timing.queued_s:
        events.append(_slice("queued", "waiting", track, timing.queued_s, start, {}))
    events.append(
        _slice(
            result.name, result.stage, track, start, end,
            {
                "call_id": result.call_id, "model": result.model, "status": result.status,
                "attempts": result.attempts, "latency_s": result.latency_s,
                "ttft_s": result.ttft_s, "tokens": result.usage.total_tokens,
                "span_id": timing.span_id,
            },
        )
    )  # fmt: skip
    attempts = timing.attempts
    for i, attempt in enumerate(attempts):
        following = attempts[i + 1].queued_s if i + 1 < len(attempts) else end
        events.extend(_attempt_events(attempt, track, start, end, following))
    return events


def _attempt_events(
    attempt: AttemptTiming, track: int, call_start: float, call_end: float, following: float
) -> list[dict[str, object]]:
    """One attempt's slice and its phases, clipped to the call so that every slice nests."""
    begin = max(attempt.queued_s, call_start)
    finish = min(attempt.end_s if attempt.end_s is not None else call_end, call_end)
    if finish < begin:
        return []
    args: dict[str, object] = {"span_id": attempt.span_id}
    if attempt.error is not None:
        args["error"] = attempt.error
    name = f"attempt {attempt.attempt}"
    events = [_slice(name, "attempt", track, begin, finish, args)]
    sent, first = attempt.sent_s, attempt.first_token_s
    marks: list[tuple[str, float, float]] = [
        ("waiting", begin, sent if sent is not None else finish),
    ]
    if sent is not None:
        marks.append(("first_token", sent, first if first is not None else finish))
        if first is not None:
            marks.append(("streaming", first, finish))
    for kind, phase_start, phase_end in marks:
        low, high = max(phase_start, begin), min(phase_end, finish)
        if high > low:
            events.append(_slice(PHASE_NAMES[kind], kind, track, low, high, {}))
    if first is not None and begin <= first <= finish:
        events.append(
            {"name": "first token", "cat": "first_token", "ph": "i", "s": "t",
             "pid": _PID, "tid": track, "ts": _us(first)}
        )  # fmt: skip
    if attempt.backoff_s and attempt.end_s is not None:
        back_end = min(attempt.end_s + attempt.backoff_s, following, call_end)
        if back_end > finish:
            events.append(_slice(PHASE_NAMES["backoff"], "backoff", track, finish, back_end, {}))
    return events


def _slice(
    name: str, category: str, track: int, start: float, end: float, args: dict[str, object]
) -> dict[str, object]:
    """A complete ("X") event. Its end is rounded on its own, not its duration, so slices
    that share an end in seconds share it in microseconds and nest exactly."""
    begin = _us(start)
    return {
        "name": name,
        "cat": category,
        "ph": "X",
        "pid": _PID,
        "tid": track,
        "ts": begin,
        "dur": max(_us(end) - begin, 0),
        "args": args,
    }


def _meta(name: str, track: int, args: dict[str, object]) -> dict[str, object]:
    return {"name": name, "ph": "M", "pid": _PID, "tid": track, "args": args}


def _us(seconds: float) -> int:
    return round(seconds * 1_000_000)
