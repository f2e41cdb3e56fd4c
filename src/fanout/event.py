"""What happens during a run, as it happens: the engine emits these, observers consume them.

The live terminal view, the stderr progress line, the ``--jsonl`` stream and the history are
all observers; the engine knows none of them. Every call event carries its ``Call`` (stage,
role, call id), so an observer handles a role it has never heard of like any other call.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from fanout.models import Agent, Call, CallResult, RunReport
from fanout.summary import Verdict

_log = logging.getLogger("fanout")


@dataclass(frozen=True)
class RunStarted:
    run_id: str
    trace_id: str
    prompt: str
    shape: str
    stages: Sequence[tuple[str, str]]  # (stage id, kind), in the order they will run
    agents: Sequence[str] = ()  # the personas asked
    roles: Mapping[str, str] = field(default_factory=dict)  # role -> who plays it
    span_id: str = ""  # the run's span; its calls' spans are children of it
    parent_span_id: str | None = None  # the span this run continues (TRACEPARENT), if any
    epoch_ns: int = 0  # wall-clock time (ns since the epoch) of the run's time zero
    conversation_id: str = ""  # the conversation the run is a turn of ("": its own)
    turn: int = 1


@dataclass(frozen=True)
class StageStarted:
    """A stage begins; ``calls`` are the calls it will make (possibly none)."""

    stage: str
    kind: str
    calls: Sequence[Call]


@dataclass(frozen=True)
class CallStarted:
    """The call got its slot and is about to be made (the first attempt)."""

    call: Call

    @property
    def agent(self) -> Agent:
        return self.call.agent


@dataclass(frozen=True)
class CallWaiting:
    """The call's endpoint is rate-limited: the next attempt waits for its turn, for about
    ``wait_s`` seconds if the limiter can tell (None: it cannot, as when others queue first)."""

    call: Call
    wait_s: float | None = None


@dataclass(frozen=True)
class CallSending:
    """An attempt (from 1) is on its way; its request carries ``span_id`` in ``traceparent``."""

    call: Call
    attempt: int
    span_id: str = ""


@dataclass(frozen=True)
class CallRetrying:
    """An attempt failed and the next one starts in ``wait_s`` seconds."""

    call: Call
    attempt: int  # the attempt that failed
    max_attempts: int
    wait_s: float
    reason: str  # the HTTP status, or the kind of failure (timeout, connection...)
    message: str


@dataclass(frozen=True)
class CallFallback:
    """A model gave up (after its retries) for a reason another may not have: the call goes
    on with the persona's next ``fallbacks:`` model; ``call`` is the call as it now is."""

    call: Call
    from_model: str
    to_model: str
    reason: str  # the HTTP status, or the kind of failure
    message: str


@dataclass(frozen=True)
class CallDelta:
    """A piece of a streamed answer."""

    call: Call
    text: str


@dataclass(frozen=True)
class CallFinished:
    call: Call
    result: CallResult


@dataclass(frozen=True)
class StageFinished:
    stage: str
    kind: str
    verdict: Verdict | None
    key: str | None = None  # the verdict's name in the result document (``vote``...)


@dataclass(frozen=True)
class RunFinished:
    report: RunReport


Event = (
    RunStarted
    | StageStarted
    | CallStarted
    | CallWaiting
    | CallSending
    | CallRetrying
    | CallFallback
    | CallDelta
    | CallFinished
    | StageFinished
    | RunFinished
)


class Observer(Protocol):
    """Anything that wants to hear about a run. ``handle`` must be quick. An observer with a
    true ``wants_deltas`` attribute gets answers streamed to it."""

    def handle(self, event: Event) -> None: ...


class Broadcast:
    """Hands every event to several observers, in order. An observer that raises is cut off
    (its error kept in ``failures``) and never disturbs the run or the other observers."""

    def __init__(self, *observers: Observer) -> None:
        self.observers = list(observers)
        self.failures: list[tuple[Observer, Exception]] = []

    def handle(self, event: Event) -> None:
        for observer in list(self.observers):
            try:
                observer.handle(event)
            except Exception as exc:  # an observer's bug is its own, never the run's
                _log.debug("observer %r failed", observer, exc_info=True)
                self.observers.remove(observer)
                self.failures.append((observer, exc))

    @property
    def wants_deltas(self) -> bool:
        return any(getattr(o, "wants_deltas", False) for o in self.observers)
