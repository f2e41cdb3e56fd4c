"""The CLI's side of a command, wired end to end: flags -> ``RunRequest`` -> the API (with the
displays and the history listening) -> output, exit code.

Everything here belongs to the command line: printing, exit codes, the event loop
(``anyio.run``), signal handling, a closed stdout. The run itself is the API's (``api.py``), so
``ask``, ``runs retry``, ``runs synth`` and the server share one way of running.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio
from platformdirs import user_cache_path

from fanout.api import Plan, RunRequest, planned_calls, prepare, resolve
from fanout.batch import (
    BatchTally,
    ResultWriter,
    answered_jobs,
    count_prompts,
    open_results,
    read_prompts,
    run_batch,
    run_via_batch_api,
)
from fanout.config import (
    Panel,
    apply_model,
    bound_answer,
    check_credentials,
    find_config,
    load_panel,
)
from fanout.cost import PlannedCall, Price, Pricing, plan_fits, plan_worst_case
from fanout.engine import Engine, Execution, RunSettings, unwrap_fanout_error
from fanout.errors import ConfigError, FanoutError, StdoutClosed
from fanout.event import Broadcast, Event, Observer
from fanout.export import (
    JsonlWriter,
    agent_from_settings,
    agent_settings,
    dumps,
    json_line,
    plan_document,
    report_document,
    report_from_document,
)
from fanout.export import settings_record as _settings_record
from fanout.files import write_whole
from fanout.history import History, HistoryRecorder, RunFilter, StoredRun, history_path
from fanout.live import LiveBoard
from fanout.local import LOCAL_URL, LocalServer, local_everyone, model_path, on_local, wants_local
from fanout.models import Agent, CallResult, Endpoint, RunReport
from fanout.provider import OpenAIProvider
from fanout.render import (
    BatchProgress,
    ProgressDisplay,
    batch_summary,
    make_console,
    plan_table,
    print_warning,
    printable,
    printable_report,
    render_report,
    report_text,
    run_header,
    runs_table,
    timeline,
    usd,
)
from fanout.retry import RetryPolicy
from fanout.shapes import stored_options
from fanout.tracing import TraceParent, parse_traceparent, telemetry_wanted

if TYPE_CHECKING:
    from fanout.conversation import Transcript
    from fanout.telemetry import Telemetry

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_PIPE = 141  # stdout was closed by its reader (`| head`): as if SIGPIPE had ended us
EXIT_FOR_STATUS = {
    "completed": EXIT_OK,
    "partial": EXIT_PARTIAL,
    "failed": EXIT_FAILED,
    "cancelled": EXIT_INTERRUPTED,
    "interrupted": EXIT_INTERRUPTED,
    "running": EXIT_OK,
}
Mode = Literal["table", "json", "jsonl"]


@dataclass(frozen=True)
class Output:
    """Where the result goes: a table (live on a terminal), one JSON document, or JSON lines."""

    mode: Mode = "table"
    deltas: bool = False  # --jsonl-deltas
    file: Path | None = None  # -o
    timeline: bool = False  # --timeline: after the result (on stderr when stdout is JSON)
    view: str | None = None  # --format: table, columns, md, text; None: columns on a terminal,
    # else Markdown, which pipes and copies cleanly where a box table would be cut


def ask(
    prompt: str,
    *,
    names: Sequence[str] | None,
    config: Path | None,
    model: str | None,
    synthesize: bool,
    settings: RunSettings,
    output: Output,
    personas: Sequence[tuple[str, str]] = (),
    dry_run: bool = False,
    log: bool = True,
    local: bool = False,
    local_model: Path | None = None,
    panel: Panel | None = None,
    recorded: tuple[list[Agent], dict[str, Agent]] | None = None,
    shape: str = "panel",
    options: Mapping[str, Any] | None = None,
    traceparent: str | None = None,
    conversation: Transcript | None = None,
    observers: Sequence[Observer] = (),
) -> int:
    """``fanout ask`` (``panel``: already loaded, and pointed at the local server). ``shape``
    and ``options``: what the run decides (a vote, a judge, a council, a router...);
    ``traceparent``: the W3C trace context to continue, else ``TRACEPARENT``, if valid);
    ``conversation``: the one this run continues; ``observers``: more listeners (``chat``)."""
    parent = _trace_parent(traceparent)
    panel_given = panel
    # -p personas join the panel here; a panel given is one already built (and holds them).
    panel = panel or load_panel(find_config(config, os.environ)).with_personas(personas)
    names, options = _as_named(panel, names, options)
    chosen = apply_model(panel.select(names), model)
    recorded_synthesizer = apply_model([panel.synthesizer], model)[0]
    recorded_judge = apply_model([panel.role("judge")], model)[0]
    # The roles only some shapes have (a router, an orchestrator) run locally too.
    shape_roles = {r: apply_model([panel.role(r)], model)[0] for r in _SHAPE_ROLES.get(shape, ())}
    local_wanted = wants_local(
        [*chosen, recorded_synthesizer, *shape_roles.values()], local, os.environ
    )
    if panel_given is None and not dry_run and local_wanted:
        with _local_server(chosen, local, local_model, model is not None) as point_local:
            return ask(
                prompt,
                names=None,
                config=None,
                model=None,
                synthesize=synthesize,
                settings=settings,
                output=output,
                log=log,
                panel=replace(
                    panel,
                    agents=[point_local(a) for a in chosen],
                    synthesizer=point_local(recorded_synthesizer),
                    judge=point_local(recorded_judge),
                    roles={**panel.roles, **{r: point_local(a) for r, a in shape_roles.items()}},
                ),
                # The history keeps `base_url: local`, not this run's port: a retry or a
                # re-synth starts a server of its own.
                recorded=(
                    [_as_local(a, local) for a in chosen],
                    {
                        r: _as_local(a, local)
                        for r, a in {
                            "synthesizer": recorded_synthesizer,
                            "judge": recorded_judge,
                            **shape_roles,
                        }.items()
                    },
                ),
                shape=shape,
                options=options,
                traceparent=traceparent,
                conversation=conversation,
                observers=observers,
            )
    options = {"synthesize": synthesize, **(options or {})}
    if shape != "panel" and "seed" not in options:
        # Recorded with the run, so a retry shows a judge or a reviewer the same labels.
        options["seed"] = secrets.randbits(32)
    request = RunRequest(
        prompt,
        panel,
        agents=names,
        shape=shape,
        options=options,
        settings=settings,
        model=model,
        trace_id=parent.trace_id if parent else None,
        parent_span_id=parent.span_id if parent else None,
        conversation=conversation,
    )
    plan = resolve(request)
    if dry_run:
        return _dry_run(plan, output, local_wanted and local, model is not None, settings)
    check_credentials(plan.callers, os.environ)
    history = _open_history() if log else None
    with history or nullcontext():
        recorder = None
        if history is not None:
            _warn(history.warnings)
            recorder = HistoryRecorder(
                history,
                agents=[agent_settings(a) for a in (recorded[0] if recorded else plan.agents)],
                synthesizer=agent_settings(
                    recorded[1]["synthesizer"] if recorded else recorded_synthesizer
                ),
                settings=_settings_record(
                    settings,
                    shape,
                    options,
                    panel.pricing,
                    # Each role as it was written: on `base_url: local` if it ran there.
                    roles={
                        r: (recorded[1] if recorded else {}).get(r, a)
                        for r, a in plan.roles.items()
                    },
                ),
            )
        report, interrupted = _drive(lambda observer: prepare(plan, [observer, *observers],
                                                               check=False),
                                     output, recorder, plan.agents,
                                     guess_panes=_guess_panes(plan))  # fmt: skip
    return _emit(report, output, recorder, interrupted)


def flow_run(
    path: Path,
    *,
    given: Mapping[str, str],
    config: Path | None,
    model: str | None,
    settings: RunSettings,
    output: Output,
    dry_run: bool = False,
    log: bool = True,
) -> int:
    """``fanout flow run``: the stages of a flow file, one run (one history entry, one
    document, one budget)."""
    from fanout.flow import load_flow

    parent = _trace_parent(None)
    flow = load_flow(path, load_panel(find_config(config, os.environ)))
    inputs = flow.inputs(given)
    request = RunRequest(
        flow.prompt(inputs),
        flow.panel,
        agents=flow.personas,
        shape="flow",
        options=flow.options(inputs),
        settings=settings,
        model=model,
        trace_id=parent.trace_id if parent else None,
        parent_span_id=parent.span_id if parent else None,
    )
    plan = resolve(request)
    if dry_run:
        # As any shape's (every stage built on answers as long as they may be), named
        # stage/persona: a flow asks the same persona in several stages.
        calls = [
            replace(c, name=f"{c.stage}/{c.name or c.agent.name}") for c in planned_calls(plan)
        ]
        return _show_plan(request.prompt, calls, output, settings)
    check_credentials(plan.callers, os.environ)
    return _run_plan(plan, output, log)


def flow_check(path: Path, *, config: Path | None) -> str:
    """``fanout flow check``: the flow file checked (ConfigError otherwise); a summary line."""
    from fanout.flow import load_flow

    flow = load_flow(path, load_panel(find_config(config, os.environ)))
    stages = ", ".join(s.id for s in flow.spec.stages)
    return f"{path}: ok: {len(flow.spec.stages)} stages ({stages}), personas: " + ", ".join(
        flow.personas
    )


def _run_plan(plan: Plan, output: Output, log: bool) -> int:
    """Run a resolved plan with the displays and the history listening (every persona and
    role recorded, so ``runs retry`` can rebuild it)."""
    settings = plan.request.settings
    history = _open_history() if log else None
    with history or nullcontext():
        recorder = None
        if history is not None:
            _warn(history.warnings)
            synthesizer = plan.roles.get("synthesizer")
            if synthesizer is None and plan.request.panel is not None:
                synthesizer = plan.request.panel.synthesizer
            recorder = HistoryRecorder(
                history,
                agents=[agent_settings(a) for a in plan.agents],
                synthesizer=agent_settings(synthesizer) if synthesizer else None,
                settings=_settings_record(
                    settings,
                    plan.request.shape,
                    plan.request.options,
                    plan.request.panel.pricing if plan.request.panel else {},
                    plan.roles,
                ),
            )
        report, interrupted = _drive(
            lambda observer: prepare(plan, [observer], check=False),
            output,
            recorder,
            plan.agents,
            guess_panes=_guess_panes(plan),
        )
    return _emit(report, output, recorder, interrupted)


_SHAPE_ROLES = {"route": ("router",), "orchestrate": ("orchestrator",)}


def _as_named(
    panel: Panel, names: Sequence[str] | None, options: Mapping[str, Any] | None
) -> tuple[list[str] | None, Mapping[str, Any] | None]:
    """The personas as the panel spells them (``-a`` takes any case), in the list and in
    ``translator:3``'s count, so what the shapes and the history see is the panel's name."""
    if not names:
        return None, options
    repeat = (options or {}).get("repeat")
    if repeat:
        spelled = {panel.select([n])[0].name: times for n, times in repeat.items()}
        options = {**(options or {}), "repeat": spelled}
    return [a.name for a in panel.select(names)], options


def _guess_panes(plan: Plan) -> bool:
    """The live board may draw the personas' panes before the run starts only where they
    will be the first stage's, ``panel/<name>``."""
    return bool(plan.stages) and plan.stages[0].id == "panel"


