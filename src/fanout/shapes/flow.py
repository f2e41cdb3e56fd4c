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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from pydantic import ValidationError

from fanout.engine import RunContext, Stage
from fanout.errors import ConfigError
from fanout.flow import OUTPUT_STAGE, TEMPLATE, FlowSpec, StageSpec, council_review_id
from fanout.models import AgentError, Call, CallResult, StageResult, chat_messages
from fanout.shapes.council import CouncilSynthesisStage, ReviewStage
from fanout.shapes.judge import JudgeStage
from fanout.shapes.synthesis import synthesis_messages
from fanout.shapes.vote import tally_votes


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
        details: dict[str, Any] = {"partial": True, "missing": missing} if missing else {}
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

    def verdict(self, context: RunContext, results: Sequence[CallResult]) -> dict[str, Any] | None:
        return None


class FlowSynthesis:
    """``then: synthesize``: the synthesizer merges a flow stage's answers."""

    kind = "synthesis"
    key: str | None = None
    roles = ("synthesizer",)

    def __init__(self, source: FlowStage, stage_id: str, guards: Sequence[Guard]) -> None:
        self.source = source
        self.id = stage_id
        self.guards = list(guards)

    def calls(self, context: RunContext) -> list[Call]:
        agent = context.roles["synthesizer"]
        result = context.stages.get(self.source.id)
        results = result.calls if result else []
        answered = [r for r in results if r.status == "ok"]
        missing = [r.name for r in results if r.status != "ok"]
        skip = stopped(self.guards, context)
        if skip is None and not answered:
            skip = AgentError("no_answers", "no persona answered, nothing to synthesize")
        messages = synthesis_messages(agent.instructions, self.source.prompt, answered, missing)
        details = {"partial": bool(missing), "sources": [r.name for r in answered]}
        return [
            Call(
                f"{self.id}/{agent.name}",
                self.id,
                "synthesizer",
                agent.name,
                agent,
                tuple(messages),
                skip=skip,
                details={**details, "missing": missing},
            )
        ]

    def verdict(self, context: RunContext, results: Sequence[CallResult]) -> dict[str, Any] | None:
        return None


class OutputStage:
    """Makes no call: gathers the answers of the stages named in ``output:``."""

    id = OUTPUT_STAGE
    kind = "output"
    key: str | None = "output"
    roles: tuple[str, ...] = ()
    makes_calls = False

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)

    def calls(self, context: RunContext) -> list[Call]:
        return []

    def verdict(self, context: RunContext, results: Sequence[CallResult]) -> dict[str, Any] | None:
        output: dict[str, Any] = {}
        for name in self.names:
            stage = context.stages.get(name)
            if stage is not None and stage.key in DECIDED:  # a tally or a pick: who won
                output[name] = decided_answers(stage, context)
                continue
            calls = stage.calls if stage else []
            output[name] = {c.name: c.answer for c in calls if c.status == "ok" and c.answer}
        return output


class _Guarded:
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

    def verdict(self, context: RunContext, results: Sequence[CallResult]) -> dict[str, Any] | None:
        return self.stage.verdict(self._asked(context), results)


class _VoteOver:
    """``then: vote``: the tally of a flow stage's answers (no call of its own)."""

    kind = "vote"
    key: str | None = "vote"
    roles: tuple[str, ...] = ()
    makes_calls = False

    def __init__(self, stage_id: str, source: str) -> None:
        self.id, self.source = stage_id, source

    def calls(self, context: RunContext) -> list[Call]:
        return []

    def verdict(self, context: RunContext, results: Sequence[CallResult]) -> dict[str, Any] | None:
        stage = context.stages.get(self.source)
        options = context.options
        return tally_votes(stage.calls if stage else [], [], options.get("quorum"))


def _synthesize(source: FlowStage, stage_id: str, guards: Sequence[Guard]) -> list[Stage]:
    return [FlowSynthesis(source, stage_id, guards)]


def _judge(source: FlowStage, stage_id: str, guards: Sequence[Guard]) -> list[Stage]:
    return [_Guarded(JudgeStage(stage_id, source.id), source, guards)]


def _vote(source: FlowStage, stage_id: str, guards: Sequence[Guard]) -> list[Stage]:
    return [_Guarded(_VoteOver(stage_id, source.id), source, guards)]


def _council(source: FlowStage, stage_id: str, guards: Sequence[Guard]) -> list[Stage]:
    """The stage's personas rank each other's answers blind (``<id>-review``), then the
    synthesizer writes the answer seeing the ranking (``<id>-council``, what a later prompt
    quotes)."""
    review_id = council_review_id(source.id)
    review = ReviewStage(review_id, source.id)
    synthesis = CouncilSynthesisStage(review_id)
    synthesis.id, synthesis.source = stage_id, source.id
    return [_Guarded(review, source, guards), _Guarded(synthesis, source, guards)]


