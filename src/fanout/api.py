"""The Python API: a ``RunRequest`` in, a ``RunReport`` out, events along the way.

::

    import fanout

    panel = fanout.load_panel()  # the agents file fanout would find, or the shipped panel
    report = fanout.run(fanout.RunRequest("What is temperature?", panel, agents=["physicist"]))
    print(report.to_dict()["output"])

    async with fanout.events(request) as stream:  # for a server, a notebook, a UI
        async for event in stream:
            ...

No printing, exit codes, ``sys.exit``, signal handlers or event loop here (``run`` is the one
synchronous convenience, and starts its own loop): the CLI and the server are clients of this.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio

from fanout.config import Panel, apply_model, bound_answer, check_credentials
from fanout.config import load_panel as _load_panel
from fanout.cost import (
    DEFAULT_COMPLETION_ESTIMATE,
    PlannedCall,
    Pricing,
    check_prices,
    planned_call,
)
from fanout.engine import (
    Engine,
    Execution,
    Provider,
    RunContext,
    RunSettings,
    Stage,
    unwrap_fanout_error,
)
from fanout.errors import ConfigError
from fanout.event import Broadcast, Event, Observer
from fanout.models import Agent, Call, CallResult, RunReport, StageResult
from fanout.params import check_params, with_params
from fanout.shapes import build_plan, check_plan, roles_of

if TYPE_CHECKING:
    from pathlib import Path

    from fanout.conversation import Transcript


def load_panel(path: Path | str | None = None) -> Panel:
    """The agents file at ``path``; without one, the file fanout would find (``$FANOUT_CONFIG``,
    ``./agents.yaml``, the user config dir) or else the panel shipped with fanout."""
    from pathlib import Path

    from fanout.config import find_config

    found = Path(path) if path is not None else find_config(None, os.environ)
    return _load_panel(found)


@dataclass(frozen=True)
class RunRequest:
    """What to run: a prompt, a panel, the personas chosen from it, the shape and its options
    (``{"synthesize": True}``), and how to run it."""

    prompt: str
    panel: Panel | None = None  # None: load_panel()
    agents: Sequence[str] | None = None  # persona names; None: the whole panel
    shape: str = "panel"
    options: Mapping[str, Any] = field(default_factory=dict)
    settings: RunSettings = field(default_factory=RunSettings)
    model: str | None = None  # one model for every call of this run
    run_id: str | None = None
    trace_id: str | None = None
    parent_span_id: str | None = None  # with trace_id: the span this run continues
    # The conversation this run is the next turn of (its id, its earlier turns): each persona
    # is sent its own thread. None: a conversation of its own.
    conversation: Transcript | None = None


@dataclass(frozen=True)
class Plan:
    """A request resolved: the personas and roles that will be asked, and the stages."""

    request: RunRequest
    agents: list[Agent]
    roles: dict[str, Agent]
    stages: list[Stage]
    pricing: Pricing
    panel: Panel | None = None  # where the personas and roles came from

    @property
    def callers(self) -> list[Agent]:
        return [*self.agents, *self.roles.values()]

    def role(self, name: str) -> Agent:
        """The agent that plays ``name``: the plan's own, else the panel's as this request
        would have it (``--model``, a budget's bound on answers), for a run carried on later
        (``runs synth`` asks the synthesizer of a run that had no synthesis)."""
        if name in self.roles:
            return self.roles[name]
        panel = self.panel or load_panel()
        agent = apply_model([panel.role(name)], self.request.model)[0]
        return bound_answer(agent) if self.request.settings.max_cost is not None else agent

    def context(self) -> RunContext:
        """What the plan's first stage sees: its question, personas, roles and options."""
        request = self.request
        return RunContext(
            request.prompt,
            self.agents,
            self.roles,
            request.options,
            conversation=request.conversation,
        )

    def asking(self, prompt: str) -> Plan:
        """The same plan for another prompt (a batch's next line)."""
        return replace(self, request=replace(self.request, prompt=prompt))

    def pointed(self, point: Callable[[Agent], Agent]) -> Plan:
        """The plan with every persona and role passed through ``point`` (onto the local
        server for this run)."""
        return replace(
            self,
            agents=[point(a) for a in self.agents],
            roles={r: point(a) for r, a in self.roles.items()},
        )


def resolve(request: RunRequest, *, priced: bool = True) -> Plan:
    """Check a request and work out who will be asked; ``ConfigError`` if it can't run.
    ``priced``: with ``max_cost``, every model must have a known price (a dry run, which only
    shows what would fit, passes False)."""
    _check(request)
    panel = request.panel or load_panel()
    agents = apply_model(panel.select(request.agents), request.model)
    # --param: the same request fields for every persona (not the synthesizer, judge...).
    agents = [with_params(a, request.settings.params) for a in agents]
    stages = build_plan(request.shape, request.options)
    check_plan(request.shape, request.options, agents)
    roles = {r: apply_model([panel.role(r)], request.model)[0] for r in roles_of(stages)}
    pricing = Pricing.shipped(panel.pricing)
    if request.settings.max_cost is not None:
        # A budget needs a price for every model and a bound on every answer: personas
        # without max_tokens get the default.
        if priced:
            check_prices([*agents, *roles.values()], pricing)
        agents = [bound_answer(a) for a in agents]
        roles = {r: bound_answer(a) for r, a in roles.items()}
    return Plan(request, agents, roles, stages, pricing, panel)


def _check(request: RunRequest) -> None:
    """The request's own values, as the CLI checks its flags: one ``ConfigError`` each."""
    if not isinstance(request.prompt, str) or not request.prompt.strip():
        raise ConfigError("the prompt must be non-empty text")
    try:
        request.prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError("the prompt is not valid text (a lone surrogate)") from None
    if request.panel is not None and not isinstance(request.panel, Panel):
        raise ConfigError("panel: give a Panel (fanout.load_panel(path)), not a path or text")
    agents = request.agents
    if agents is not None and (
        isinstance(agents, str) or not all(isinstance(a, str) and a for a in agents)
    ):
        raise ConfigError("agents: give a list of persona names, e.g. ['physicist']")
    if not isinstance(request.options, Mapping):
        raise ConfigError("options: give a mapping of the shape's options, e.g. {'quorum': 0.6}")
    if request.conversation is not None:
        from fanout.conversation import check_transcript

        check_transcript(request.conversation)
    if request.trace_id is not None and not _HEX32.fullmatch(request.trace_id):
        raise ConfigError("trace_id: 32 lowercase hex digits, not all zero")
    settings = request.settings
    bounds = (
        ("concurrency", settings.concurrency, 1, 1000),
        ("timeout", settings.timeout, 0.001, 86_400),
        ("rpm", settings.rpm, 0.001, 1e6),
        ("tpm", settings.tpm, 1, 1e10),
        ("max_cost", settings.max_cost, 0, 1e6),
        ("retries", settings.retry.retries, 0, 100),
        ("max_retry_after", settings.retry.max_retry_after, 0, 86_400),
    )
    if not isinstance(settings.params, Mapping):
        raise ConfigError("settings.params: give a mapping of request fields, e.g. {'seed': 42}")
    check_params(settings.params, "settings.params")
    for name, value, low, high in bounds:
        if value is None:
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low <= value <= high
        ):
            raise ConfigError(f"settings.{name}: {value!r} is not between {low:g} and {high:g}")