def _dry_run(
    plan: Plan, output: Output, everyone: bool, model_named: bool, settings: RunSettings
) -> int:
    """``--dry-run``: what the run would send (on the local model, with ``--local``)."""
    if wants_local(plan.callers, everyone, os.environ):
        every = everyone or local_everyone(os.environ)

        def local(agent: Agent) -> Agent:
            return on_local(agent, LOCAL_URL, everyone=every, model_named=model_named)

        plan = replace(
            plan,
            agents=[local(a) for a in plan.agents],
            roles={r: local(a) for r, a in plan.roles.items()},
        )
    return _show_plan(plan.request.prompt, planned_calls(plan), output, settings)


def _show_plan(
    prompt: str, calls: Sequence[PlannedCall], output: Output, settings: RunSettings
) -> int:
    """The dry run's plan on stdout (a table or its document) and, when even its worst case
    would not fit ``--max-cost``, one line on stderr saying so. Exit 0: nothing failed."""
    if output.mode == "json":
        _write_stdout(dumps(plan_document(prompt, calls, settings.max_cost)))
    else:
        make_console().print(plan_table(calls, settings.rpm, settings.max_cost))
    max_cost = settings.max_cost
    if max_cost is not None and not plan_fits(calls, max_cost):
        worst = plan_worst_case(calls)
        if worst is None:
            unknown = sorted({c.agent.model for c in calls if c.worst_case_usd is None})
            line = (
                f"worst case unknown (no price for {', '.join(unknown)}): --max-cost "
                f"${max_cost:g} would skip those calls"
            )
        else:
            line = (
                f"worst case {usd(worst)} is above --max-cost ${max_cost:g}: "
                "the run would stop early or skip calls"
            )
        print_warning(make_console(stderr=True), line)
    return EXIT_OK


