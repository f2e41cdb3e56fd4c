"""What happens during a run, as it happens: the runner emits these, observers consume them.

The live terminal view, the stderr progress line and the ``--jsonl`` stream are all observers;
the runner knows none of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from fanout.models import Agent, AgentResult, RunReport


@dataclass(frozen=True)
class RunStarted:
    run_id: str
    prompt: str
    agents: Sequence[Agent]
    synthesizer: Agent | None


@dataclass(frozen=True)
class AgentStarted:
    """The agent got a concurrency slot; ``synthesis`` marks the synthesizer."""

    agent: Agent
    synthesis: bool = False


@dataclass(frozen=True)
class AgentWaiting:
    """The agent's endpoint is rate-limited: the next attempt waits for its turn."""

    agent: Agent


@dataclass(frozen=True)
class AgentSending:
    """An attempt (from 1) is on its way."""

    agent: Agent
    attempt: int


@dataclass(frozen=True)
class AgentRetrying:
    """An attempt failed and the next one starts in ``wait_s`` seconds."""

    agent: Agent
    attempt: int  # the attempt that failed
    max_attempts: int
    wait_s: float
    reason: str  # the HTTP status, or the kind of failure (timeout, connection...)
    message: str


@dataclass(frozen=True)
class AgentDelta:
    """A piece of a streamed answer."""

    agent: Agent
    text: str


@dataclass(frozen=True)
class AgentFinished:
    result: AgentResult
    synthesis: bool = False


@dataclass(frozen=True)
class RunFinished:
    report: RunReport


Event = (
    RunStarted
    | AgentStarted
    | AgentWaiting
    | AgentSending
    | AgentRetrying
    | AgentDelta
    | AgentFinished
    | RunFinished
)


class Observer(Protocol):
    """Anything that wants to hear about a run. ``handle`` must be quick and never raise.
    An observer with a true ``wants_deltas`` attribute gets answers streamed to it."""

    def handle(self, event: Event) -> None: ...


class Broadcast:
    """Hands every event to several observers, in order."""

    def __init__(self, *observers: Observer) -> None:
        self.observers = list(observers)

    def handle(self, event: Event) -> None:
        for observer in self.observers:
            observer.handle(event)

    @property
    def wants_deltas(self) -> bool:
        return any(getattr(o, "wants_deltas", False) for o in self.observers)