_HEX32 = re.compile(r"(?!0{32})[0-9a-f]{32}")


def planned_calls(plan: Plan) -> list[PlannedCall]:
    """Every call ``plan`` would make, with its worst-case cost, for ``--dry-run``; nothing
    is sent. Each stage is built as if every call before it had answered with all of its
    ``max_tokens``, so what a later stage is sent (a synthesis, a judge's candidates, each
    reviewer's) is bounded whatever the shape."""
    context = plan.context()
    planned: list[PlannedCall] = []
    stages = list(plan.stages)
    index, grown = 0, False
    while index < len(stages) and index < _MOST_PLANNED_STAGES:
        stage = stages[index]
        index += 1
        calls = stage.calls(context)
        if plan.request.settings.attachments:  # -f: the personas' prompts carry them
            from fanout.attachments import with_attachments

            calls = with_attachments(calls, plan.request.settings.attachments)
        # A stage whose worst case is more than a long answer (an orchestrator's turn that
        # asks every persona) says what its placeholder is.
        longest = getattr(stage, "longest_answer", None) or _longest_answer
        results = [longest(c) for c in calls]
        stage_result = StageResult(stage.id, stage.kind, results, key=stage.key)
        context.stages[stage.id] = stage_result
        try:
            stage_result.verdict = stage.verdict(context, results)
        except Exception:  # a verdict on placeholder answers is no one's business
            stage_result.verdict = None
        follow = getattr(stage, "follow", None)
        if follow is not None:  # a plan that grows: as it would, on those answers
            added = list(follow(context))
            stages[index:index] = added
            grown = grown or bool(added)
        for call in calls:
            if call.skip is None:
                planned.append(
                    planned_call(
                        call.agent,
                        call.messages,
                        plan.pricing,
                        name=call.name,
                        stage=call.stage,
                        role=call.role,
                    )
                )
    if grown:  # the same persona in several turns: each row says which
        planned = [replace(c, name=f"{c.stage}/{c.name or c.agent.name}") for c in planned]
    return planned