def cancelled_before_start(prompt: str, output: Output) -> int:
    """A signal before the run could start: the empty document of a cancelled run, in the
    output mode asked for, and exit 130."""
    from fanout.engine import RunContext

    execution = Execution(Engine(_NoProvider()), [], RunContext(prompt, [], {}, {}))
    execution.interrupted = True
    report = execution.report()
    try:
        if output.mode == "json":
            _write_stdout(dumps(report_document(report)))
        elif output.mode == "jsonl":
            line = {"type": "run_finished", "document": report_document(report)}
            _write_stdout(dumps(line).replace("\n", " ").rstrip() + "\n")
    except StdoutClosed:
        return EXIT_PIPE
    print_warning(make_console(stderr=True), "interrupted before the run started")
    return EXIT_INTERRUPTED


class _NoProvider:
    async def complete(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover
        raise AssertionError("nothing is asked")

    async def aclose(self) -> None:  # pragma: no cover
        pass


def retry(run_id: str, *, output: Output, log: bool = True) -> int:
    """``fanout runs retry``: redo the failed calls of the first stage that has some, and the
    stages after it; every answer already there is kept."""
    with _open_history() as history, ExitStack() as stack:
        _warn(history.warnings)
        stored = history.load(history.resolve(run_id))
        before = report_from_document(stored.document)
        plan = _stored_plan(stack, stored, None, synthesize=None, history=history)
        kept: dict[str, CallResult] = {}
        # The plan's stages, then those a growing plan (the orchestrator's turns) added in
        # the stored run: the first with a call to redo is where the run carries on.
        planned = {stage.id for stage in plan.stages}
        order: list[tuple[str, bool]] = [
            (s.id, bool(getattr(s, "makes_calls", True))) for s in plan.stages
        ] + [
            (s.id, bool(s.calls) or s.verdict is None) for s in before.stages if s.id not in planned
        ]
        for stage_id, makes_calls in order:
            done = before.stage(stage_id)
            if done is not None and not makes_calls:  # a tally, the output: nothing to redo
                continue
            if done is None or not done.calls or not all(_settled(c) for c in done.calls):
                kept.update({c.call_id: c for c in (done.calls if done else []) if _settled(c)})
                break
            kept.update({c.call_id: c for c in done.calls})
        else:
            raise ConfigError(f"run {stored.run_id}: {_nothing_to_retry(before)}")
        return _carry_on(history, stored, before, plan, kept, output, log)


# Calls skipped for a reason a retry cannot change (a tool the orchestrator made up, a
# reviewer with fewer than two answers to rank): kept as they are, never asked again.
_FINAL_SKIPS = ("bad_tool_call", "no_contest")


def _settled(result: CallResult) -> bool:
    """Whether a retry keeps ``result``: an answer, or a skip no retry can change."""
    if result.status == "ok":
        return True
    return (
        result.status == "skipped"
        and result.error is not None
        and (result.error.type in _FINAL_SKIPS)
    )


def _nothing_to_retry(report: RunReport) -> str:
    """Why ``runs retry`` has nothing to do, in the run's own terms."""
    if report.status == "completed":
        return "every call already answered: nothing to retry"
    final = [c for s in report.stages for c in s.calls if not _settled(c)]
    if not final and report.shape == "orchestrate":
        return (
            f"it ended {report.status}: the orchestrator used its turns without a final "
            "answer (or asked for tools that do not exist); no call failed, so nothing to retry"
        )
    return f"it ended {report.status}, but no call failed: nothing to retry"


def synth(run_id: str, *, model: str | None, output: Output, log: bool = True) -> int:
    """``fanout runs synth``: merge a stored run's answers again; no persona is asked."""
    with _open_history() as history, ExitStack() as stack:
        _warn(history.warnings)
        stored = history.load(history.resolve(run_id))
        before = report_from_document(stored.document)
        if stored.synthesizer is None:
            raise ConfigError(f"run {stored.run_id}: no synthesizer was recorded")
        if before.shape in ("flow", "orchestrate"):
            raise ConfigError(
                f"run {stored.run_id}: a {before.shape} run has no panel to synthesize again "
                "(a flow's synthesis is one of its stages, then: synthesize); runs retry "
                "carries it on"
            )
        if not any(c.status == "ok" for c in before.agents):
            raise ConfigError(f"run {stored.run_id}: no persona answered; nothing to synthesize")
        plan = _stored_plan(stack, stored, model, synthesize=True, history=history)
        last = plan.stages[-1].id
        kept = {c.call_id: c for s in before.stages if s.id != last for c in s.calls}
        return _carry_on(history, stored, before, plan, kept, output, log)


def _stored_plan(
    stack: ExitStack,
    stored: StoredRun,
    model: str | None,
    *,
    synthesize: bool | None,
    history: History | None = None,
) -> Plan:
    """The plan of a stored run, with its recorded personas, roles and settings (a local
    server started for those recorded on ``base_url: local``) and, from ``history``, the
    conversation it was a turn of (what its calls were asked in the light of)."""
    from fanout.chat import carried_conversation

    settings, prices, shape, options = _settings_from_record(stored.settings)
    options = stored_options(shape, options)
    if synthesize is not None:
        options = {**options, "synthesize": synthesize}
    agents = [agent_from_settings(a) for a in stored.agents]
    synthesizer = agent_from_settings(stored.synthesizer) if stored.synthesizer else None
    if synthesizer is not None:
        synthesizer = apply_model([synthesizer], model)[0]
    roles = {r: agent_from_settings(a) for r, a in (stored.settings.get("roles") or {}).items()}
    others = [*([synthesizer] if synthesizer else []), *roles.values()]
    everyone = _with_local(stack, [*agents, *others])  # one local server for all of them
    agents, others = everyone[: len(agents)], everyone[len(agents) :]
    synthesizer = others.pop(0) if synthesizer else None
    roles = dict(zip(roles, others, strict=True))
    judge = roles.pop("judge", None)
    panel = Panel(
        source="<history>",
        agents=agents,
        synthesizer=synthesizer or Agent("synthesizer"),
        pricing=prices,
        roles=roles,
        judge=judge,
    )
    request = RunRequest(
        stored.prompt,
        panel,
        shape=shape,
        options=options,
        settings=settings,
        run_id=stored.run_id,
        trace_id=str(stored.document.get("trace_id") or "") or None,
        # The new work is a child of the run's span, in the run's trace.
        parent_span_id=str(stored.document.get("span_id") or "") or None,
        conversation=carried_conversation(history, stored.document) if history else None,
    )
    return resolve(request)


def _carry_on(
    history: History,
    stored: StoredRun,
    before: RunReport,
    plan: Plan,
    kept: Mapping[str, CallResult],
    output: Output,
    log: bool,
) -> int:
    """A stored run taken up again (``retry``, ``synth``) with its recorded prompt and settings;
    the new work is folded into the same run."""
    kept_names = {r.name.split("#")[0] for r in kept.values() if r.role == "persona"}
    asked = [a for a in plan.agents if a.name not in kept_names]
    roles = list(plan.roles.values())
    check_credentials([*asked, *roles], os.environ)

    def make(observer: Observer) -> Execution:
        return prepare(plan, [observer], check=False, kept=kept, previous=before)

    recorder = HistoryRecorder(history, resume=True) if log else None
    report, interrupted = _drive(
        make, output, recorder, asked, previous=before, guess_panes=_guess_panes(plan)
    )
    return _emit(report, output, recorder, interrupted)


def batch(
    path: Path,
    *,
    names: Sequence[str] | None,
    config: Path | None,
    model: str | None,
    synthesize: bool,
    settings: RunSettings,
    output: Path | None,
    via: str = "direct",
    poll_s: float = 30.0,
    local: bool = False,
    shape: str = "panel",
    options: Mapping[str, Any] | None = None,
    personas: Sequence[tuple[str, str]] = (),
) -> int:
    """``fanout batch``: every prompt of ``path`` x every persona, as JSON lines (``shape``:
    each prompt run as a vote, a judge..., its verdict a line of its own; ``personas``: the
    ``-p`` ones, added to the panel)."""
    panel = load_panel(find_config(config, os.environ)).with_personas(personas)
    names, options = _as_named(panel, names, options)
    chosen = apply_model(panel.select(names), model)
    options = {"synthesize": synthesize, **(options or {})}
    plan = resolve(
        RunRequest(
            "(each prompt of the batch)",
            panel,
            agents=names,
            shape=shape,
            options=options,
            model=model,
        )
    )
    roles = {r: a for r, a in plan.roles.items() if r != "synthesizer"}
    # -s, --map and a council's last stage all need the synthesizer.
    synthesizer = plan.roles.get("synthesizer")
    with ExitStack() as stack:
        if wants_local([*chosen, *([synthesizer] if synthesizer else [])], local, os.environ):
            on_local = stack.enter_context(_local_server(chosen, local, None, model is not None))
            chosen = [on_local(a) for a in chosen]
            synthesizer = on_local(synthesizer) if synthesizer else None
            roles = {r: on_local(a) for r, a in roles.items()}
        return _batch(
            path, panel, chosen, synthesizer, settings, output, via, poll_s,
            shape=shape, options=options, roles=roles, per_prompt=len(planned_calls(plan)),
        )  # fmt: skip


def _batch(
    path: Path,
    panel: Panel,
    chosen: list[Agent],
    synthesizer: Agent | None,
    settings: RunSettings,
    output: Path | None,
    via: str,
    poll_s: float,
    *,
    shape: str = "panel",
    options: Mapping[str, Any] | None = None,
    roles: Mapping[str, Agent] | None = None,
    per_prompt: int | None = None,
) -> int:
    synthesize = synthesizer is not None
    roles = dict(roles or {})
    if settings.max_cost is not None:
        chosen = [bound_answer(a) for a in chosen]
        synthesizer = bound_answer(synthesizer) if synthesizer else None
        roles = {r: bound_answer(a) for r, a in roles.items()}
    callers = [*chosen, *([synthesizer] if synthesizer else []), *roles.values()]
    check_credentials(callers, os.environ)
    prompts = count_prompts(path)  # reads the whole file once: a bad line stops us before any call
    # A later stage or a verdict needs the answers an earlier run already has.
    answered = answered_jobs(output, keep_answers=synthesize or shape != "panel")
    tally = BatchTally(
        total=prompts * (per_prompt or len(callers)), output=str(output) if output else None
    )
    started = time.perf_counter()
    err = make_console(stderr=True)
    provider = OpenAIProvider()
    provider.prepare(a.endpoint for a in callers)
    engine = Engine(provider, callers, settings, Pricing.shipped(panel.pricing))
    pricing = engine.pricing
    pricing = Pricing.shipped(panel.pricing)
    if via == "openai-batch":
        if shape != "panel":
            raise ConfigError(f"--{shape} needs the answers first: not with --via openai-batch")
        if synthesize:
            flag = "--map" if (options or {}).get("map") else "--synthesize"
            raise ConfigError(f"{flag} needs the answers first: not with --via openai-batch")
        if (options or {}).get("repeat") or (options or {}).get("best_of"):
            raise ConfigError("asking a persona several times: not with --via openai-batch")
        if output is None:
            raise ConfigError("--via openai-batch needs -o FILE (it keeps the batch ids beside it)")
        if settings.max_cost is not None:
            _check_batch_budget(path, chosen, pricing, settings.max_cost, answered)
    sink = open_results(output) if output is not None else sys.stdout
    telemetry = _telemetry() if via != "openai-batch" else None
    parent = _trace_parent(None)
    try:
        with BatchProgress(err, tally) as progress:

            async def via_batch_api() -> None:
                assert output is not None
                await run_via_batch_api(
                    read_prompts(path),
                    chosen,
                    provider=provider,
                    pricing=pricing,
                    writer=ResultWriter(sink),
                    tally=tally,
                    answered=answered,
                    state_file=output.with_name(output.name + ".batches.json"),
                    poll_s=poll_s,
                    shown=progress,
                    say=lambda message: print_warning(err, message),
                )

            async def main() -> bool:
                if via == "openai-batch":
                    return await interruptibly(via_batch_api, cleanup=provider.aclose)
                return await interruptibly(
                    lambda: run_batch(
                        read_prompts(path),
                        chosen,
                        synthesizer,
                        engine=engine,
                        writer=ResultWriter(sink),
                        tally=tally,
                        answered=answered,
                        shown=progress,
                        shape=shape,
                        options=options,
                        roles=roles,
                        traced=telemetry.observer if telemetry is not None else None,
                        parent=(parent.trace_id, parent.span_id) if parent else None,
                    ),
                    cleanup=provider.aclose,
                )

            interrupted = anyio.run(main)
    finally:
        tally.over(round(time.perf_counter() - started, 1))
        if output is not None:
            sink.close()
        if telemetry is not None:
            telemetry.shutdown()
    err.print(batch_summary(tally), soft_wrap=True, highlight=False)
    if interrupted:
        print_warning(err, "interrupted: run the same command again to carry on")
        return EXIT_INTERRUPTED
    if tally.failed == 0:
        return EXIT_OK
    return EXIT_PARTIAL if tally.failed < tally.done else EXIT_FAILED


def _check_batch_budget(
    path: Path,
    agents: Sequence[Agent],
    pricing: Pricing,
    max_cost: float,
    answered: dict[tuple[str, str], Any],
) -> None:
    """A batch handed over whole cannot stop half-way: its worst case must fit up front."""
    from fanout.cost import DEFAULT_COMPLETION_ESTIMATE, most_tokens
    from fanout.models import chat_messages

    worst = 0.0
    for prompt in read_prompts(path):
        for agent in agents:
            if (prompt.id, agent.name) in answered:
                continue
            tokens = most_tokens(chat_messages(agent, prompt.prompt))
            answer = agent.max_tokens or DEFAULT_COMPLETION_ESTIMATE
            cost = pricing.worst_case(agent.model, tokens, answer)
            if cost is None:
                raise ConfigError(f"--max-cost: the price of {agent.model} is unknown")
            worst += cost
    if worst > max_cost:
        raise ConfigError(
            f"--max-cost: the batch could cost up to ${worst:.4f}, more than ${max_cost:g}; "
            "a Batch API job cannot stop half-way"
        )


def list_runs(limit: int, json_output: bool, where: RunFilter | None = None) -> None:
    """``fanout runs list`` (``where``: only the runs it keeps)."""
    with _open_history() as history:
        if where is not None and where.conversation is not None:  # a prefix, or a run of it
            where = replace(where, conversation=history.conversation_of(where.conversation))
        summaries = history.list_runs(limit, where)
        _warn(history.warnings)
    if json_output:
        _write_stdout(dumps({"runs": [s.__dict__ for s in summaries]}))
    else:
        make_console().print(runs_table(summaries))


def show_run(
    run_id: str,
    json_output: bool,
    *,
    with_timeline: bool = False,
    view: str | None = None,
    agent: str | None = None,
    raw: bool = False,
    exit_status: bool = False,
) -> int:
    """``fanout runs show``: the run as ``ask`` showed it, under its prompt, time and
    settings (``--json``: the same document; ``--timeline``: its timeline after it, on stderr
    when stdout is JSON; ``agent`` with ``raw``: that persona's answer alone, as it was
    written). Exit 0 once shown, or with ``exit_status`` the code the run itself ended with."""
    from fanout.chat import turn_line

    with _open_history() as history:
        _warn(history.warnings)
        stored = history.load(history.resolve(run_id))
        turn = turn_line(history, stored.document)
    report = report_from_document(stored.document)
    on_terminal = make_console().is_terminal
    if raw:
        # As written when piped (the point of --raw); never acted on by a terminal.
        answer = _one_answer(report, agent)
        _write_stdout(printable(answer) if on_terminal else answer)
    elif json_output:
        _write_stdout(dumps(stored.document))
    else:
        header = run_header(report, stored.settings) + (f"\n{turn}" if turn else "")
        _write_stdout((printable(header) if on_terminal else header) + "\n\n")
        show_report(report, view)
    if with_timeline:
        make_console(stderr=json_output or raw).print(timeline(report))
    if exit_status:
        return EXIT_FOR_STATUS.get(stored.document.get("status", ""), EXIT_OK)
    return EXIT_OK


def delete_run(run_id: str, *, force: bool = False) -> str:
    """``fanout runs delete``: the run and its calls gone from the history; its full id. A
    turn with later turns in its conversation is refused unless ``force``."""
    from fanout.chat import later_turns_note

    with _open_history() as history:
        _warn(history.warnings)
        full = history.resolve(run_id)
        document = history.load(full).document
        note = later_turns_note(history, document, "deleting it leaves them as they were asked")
        if note and not force:
            raise ConfigError(f"{note}; --force to delete it anyway")
        history.purge(full)
    if note:
        print_warning(make_console(stderr=True), f"warning: {note}")
    return full


def _one_answer(report: RunReport, name: str | None) -> str:
    """``runs show -a NAME --raw``: the answer as the persona wrote it."""
    if name is None:
        raise ConfigError("--raw goes with --agent NAME: whose answer?")
    names = [r.name for r in report.agents]
    found = [r for r in report.agents if r.name.casefold() == name.casefold()]
    if not found:
        raise ConfigError(
            f"--agent: no persona {name!r} in run {report.run_id} (it has {', '.join(names)})"
        )
    result = found[0]
    if result.answer is None:
        raise FanoutError(f"{result.name} gave no answer in run {report.run_id}")
    return result.answer if result.answer.endswith("\n") else result.answer + "\n"


EXPORT_FORMATS = ("perfetto", "html")


def export_run(run_id: str, fmt: str, output: Path | None) -> int:
    """``fanout runs export``: a stored run as a Perfetto trace or an HTML page, into
    ``output`` or on stdout."""
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"--format: {fmt!r} is not one of {', '.join(EXPORT_FORMATS)}")
    with _open_history() as history:
        _warn(history.warnings)
        stored = history.load(history.resolve(run_id))
    report = report_from_document(stored.document)
    if fmt == "perfetto":
        from fanout.perfetto import perfetto_trace

        text = json_line(perfetto_trace(report)) + "\n"
    else:
        from fanout.page import html_page

        text = html_page(report)
    if output is None:
        _write_stdout(text)
        return EXIT_OK
    try:
        write_whole(output, text)
    except OSError as exc:
        raise FanoutError(f"--output: cannot write {str(output)!r}: {exc.strerror}") from None
    return EXIT_OK


