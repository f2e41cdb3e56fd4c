"""A stored run carried on: ``runs retry`` (redo what failed) and ``runs synth`` (merge the
answers again), each rebuilding the run's plan from what the history recorded and folding the
new work into the same run."""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import ExitStack

from fanout.api import Plan, RunRequest, prepare, resolve
from fanout.config import Panel, apply_model, check_credentials
from fanout.drive import drive, emit, guess_panes, open_history, say_aside, warn
from fanout.engine import Execution
from fanout.errors import ConfigError
from fanout.event import Observer
from fanout.export import report_from_document
from fanout.history import History, StoredRun, recorder_for
from fanout.local import with_local
from fanout.models import Agent, CallResult, RunReport
from fanout.output import Output
from fanout.record import SYNTHESIZER, recorded_plan
from fanout.shapes import shape_of, stored_options


def retry(run_id: str, *, output: Output, log: bool = True) -> int:
    """``fanout runs retry``: redo the failed calls of the first stage that has some, and the
    stages after it; every answer already there is kept."""
    with open_history() as history, ExitStack() as stack:
        warn(history.warnings)
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
    products = [s.verdict.product() for s in report.stages if s.verdict is not None]
    if any(p is not None and not any(p.values()) for p in products):
        return (
            f"it ended {report.status} without an output (an orchestrator that used its turns "
            "without a final answer); no call failed, so nothing to retry"
        )
    skipped = [c.name for s in report.stages for c in s.calls if c.status == "skipped"]
    why = f" (skipped for good: {', '.join(skipped)})" if skipped else ""
    return f"it ended {report.status}{why}; no call failed, so nothing to retry"


def synth(run_id: str, *, model: str | None, output: Output, log: bool = True) -> int:
    """``fanout runs synth``: merge a stored run's answers again; no persona is asked."""
    with open_history() as history, ExitStack() as stack:
        warn(history.warnings)
        stored = history.load(history.resolve(run_id))
        before = report_from_document(stored.document)
        if stored.synthesizer is None:
            raise ConfigError(f"run {stored.run_id}: no synthesizer was recorded")
        if "synthesize" not in shape_of(before.shape).option_names:
            raise ConfigError(
                f"run {stored.run_id}: a {before.shape} run takes no synthesis of its own "
                "(how it ends is part of its shape); runs retry carries it on"
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

    recorded = recorded_plan(stored.agents, stored.synthesizer, stored.settings)
    options = stored_options(recorded.shape, recorded.options)
    if synthesize is not None:
        options = {**options, "synthesize": synthesize}
    roles = dict(recorded.roles)
    if SYNTHESIZER in roles:  # runs synth --model: the merge on another model
        roles[SYNTHESIZER] = apply_model([roles[SYNTHESIZER]], model)[0]
    count = len(recorded.agents)
    # One local server for every persona and role recorded on it.
    everyone = with_local(stack, [*recorded.agents, *roles.values()], say_aside)
    roles = dict(zip(roles, everyone[count:], strict=True))
    panel = Panel(
        source="<history>",
        agents=everyone[:count],
        synthesizer=roles.get(SYNTHESIZER) or Agent(SYNTHESIZER),
        pricing=recorded.prices,
        roles=roles,
    )
    request = RunRequest(
        stored.prompt,
        panel,
        shape=recorded.shape,
        options=options,
        settings=recorded.settings,
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

    recorder = recorder_for(history, plan, resume=True) if log else None
    report, interrupted = drive(
        make, output, recorder, asked, previous=before, guess_panes=guess_panes(plan)
    )
    return emit(report, output, recorder, interrupted)
