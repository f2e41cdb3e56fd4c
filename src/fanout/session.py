"""The drivers of the commands that start a run: ``fanout ask`` and ``fanout flow run``
(``flow check`` beside it). Each reads what it needs (the panel, a flow file, the local model),
builds a ``RunRequest``, resolves it through the API and hands the plan to the drive loop
(``drive.py``); ``carry`` drives ``runs retry``/``runs synth``, ``batchrun`` drives ``batch``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fanout import dryrun
from fanout.api import Plan, RunRequest, planned_calls, prepare, resolve
from fanout.config import Panel, apply_model, check_credentials, find_config, load_panel
from fanout.drive import drive, emit, guess_panes, open_history, say_aside, warn
from fanout.engine import RunSettings
from fanout.export import agent_settings, settings_record
from fanout.history import HistoryRecorder
from fanout.local import as_local, local_server, wants_local
from fanout.models import Agent
from fanout.output import Output
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
    parent = trace_parent(traceparent, os.environ)
    panel_given = panel
    # -p personas join the panel here; a panel given is one already built (and holds them).
    panel = panel or load_panel(find_config(config, os.environ)).with_personas(personas)
    names, options = as_named(panel, names, options)
    chosen = apply_model(panel.select(names), model)
    recorded_synthesizer = apply_model([panel.synthesizer], model)[0]
    recorded_judge = apply_model([panel.role("judge")], model)[0]
    # The roles only some shapes have (a router, an orchestrator) run locally too.
    shape_roles = {r: apply_model([panel.role(r)], model)[0] for r in _SHAPE_ROLES.get(shape, ())}
    local_wanted = wants_local(
        [*chosen, recorded_synthesizer, *shape_roles.values()], local, os.environ
    )
    if panel_given is None and not dry_run and local_wanted:
        with local_server(chosen, local, local_model, model is not None, say_aside) as point_local:
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
                    [as_local(a, local) for a in chosen],
                    {
                        r: as_local(a, local)
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
    plan = resolve(request, priced=not dry_run)
    if dry_run:
        return dryrun.dry_run(plan, output, local_wanted and local, model is not None, settings)
    check_credentials(plan.callers, os.environ)
    history = open_history() if log else None
    with history or nullcontext():
        recorder = None
        if history is not None:
            warn(history.warnings)
            recorder = HistoryRecorder(
                history,
                agents=[agent_settings(a) for a in (recorded[0] if recorded else plan.agents)],
                synthesizer=agent_settings(
                    recorded[1]["synthesizer"] if recorded else recorded_synthesizer
                ),
                settings=settings_record(
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
        report, interrupted = drive(lambda observer: prepare(plan, [observer, *observers],
                                                              check=False),
                                     output, recorder, plan.agents,
                                     guess_panes=guess_panes(plan))  # fmt: skip
    return emit(report, output, recorder, interrupted)


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
    if dry_run:
        # As any shape's (every stage built on answers as long as they may be), named
        # stage/persona: a flow asks the same persona in several stages.
        calls = [
            replace(c, name=f"{c.stage}/{c.name or c.agent.name}") for c in planned_calls(plan)
        ]
        return dryrun.show_plan(request.prompt, calls, output, settings)
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
    history = open_history() if log else None
    with history or nullcontext():
        recorder = None
        if history is not None:
            warn(history.warnings)
            synthesizer = plan.roles.get("synthesizer")
            if synthesizer is None and plan.request.panel is not None:
                synthesizer = plan.request.panel.synthesizer
            recorder = HistoryRecorder(
                history,
                agents=[agent_settings(a) for a in plan.agents],
                synthesizer=agent_settings(synthesizer) if synthesizer else None,
                settings=settings_record(
                    settings,
                    plan.request.shape,
                    plan.request.options,
                    plan.request.panel.pricing if plan.request.panel else {},
                    plan.roles,
                ),
            )
        report, interrupted = drive(
            lambda observer: prepare(plan, [observer], check=False),
            output,
            recorder,
            plan.agents,
            guess_panes=guess_panes(plan),
        )
    return emit(report, output, recorder, interrupted)


_SHAPE_ROLES = {"route": ("router",), "orchestrate": ("orchestrator",)}


def as_named(
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