def _drive(
    make: Callable[[Observer], Execution],
    output: Output,
    recorder: HistoryRecorder | None,
    asked: Sequence[Agent],
    *,
    previous: RunReport | None = None,
    guess_panes: bool = True,
) -> tuple[RunReport, bool]:
    """Run with the right display (panes on a terminal, JSON lines, or a spinner on stderr)
    and the history recorder listening; return the report and whether it was interrupted.
    A reader that closes our stdout ends the run, quietly."""
    out, err = make_console(), make_console(stderr=True)
    display: AbstractContextManager[Any]
    shown: Observer
    closed = anyio.Event() if output.mode == "jsonl" else None
    if output.mode == "jsonl":
        shown = _PipedJsonl(sys.stdout, deltas=output.deltas, on_closed=lambda: _closed(closed))
        display = nullcontext()
    elif output.mode == "table" and out.is_terminal and not out.is_dumb_terminal:
        board = LiveBoard(out, asked if guess_panes else ())
        on_hard_exit(board.restore)  # a second Ctrl-C must still give the terminal back
        shown = display = board
    else:
        shown = display = ProgressDisplay(err, len(asked))
    telemetry = _telemetry()
    observer = Broadcast(
        shown,
        *([recorder] if recorder is not None else []),
        *([telemetry.observer()] if telemetry is not None else []),
    )
    execution = make(observer)

    async def main() -> RunReport:
        if recorder is not None and previous is None:
            recorder.start(execution.report())
        provider = execution.engine.provider
        execution.interrupted = await interruptibly(
            execution.execute, cleanup=provider.aclose, stop=closed
        )
        return execution.conclude()

    try:
        with display:
            report = anyio.run(main)
        if previous is not None:
            report = _carried_on(previous, report)
            if recorder is not None:
                recorder.finish(report)
    finally:
        if isinstance(display, LiveBoard):
            _HARD_EXIT.remove(display.restore)  # restored by now
        if recorder is not None:
            recorder.close()
        if telemetry is not None:
            telemetry.shutdown()
    if closed is not None and closed.is_set():
        raise StdoutClosed
    return report, execution.interrupted


