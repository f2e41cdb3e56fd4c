"""The drivers of the commands that start a run: ``fanout ask`` and ``fanout flow run``
(``flow check`` beside it). Each reads what it needs (the panel, a flow file, the local model),
builds a ``RunRequest``, resolves it through the API and hands the plan to the drive loop
(``drive.py``); ``carry`` drives ``runs retry``/``runs synth``, ``batchrun`` drives ``batch``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from fanout.api import Plan, RunRequest, planned_calls, prepare, resolve
from fanout.config import Panel, check_credentials, find_config, load_panel
from fanout.drive import drive, emit, guess_panes, open_history, say_aside, warn
from fanout.engine import RunSettings
from fanout.history import recorder_for
from fanout.interrupt import checkpoint
from fanout.local import as_local, local_server, wants_local
from fanout.models import Agent
from fanout.output import Output
from fanout.shapes import shape_of
from fanout.tracing import trace_parent

if TYPE_CHECKING:
    from fanout.conversation import Transcript
    from fanout.event import Observer


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
    shape: str = "panel",
    options: Mapping[str, object] | None = None,
    traceparent: str | None = None,
    conversation: Transcript | None = None,
    observers: Sequence[Observer] = (),
) -> int:
    """``fanout ask``. ``shape`` and ``options``: what the run decides (a vote, a judge, a
    council, a router...); ``local``/``local_model``: every call on the model of this machine;
    ``traceparent``: the W3C trace context to continue, else ``TRACEPARENT``, if valid;
    ``conversation``: the one this run continues; ``observers``: more listeners (``chat``)."""
    request = ask_request(
        prompt, names=names, personas=personas, config=config, model=model,
        synthesize=synthesize, settings=settings, shape=shape, options=options,
        traceparent=traceparent, conversation=conversation,
    )  # fmt: skip
    plan = resolve(request, priced=not dry_run)
    checkpoint()  # the run does not exist yet: a signal so far ends here, with nothing recorded
    on_local = wants_local(plan.callers, local, os.environ)
    if dry_run:
        from fanout import dryrun

        return dryrun.dry_run(plan, output, on_local and local, model is not None, settings)
    where = LocalModel(local, local_model) if on_local else None
    return run_plan(plan, output, log, local=where, observers=observers)


def ask_request(
    prompt: str,
    *,
    names: Sequence[str] | None,
    config: Path | None,
    model: str | None,
    synthesize: bool,
    settings: RunSettings,
    personas: Sequence[tuple[str, str]] = (),
    shape: str = "panel",
    options: Mapping[str, object] | None = None,
    traceparent: str | None = None,
    conversation: Transcript | None = None,
) -> RunRequest:
    """What ``fanout ask`` asks: the panel with its ``-p`` personas, the names as the panel
    spells them, the shape's options (a blind one's seed recorded) and the trace it continues.
    ``chat`` builds its first turn's with a placeholder question to check it up front."""
    parent = trace_parent(traceparent, os.environ)
    # -p personas join the panel here.
    panel = load_panel(find_config(config, os.environ)).with_personas(personas)
    names, options = as_named(panel, names, options or {})
    options = {"synthesize": synthesize, **options}
    if shape_of(shape).blind and "seed" not in options:
        # Recorded with the run, so a retry shows a judge or a reviewer the same labels.
        options["seed"] = secrets.randbits(32)
    return RunRequest(
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


@dataclass(frozen=True)
class LocalModel:
    """The run answers on this machine: every call (``everyone``: ``--local``, else those on
    ``base_url: local``), on ``model_file`` or the packaged model."""

    everyone: bool
    model_file: Path | None = None


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

    parent = trace_parent(None, os.environ)
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
    plan = resolve(request, priced=not dry_run)
    checkpoint()
    if dry_run:
        # As any shape's (every stage built on answers as long as they may be), named
        # stage/persona: a flow asks the same persona in several stages.
        calls = [
            replace(c, name=f"{c.stage}/{c.name or c.agent.name}") for c in planned_calls(plan)
        ]
        from fanout import dryrun

        return dryrun.show_plan(request.prompt, calls, output, settings)
    return run_plan(plan, output, log)


def flow_check(path: Path, *, config: Path | None) -> str:
    """``fanout flow check``: the flow file checked (ConfigError otherwise); a summary line."""
    from fanout.flow import load_flow

    flow = load_flow(path, load_panel(find_config(config, os.environ)))
    stages = ", ".join(s.id for s in flow.spec.stages)
    return f"{path}: ok: {len(flow.spec.stages)} stages ({stages}), personas: " + ", ".join(
        flow.personas
    )


def run_plan(
    plan: Plan,
    output: Output,
    log: bool,
    *,
    local: LocalModel | None = None,
    observers: Sequence[Observer] = (),
) -> int:
    """Run a resolved plan with the displays and the history listening (every persona and
    role recorded, so ``runs retry`` can rebuild it); on the local server with ``local``;
    ``observers`` hear it too."""
    with ExitStack() as stack:
        run, written = plan, None
        if local is not None:
            named = plan.request.model is not None
            point = stack.enter_context(
                local_server(plan.agents, local.everyone, local.model_file, named, say_aside)
            )
            run = plan.pointed(point)
            # Recorded on `base_url: local`, not this run's port: a retry starts its own.
            everyone = local.everyone

            def written(agent: Agent) -> Agent:
                return as_local(agent, everyone)

        check_credentials(run.callers, os.environ)
        recorder = None
        if log:
            history = stack.enter_context(open_history())
            warn(history.warnings)
            recorder = recorder_for(history, plan, written=written)
        report, interrupted = drive(
            lambda observer: prepare(run, [observer, *observers], check=False),
            output,
            recorder,
            run.agents,
            guess_panes=guess_panes(run),
        )
        return emit(report, output, recorder, interrupted)


def as_named(
    panel: Panel, names: Sequence[str] | None, options: Mapping[str, object]
) -> tuple[list[str] | None, dict[str, object]]:
    """The personas as the panel spells them (``-a`` takes any case), in the list and in
    ``translator:3``'s count, so what the shapes and the history see is the panel's name."""
    options = dict(options)
    if not names:
        return None, options
    repeat = options.get("repeat")
    if isinstance(repeat, Mapping) and repeat:
        options["repeat"] = {panel.select([str(n)])[0].name: t for n, t in repeat.items()}
    return [a.name for a in panel.select(names)], options