# A stage's ``then:`` -> what builds the stages that follow it (the last one's id is the
# stage's ``follow_id``: ``flow.THEN_SUFFIX``).
ThenStages = Callable[[FlowStage, str, Sequence[Guard]], list[Stage]]
THEN_STAGES: dict[str, ThenStages] = {
    "synthesize": _synthesize,
    "judge": _judge,
    "vote": _vote,
    "council": _council,
}


def flow_plan(options: Mapping[str, Any]) -> list[Stage]:
    """The stages of the flow recorded in ``options["flow"]``, then the output stage."""
    try:
        spec = FlowSpec.model_validate(options.get("flow"))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "the definition"
        raise ConfigError(f"options: flow: {where}: {first.get('msg', 'invalid')}") from None
    stages: list[Stage] = []
    guards: list[Guard] = []
    for stage_spec in spec.stages:
        stage = FlowStage(stage_spec, guards)
        stages.append(stage)
        least = stage_spec.min_success or 1
        stops = stage_spec.on_error == "stop"
        guards = [*guards, Guard(stage.id, least, stops)]
        make = THEN_STAGES.get(stage_spec.then)
        if make is not None and stage_spec.follow_id:
            follow = make(stage, stage_spec.follow_id, guards)
            stages.extend(follow)
            if getattr(follow[-1], "makes_calls", True):  # a tally has no answer to count
                guards = [*guards, Guard(stage_spec.follow_id, 1, stops)]
    last = stages[-1].id
    stages.append(OutputStage(spec.output or [last]))
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
    inputs: Mapping[str, str] = context.options.get("inputs") or {}
    missing: list[str] = []

    def fill(match: Any) -> str:
        name, persona = match.group(1), match.group(2)
        if name in inputs:
            return str(inputs[name])
        stage = context.stages.get(name)
        if stage is None:
            return ""  # an optional input not given
        if stage.key in DECIDED and persona is None:
            return DECIDED[stage.key](stage, context, missing)
        return quoted(stage, persona, missing)

    return TEMPLATE.sub(fill, template), missing


def _voted(stage: StageResult, context: RunContext, missing: list[str]) -> str:
    """``{{capital-vote}}``: the winning answer; without one, why there is none."""
    verdict = stage.verdict or {}
    winner = verdict.get("winner")
    if isinstance(winner, str) and winner:
        return winner
    missing.append(stage.id)
    reasons = "; ".join(str(w) for w in verdict.get("warnings") or []) or "no winner"
    return f"[no decision: {reasons}]"


def _judged(stage: StageResult, context: RunContext, missing: list[str]) -> str:
    """``{{drafts-judge}}``: the answer the judge picked, as its author wrote it (the
    judge's own reply is JSON about labels, no use to a later prompt)."""
    verdict = stage.verdict or {}
    winner = verdict.get("winner")
    source = context.stages.get(stage.id.rsplit("-", 1)[0])
    for call in source.calls if source else []:
        if call.name == winner and call.status == "ok" and call.answer:
            return call.answer
    missing.append(stage.id)
    reasons = [str(w) for w in verdict.get("warnings") or []]
    if verdict.get("tie"):
        reasons.insert(0, "the judge called a tie")
    return f"[no decision: {'; '.join(reasons) or 'no winner'}]"


def decided_answers(stage: StageResult, context: RunContext) -> dict[str, str]:
    """A vote's or a judge's stage in ``output:``: the winning answers, by who gave them
    (every member of the winning group; the persona the judge picked), as any stage's are."""
    verdict = stage.verdict or {}
    winner = verdict.get("winner")
    if not isinstance(winner, str) or not winner:
        return {}
    source = context.stages.get(stage.id.rsplit("-", 1)[0])
    answers = {
        c.name: c.answer for c in (source.calls if source else []) if c.status == "ok" and c.answer
    }
    if stage.key == "judge":
        return {winner: answers[winner]} if winner in answers else {}
    members: list[str] = []
    for group in verdict.get("groups") or []:
        if isinstance(group, dict) and group.get("answer") == winner:
            members = [str(m) for m in group.get("members") or []]
    return {m: answers[m] for m in members if m in answers}


# A follow-up stage whose verdict, not its calls, is what a later prompt quotes.
DECIDED: dict[str, Callable[[StageResult, RunContext, list[str]], str]] = {
    "vote": _voted,
    "judge": _judged,
}


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