def _telemetry() -> Telemetry | None:
    """OpenTelemetry export, when the environment asks for it and fanout[otel] is installed
    (only then is OpenTelemetry imported)."""
    if not telemetry_wanted(os.environ):
        return None
    try:
        from fanout.telemetry import Telemetry
    except ImportError as exc:
        print_warning(
            make_console(stderr=True),
            f"warning: OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is missing ({exc}):"
            " pip install 'fanout[otel]' to export spans",
        )
        return None
    return Telemetry()


class _PipedJsonl(JsonlWriter):
    """``--jsonl`` on a stdout that its reader may close: then the run stops."""

    def __init__(self, out: Any, *, deltas: bool, on_closed: Callable[[], None]) -> None:
        super().__init__(out, deltas=deltas)
        self._on_closed = on_closed

    def handle(self, event: Event) -> None:
        try:
            super().handle(event)
        except BrokenPipeError:
            _silence_stdout()
            self._on_closed()
            raise


def _closed(flag: anyio.Event | None) -> None:
    if flag is not None:
        flag.set()


def _carried_on(before: RunReport, after: RunReport) -> RunReport:
    """A retried or re-synthesized run keeps its start, its span and the span it continued,
    and adds the new work's duration."""
    return replace(
        after,
        started_at=before.started_at,
        duration_s=round(before.duration_s + after.duration_s, 3),
        span_id=before.span_id or after.span_id,
        parent_span_id=before.parent_span_id if before.span_id else after.parent_span_id,
    )