_MOST_PLANNED_STAGES = 1000  # a shape that grows without end is a bug, not a plan


def _longest_answer(call: Call) -> CallResult:
    """A placeholder answer as long as ``call`` may give: one byte per token."""
    result = CallResult.of(call)
    result.status = "ok"
    result.answer = "x" * (call.agent.max_tokens or DEFAULT_COMPLETION_ESTIMATE)
    return result


def prepare(
    request: RunRequest | Plan,
    observers: Iterable[Observer] = (),
    *,
    provider: Provider | None = None,
    engine: Engine | None = None,
    kept: Mapping[str, CallResult] | None = None,
    previous: RunReport | None = None,
    check: bool = True,
) -> Execution:
    """An ``Execution`` ready to ``execute()`` and ``conclude()``: for callers that must keep
    the report when they stop a run themselves (the CLI on Ctrl-C, a server's terminate).

    ``engine``: shared with other runs (``batch``); else one of its own on ``provider``.
    ``kept``/``previous``: carry a stored run on (see ``Execution``). ``check``: refuse a
    remote endpoint without a key before anything is sent (the caller may have checked)."""
    plan = request if isinstance(request, Plan) else resolve(request)
    if check:
        check_credentials(plan.callers, os.environ)
    if engine is None:
        engine = engine_for(plan, provider or _openai())
    observer = Broadcast(*observers)  # each observer isolated: one that raises is cut off
    return Execution(
        engine,
        plan.stages,
        plan.context(),
        observer,
        shape=plan.request.shape,
        run_id=plan.request.run_id,
        trace_id=plan.request.trace_id,
        kept=kept,
        previous=previous,
        parent_span_id=plan.request.parent_span_id,
    )


def engine_for(plan: Plan, provider: Provider) -> Engine:
    """The engine ``plan``'s calls go through: its limits, prices and budget, on ``provider``
    (shared by every prompt of a batch)."""
    # One-time client set-up (openai builds its resources lazily, ~0.5 s the first time)
    # happens here, before the first call: not inside every persona's measured latency,
    # and not bunching rate-limited starts at the server.
    warm = getattr(provider, "prepare", None)
    if callable(warm):
        warm(a.endpoint for a in plan.callers)
    return Engine(provider, plan.callers, plan.request.settings, plan.pricing)


async def arun(
    request: RunRequest | Plan,
    observers: Iterable[Observer] = (),
    *,
    provider: Provider | None = None,
) -> RunReport:
    """Run ``request`` and return its report; ``observers`` hear every event as it happens."""
    execution = prepare(request, observers, provider=provider or _openai())
    try:
        await execution.execute()
    finally:
        if provider is None:  # ours to close
            with anyio.CancelScope(shield=True):
                await execution.engine.provider.aclose()
    return execution.conclude()


def run(
    request: RunRequest, observers: Iterable[Observer] = (), *, provider: Provider | None = None
) -> RunReport:
    """``arun`` for synchronous code (it starts and ends its own event loop)."""
    return anyio.run(partial(arun, request, observers, provider=provider))


@asynccontextmanager
async def events(
    request: RunRequest, *, provider: Provider | None = None
) -> AsyncIterator[AsyncIterator[Event]]:
    """The run's events as an async iterator, ending with ``RunFinished``. Leaving the block
    early stops the run. A request that cannot run raises its ``ConfigError`` here."""
    plan = resolve(request)
    check_credentials(plan.callers, os.environ)
    send, receive = anyio.create_memory_object_stream[Event](math.inf)

    class _Forward:
        wants_deltas = True

        def handle(self, event: Event) -> None:
            send.send_nowait(event)

    async def go() -> None:
        async with send:
            await arun(plan, [_Forward()], provider=provider)

    try:
        async with anyio.create_task_group() as tg, receive:
            tg.start_soon(go)
            try:
                yield receive
            finally:
                tg.cancel_scope.cancel()
    except ExceptionGroup as group:
        error = unwrap_fanout_error(group)
        if error is None:
            raise
        raise error from None


def _openai() -> Provider:
    from fanout.provider import OpenAIProvider  # the openai client loads only when needed

    return OpenAIProvider()
