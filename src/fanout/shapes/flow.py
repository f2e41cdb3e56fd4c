"""The flow shape: the stages of a flow file, run in order by the engine like any other plan.

Each flow stage renders its prompt when it starts, from the run's inputs and the answers of the
stages before it (``context.stages``), so it needs nothing the engine does not already give a
stage. A stage that falls short (fewer answers than its ``min_success``, by default none at
all) with ``on_error: stop`` stops the flow: every later call is made ``skipped``, with the
reason, so the document still shows the whole plan. The last stage, ``output``, makes no call:
its verdict (key ``output``) is the answers of the stages the flow names in ``output:``, which
the document carries at its top level as ``output``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from fanout.errors import ConfigError
from fanout.models import AgentError, Call, CallResult, StageResult, chat_messages
from fanout.shapes.options import SEED, SYNTHESIZE, Document, Options, Texts
from fanout.shapes.output import Answers, OutputVerdict
from fanout.shapes.shape import Shape
from fanout.summary import Verdict

if TYPE_CHECKING:
    from fanout.engine import RunContext, Stage
    from fanout.flow import StageSpec

OUTPUT_STAGE = "output"  # the id of the stage that gathers the flow's output: reserved
# ``{{name}}`` or ``{{name.persona}}``; a name is an input, a stage or a stage's follow-up.
TEMPLATE = re.compile(r"\{\{\s*([A-Za-z0-9_-]+)(?:\.([^{}\s]+))?\s*\}\}")
FLOW = Document(
    "flow",
    "The flow definition (the contents of a flow file: stages, inputs, output), or on the "
    "command line a flow file.",
    metavar="FILE",
    describes="a flow definition",
)
INPUTS = Texts("inputs", "The flow's inputs (topic=ice).", metavar="NAME=TEXT,...")


@dataclass(frozen=True)
class Guard:
    """An earlier stage whose shortfall stops the stages after it."""

    stage: str
    min_success: int
    stops: bool


class FlowStage:
    """One stage of a flow: its personas at once, each sent the rendered prompt."""

    key: str | None = None
    roles: tuple[str, ...] = ()
    holds_answers = True

    def __init__(self, spec: StageSpec, guards: Sequence[Guard]) -> None:
        self.spec = spec
        self.id = spec.id
        self.kind = "panel" if spec.panel is not None else "agent"
        self.guards = list(guards)
        self.prompt = ""  # as rendered when the stage started; a follow-up quotes it

    def calls(self, context: RunContext) -> list[Call]:
        agents = {a.name: a for a in context.agents}
        self.prompt, missing = render(self.spec.prompt, context)
        skip = stopped(self.guards, context)
        details: dict[str, object] = {"partial": True, "missing": missing} if missing else {}
        return [
            Call(
                f"{self.id}/{name}",
                self.id,
                "persona",
                name,
                agents[name],
                tuple(chat_messages(agents[name], self.prompt)),
                skip=skip,
                details=details,
            )
            for name in self.spec.personas
        ]

    def verdict(self, context: RunContext, results: Sequence[CallResult]) -> Verdict | None:
        return None


class OutputStage:
    """Makes no call: gathers the answers of the stages named in ``output:`` (a stage that
    decided, a vote or a judge, gives the answers it decided on: ``sources`` says where they
    were written)."""

    id = OUTPUT_STAGE
    kind = "output"
    key: str | None = "output"
    roles: tuple[str, ...] = ()
    makes_calls = False

    def __init__(self, names: Sequence[str], sources: Mapping[str, str]) -> None:
        self.names = list(names)
        self.sources = dict(sources)

    def calls(self, context: RunContext) -> list[Call]:
        return []

    def verdict(self, context: RunContext, results: Sequence[CallResult]) -> OutputVerdict:
        output: Answers = {}
        for name in self.names:
            stage = context.stages.get(name)
            chosen = stage.verdict.summary().chosen if stage and stage.verdict else ()
            if stage is not None and chosen:  # a tally or a pick: who won, as they wrote it
                source = context.stages.get(self.sources.get(name, ""))
                output[name] = {
                    c.name: c.answer
                    for c in (source.calls if source else [])
                    if c.name in chosen and c.status == "ok" and c.answer
                }
                continue
            calls = stage.calls if stage else []
            output[name] = {c.name: c.answer for c in calls if c.status == "ok" and c.answer}
            if not calls and stage is not None and stage.verdict is not None:
                decided = stage.verdict.summary()
                if decided.answer is not None and decided.decided is not False:
                    output[name] = {decided.author or name: decided.answer}
        return OutputVerdict(output)


class Guarded:
    """A shape's stage after a flow stage: itself, asked the flow stage's question (not the
    run's prompt, which only names the flow), and skipped when the flow stopped earlier."""

    def __init__(self, stage: Stage, source: FlowStage, guards: Sequence[Guard]) -> None:
        self.stage = stage
        self.source = source
        self.guards = list(guards)
        self.id, self.kind, self.key = stage.id, stage.kind, stage.key
        self.roles: tuple[str, ...] = tuple(getattr(stage, "roles", ()))
        self.makes_calls: bool = getattr(stage, "makes_calls", True)

    def _asked(self, context: RunContext) -> RunContext:
        return replace(context, prompt=self.source.prompt or context.prompt)

    def calls(self, context: RunContext) -> list[Call]:
        calls = self.stage.calls(self._asked(context))
        skip = stopped(self.guards, context)
        return calls if skip is None else [replace(c, skip=skip) for c in calls]

    def verdict(self, context: RunContext, results: Sequence[CallResult]) -> Verdict | None:
        return self.stage.verdict(self._asked(context), results)


def flow_plan(options: Options) -> list[Stage]:
    """The stages of the flow recorded in ``options["flow"]``, then the output stage; a
    stage's ``then:`` is the step of that name some shape lends a flow (``Shape.steps``)."""
    from pydantic import ValidationError

    from fanout.flow import FlowSpec
    from fanout.shapes import flow_steps

    try:
        spec = FlowSpec.model_validate(options.get("flow"))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "the definition"
        raise ConfigError(f"options: flow: {where}: {first.get('msg', 'invalid')}") from None
    steps = flow_steps()
    stages: list[Stage] = []
    guards: list[Guard] = []
    sources: dict[str, str] = {}
    for stage_spec in spec.stages:
        stage = FlowStage(stage_spec, guards)
        stages.append(stage)
        least = stage_spec.min_success or 1
        stops = stage_spec.on_error == "stop"
        guards = [*guards, Guard(stage.id, least, stops)]
        step = steps.get(stage_spec.then)
        if step is None:
            continue
        follow_id = f"{stage.id}-{step.suffix}"
        follow = [Guarded(s, stage, guards) for s in step.build(stage.id, follow_id, options)]
        stages.extend(follow)
        sources.update({s.id: stage.id for s in follow})
        if follow and follow[-1].makes_calls:  # a tally has no answer to count
            guards = [*guards, Guard(follow_id, 1, stops)]
    last = stages[-1].id
    stages.append(OutputStage(spec.output or [last], sources))
    return stages


def stopped(guards: Sequence[Guard], context: RunContext) -> AgentError | None:
    """Why the flow stopped before this stage (the first guard that fell short), or None."""
    for guard in guards:
        result = context.stages.get(guard.stage)
        if result is None or not guard.stops:
            continue
        answered = sum(1 for c in result.calls if c.status == "ok")
        if answered < guard.min_success:
            return AgentError(
                "flow_stopped",
                f"not asked: stage {guard.stage!r} got {answered} of {len(result.calls)} "
                f"answers (needs {guard.min_success}) and stops the flow (on_error: stop)",
            )
    return None


def render(template: str, context: RunContext) -> tuple[str, list[str]]:
    """The template with its inputs and earlier answers filled in; and who is missing (the
    personas whose answers it quotes but who gave none), as ``stage/persona``."""
    inputs = INPUTS.of(context.options) or {}
    missing: list[str] = []

    def fill(match: re.Match[str]) -> str:
        name, persona = match.group(1), match.group(2)
        if name in inputs:
            return str(inputs[name])
        stage = context.stages.get(name)
        if stage is None:
            return ""  # an optional input not given
        if stage.verdict is not None and persona is None:
            decision = decided(stage, missing)
            if decision is not None:
                return decision
        return quoted(stage, persona, missing)

    return TEMPLATE.sub(fill, template), missing


def decided(stage: StageResult, missing: list[str]) -> str | None:
    """``{{capital-vote}}``, ``{{drafts-judge}}``: what a stage decided (the winning answer,
    the answer the judge picked, as its author wrote it); without a decision, why there is
    none. None: the stage decides nothing (quote its answers)."""
    assert stage.verdict is not None
    summary = stage.verdict.summary()
    if summary.answer is not None and summary.decided is not False:
        return summary.answer
    if summary.decided is None:
        return None
    missing.append(stage.id)
    reasons = [summary.headline.removeprefix("No decision: "), *summary.warnings]
    return f"[no decision: {'; '.join(r for r in reasons if r) or 'no winner'}]"


def quoted(stage: StageResult, persona: str | None, missing: list[str]) -> str:
    """A stage's answers as a prompt quotes them: one answer bare, several as labelled blocks,
    the ones that failed listed as missing."""
    calls = [c for c in stage.calls if persona is None or c.name == persona]
    gone = [c for c in calls if c.status != "ok"]
    missing.extend(f"{stage.id}/{c.name}" for c in gone)
    if len(stage.calls) == 1 or persona is not None:
        if calls and not gone:
            return calls[0].answer or ""
        return f"[missing: no answer from {calls[0].name if calls else persona}]"
    blocks = [f"--- {c.name} ---\n{c.answer or ''}" for c in calls if c.status == "ok"]
    if gone:
        blocks.append("[missing: no answer from " + ", ".join(c.name for c in gone) + "]")
    return "\n\n".join(blocks)


def _flow_personas(options: Options) -> list[str]:
    definition = FLOW.of(options) or {}
    stages = definition.get("stages")
    found: list[str] = []
    for stage in stages if isinstance(stages, list) else []:
        if isinstance(stage, Mapping):
            panel = stage.get("panel")
            found += [str(n) for n in panel] if isinstance(panel, list) else []
            found += [str(stage["agent"])] if stage.get("agent") else []
    return list(dict.fromkeys(found))


def check_flow(options: Options, agents: Sequence[object]) -> None:
    """Every persona the flow names is one of those asked."""
    names = [str(getattr(a, "name", a)) for a in agents]
    for name in _flow_personas(options):
        if name not in names:
            raise ConfigError(
                f"options: flow: persona {name!r} is not one of the personas asked "
                f"({', '.join(names)})"
            )


SHAPE = Shape(
    "flow",
    "The stages of a flow file in order, each a panel or one agent, each prompt quoting the "
    "inputs and the answers before it (fanout flow run).",
    flow_plan,
    options=(SYNTHESIZE, SEED, FLOW, INPUTS),
    answers=("panel", "agent"),
    standalone=False,
    check=check_flow,
    example="fanout flow run examples/research-write-review.yaml -i topic=ice",
    order=90,
)