def _emit(
    report: RunReport, output: Output, recorder: HistoryRecorder | None, interrupted: bool
) -> int:
    document = report_document(report)
    err = make_console(stderr=True)
    if output.mode == "json":
        _write_stdout(dumps(document))
    elif output.mode == "table":
        try:
            show_report(report, output.view, recorded=recorder is not None)
            if output.timeline:
                make_console().print(timeline(report))
        except BrokenPipeError:
            _silence_stdout()
            raise StdoutClosed from None
    if output.timeline and output.mode != "table":
        err.print(timeline(report))
    if output.file is not None:
        try:
            write_whole(output.file, dumps(document))
        except OSError as exc:
            raise FanoutError(
                f"--output: cannot write {str(output.file)!r}: {exc.strerror}"
            ) from None
    if recorder is not None and recorder.error is not None:
        print_warning(err, f"warning: the run was not fully recorded: {recorder.error}")
    if interrupted:
        print_warning(err, "interrupted: unfinished personas are marked cancelled")
        return EXIT_INTERRUPTED
    return EXIT_FOR_STATUS[report.status]


def show_report(report: RunReport, view: str | None, *, recorded: bool = True) -> None:
    """The final view on stdout: ``view`` as ``--format`` named it, else answers in columns
    on a terminal and plain Markdown anywhere else."""
    out = make_console()
    view = view or ("columns" if out.is_terminal else "md")
    if view in ("md", "text"):
        # Plain text piped on keeps the answers as written; a terminal must not act on them.
        shown = printable_report(report) if out.is_terminal else report
        _write_stdout(report_text(shown, view, recorded=recorded))
    else:
        render_report(out, printable_report(report), view, recorded=recorded)


def _write_stdout(text: str) -> None:
    """Write the command's output; a reader that has gone ends the command quietly."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        raise StdoutClosed from None


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's own flush at exit cannot complain."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _warn(warnings: list[str]) -> None:
    err = make_console(stderr=True)
    for warning in warnings:
        print_warning(err, f"warning: {warning}")
    warnings.clear()


_HARD_EXIT: list[Callable[[], None]] = []


def on_hard_exit(restore: Callable[[], None]) -> None:
    """Have ``restore`` (quick, safe twice, safe in a signal handler) called before a second
    signal ends the process."""
    _HARD_EXIT.append(restore)


def _exit_at_once(signum: int, frame: object) -> None:
    """The second SIGINT/SIGTERM: the user insists. Give the terminal back and end now with
    130: no clean-up, no traceback, no "Exception ignored" from a thread being joined."""
    for restore in reversed(_HARD_EXIT):
        with suppress(Exception):  # nothing may stop this exit
            restore()
    os._exit(EXIT_INTERRUPTED)


async def interruptibly(
    body: Callable[[], Awaitable[None]],
    cleanup: Callable[[], Awaitable[None]] | None = None,
    *,
    stop: anyio.Event | None = None,
) -> bool:
    """Run ``body`` until it ends, or SIGINT/SIGTERM (or ``stop``) cancels it, then
    ``cleanup`` (shielded). Returns whether it was cut short. From the first signal on, a
    second one, whenever it comes (during the clean-up, the final view, the history's last
    write), ends the process at once with 130."""
    import asyncio  # the loop anyio.run runs on: signals are handed to it thread-safely

    loop = asyncio.get_running_loop()
    interrupted = False
    work = anyio.CancelScope()

    def on_signal(signum: int, frame: object) -> None:
        nonlocal interrupted
        if interrupted:
            _exit_at_once(signum, frame)
        interrupted = True
        # From now until the process ends, the next signal is the last word.
        for number in _SIGNALS:
            signal.signal(number, _exit_at_once)
        loop.call_soon_threadsafe(work.cancel)

    main_thread = threading.current_thread() is threading.main_thread()
    previous = {n: signal.signal(n, on_signal) for n in _SIGNALS} if main_thread else {}
    try:
        async with anyio.create_task_group() as tg:

            async def watch_stop(flag: anyio.Event) -> None:
                nonlocal interrupted
                await flag.wait()
                interrupted = True
                work.cancel()

            if stop is not None:
                tg.start_soon(watch_stop, stop)
            try:
                with work:
                    await body()
            finally:
                if cleanup is not None:
                    with anyio.CancelScope(shield=True):
                        await cleanup()
            tg.cancel_scope.cancel()
    except ExceptionGroup as group:
        # A task group wraps what the work raised; a FanoutError reaches the CLI as itself.
        error = unwrap_fanout_error(group)
        if error is not None:
            raise error from None
        raise
    finally:
        if not interrupted:
            for number, handler in previous.items():
                signal.signal(number, handler)
    return interrupted


_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def _local_server(
    agents: Sequence[Agent], everyone: bool, model_file: Path | None, model_named: bool
) -> Iterator[Callable[[Agent], Agent]]:
    """Start the embedded llama.cpp server for the run; yield how to point an agent at it."""
    err = make_console(stderr=True)

    def say(message: str) -> None:
        print_warning(err, message, style="dim")

    path = model_path(model_file, user_cache_path("fanout"), say)
    everyone = everyone or local_everyone(os.environ)
    with LocalServer(path, parallel=len(agents)) as base_url:
        yield lambda agent: on_local(agent, base_url, everyone=everyone, model_named=model_named)


def _as_local(agent: Agent, everyone: bool) -> Agent:
    """How a persona that ran on the local server is recorded: ``base_url: local``."""
    if everyone or local_everyone(os.environ):
        return replace(agent, endpoint=Endpoint(LOCAL_URL, agent.endpoint.api_key_env))
    return agent


def _with_local(stack: ExitStack, agents: list[Agent]) -> list[Agent]:
    """Recorded personas with ``base_url: local`` get a local server for this command."""
    if not any(a.endpoint.base_url == LOCAL_URL for a in agents):
        return agents
    on_local = stack.enter_context(_local_server(agents, False, None, True))
    return [on_local(a) for a in agents]


def _open_history() -> History:
    return History(history_path(os.environ))


def _trace_parent(given: str | None) -> TraceParent | None:
    """The trace to continue: ``--traceparent`` (a usage error if it is not one), else a
    valid ``TRACEPARENT`` in the environment (one that is not is ignored, as tools do)."""
    if given is not None:
        parent = parse_traceparent(given)
        if parent is None:
            raise ConfigError(
                f"--traceparent: {given!r} is not a W3C traceparent "
                "(00-<32 hex trace id>-<16 hex span id>-<2 hex flags>)"
            )
        return parent
    return parse_traceparent(os.environ.get("TRACEPARENT", ""))


def _settings_from_record(
    record: dict[str, Any],
) -> tuple[RunSettings, dict[str, Price], str, dict[str, Any]]:
    """The recorded run settings, prices, shape and options (a budget is not carried over:
    it was the first run's)."""
    settings = RunSettings(
        concurrency=record.get("concurrency", 8),
        timeout=record.get("timeout", 120.0),
        retry=RetryPolicy(record.get("retries", 3), record.get("max_retry_after", 60.0)),
        rpm=record.get("rpm"),
        tpm=record.get("tpm"),
        stream=record.get("stream", True),
    )
    prices = {m: Price(p["input"], p["output"]) for m, p in record.get("pricing", {}).items()}
    options = dict(record.get("options") or {"synthesize": bool(record.get("synthesize"))})
    return settings, prices, str(record.get("shape") or "panel"), options
