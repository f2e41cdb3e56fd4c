"""A debate (``fanout ask --debate``): two or more personas answer; then, for up to ``rounds``
rounds, each sees the others' latest answers (blind: labels in a random order, fenced, no name
or model) and revises or defends its own; it stops early once they agree, and ends with a
judge's pick or a synthesis of the last answers.

They agree when every answer of the last round reads the same once normalised (as a vote
compares: case, punctuation, a leading "the answer is"), or, with ``agree: judge``, when the
judge says so after a round (one call, structured output). The plan grows one round at a time
(``follow``), as an orchestrator's turns do, so every round is a stage of its own: in the
document, the timeline, the live board and every view, by its id (``round1``, ``round2``...).
After a flow stage (``then: debate``) its answers are the opening round and the last stage,
``<stage>-debate``, is what a later prompt quotes.

llm-consortium iterates its models until a confidence threshold; here the personas see each
other's answers rather than a summary of them, stop on agreement rather than self-reported
confidence, and end with a blind judge or a synthesis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from fanout.models import Agent, AgentError, Call, CallResult, Message
from fanout.shapes.judge import JudgeStage
from fanout.shapes.options import SEED, OneOf, Options, Whole
from fanout.shapes.panel import PanelStage
from fanout.shapes.shape import Shape, Step
from fanout.shapes.structured import (
    UNTRUSTED,
    blind_candidates,
    fence,
    json_schema_format,
    parse_object,
    shuffler,
)
from fanout.shapes.synthesis import SynthesisStage
from fanout.shapes.vote import normalise
from fanout.summary import Summary, Verdict

if TYPE_CHECKING:
    from fanout.engine import RunContext, Stage

ROUNDS = Whole(
    "rounds", "At most this many rounds of revision after the first answers (up to 10).",
    flag="--rounds", metavar="N", low=1, high=10, default=2,
)  # fmt: skip
FINISH = OneOf(
    "finish", "How the debate ends: a synthesis of the last answers, or a blind judge's pick.",
    words=("synthesis", "judge"), default="synthesis",
)  # fmt: skip
AGREE = OneOf(
    "agree", "When the personas agree (and stop): their answers read the same (exact), or the "
    "judge says so after each round (judge).", words=("exact", "judge"), default="exact",
)  # fmt: skip

REVISE = (
    "You are in a debate. Below are the question, your last answer, and the other panelists' "
    "latest answers, without their names. Weigh them: where one is better, revise your answer; "
    "where yours stands, defend it in a sentence. Then give your answer in full."
)
AGREEMENT_SCHEMA: dict[str, object] = {
    "type": "object",
    "properties": {"agree": {"type": "boolean"}, "reasoning": {"type": "string"}},
    "required": ["agree", "reasoning"],
    "additionalProperties": False,
}
CHECK = (
    "Do these answers agree on the substance of the answer to the question (wording aside)? "
    'Reply with JSON: {"agree": true or false, "reasoning": "..."}.'
)


@dataclass(frozen=True)
class RoundVerdict(Verdict):
    """One round: which position each persona holds (answers that read the same once
    normalised share a number), who changed theirs since the round before, whether they now
    agree, and who gave no answer."""

    type: ClassVar[str] = "debate_round"
    round: int = 1
    positions: dict[str, int] = field(default_factory=dict)
    changed: list[str] = field(default_factory=list)
    agreed: bool = False
    silent: list[str] = field(default_factory=list)

    def summary(self) -> Summary:
        distinct = len(set(self.positions.values()))
        state = "they agree" if self.agreed else f"{distinct} different answers"
        moved = ""
        if self.round > 1:
            moved = f"{len(self.changed)} changed theirs" if self.changed else "nobody changed"
        said = "; ".join(p for p in (state, moved) if p)
        warnings = (f"no answer from {', '.join(self.silent)}",) if self.silent else ()
        return Summary("Debate", said, warnings=warnings)


@dataclass(frozen=True)
class AgreementVerdict(Verdict):
    """The judge's call after a round (``agree: judge``): do the answers agree?"""

    type: ClassVar[str] = "debate_check"
    agree: bool = False
    reasoning: str = ""
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> Summary:
        said = "they agree" if self.agree else "they still differ"
        why = f" ({self.reasoning})" if self.reasoning else ""
        return Summary("Agreement", f"the judge: {said}{why}", warnings=tuple(self.warnings))


@dataclass(frozen=True)
class Debate:
    """What every stage of one debate knows: where its rounds' ids start, how it ends."""

    prefix: str  # "" standalone; "<stage>-" after a flow stage
    final: str  # the id of the last stage (a synthesis or a judge)
    rounds: int
    finish: str
    agree: str

    def round_id(self, number: int) -> str:
        return f"{self.prefix}round{number}"

    @classmethod
    def of(cls, options: Options, prefix: str = "", final: str = "") -> Debate:
        finish = FINISH.of(options) or "synthesis"
        return cls(prefix, final or finish, ROUNDS.of(options) or 2, finish,
                   AGREE.of(options) or "exact")  # fmt: skip

    @property
    def roles(self) -> tuple[str, ...]:
        """The roles the debate will ask, declared by its first stage (the plan grows)."""
        ending = ("judge",) if self.finish == "judge" else ("synthesizer",)
        return (*ending, *(("judge",) if self.agree == "judge" and ending != ("judge",) else ()))

    def after(self, number: int, context: RunContext) -> list[Stage]:
        """What follows round ``number``: the judge's agreement check, another round, or the
        end (they agree, the rounds are spent, or fewer than two answered)."""
        done = context.stages.get(self.round_id(number))
        verdict = done.verdict if done is not None else None
        agreed = isinstance(verdict, RoundVerdict) and verdict.agreed
        heard = isinstance(verdict, RoundVerdict) and len(verdict.positions) >= 2
        if agreed or number > self.rounds or not heard:  # agreed, spent, or nobody to answer
            return [self.ending(number)]
        if self.agree == "judge":
            return [AgreementCheck(self, number)]
        return [DebateRound(self, number + 1)]

    def ending(self, number: int) -> Stage:
        last = self.round_id(number)
        if self.finish == "judge":
            return JudgeStage(self.final, last)
        return SynthesisStage(self.final, last)


class DebateRound(PanelStage):
    """Round ``number``: the first, every persona answers; after it, each persona sees the
    others' latest answers (blind) and revises or defends its own."""

    kind = "round"

    def __init__(self, debate: Debate, number: int, opening: str | None = None) -> None:
        super().__init__(debate.round_id(number))
        self.debate, self.number = debate, number
        self.opening = opening  # a flow stage whose answers are the first round
        self.roles = debate.roles if number == 1 or opening else ()

    def calls(self, context: RunContext) -> list[Call]:
        if self.number == 1:
            return super().calls(context)
        before = self._before(context)
        texts = {r.name: r.answer or "" for r in before if r.status == "ok" and r.answer}
        agents = {a.name: a for a in context.agents}
        calls = []
        for previous in before:
            agent = agents.get(previous.name.split("#")[0])
            if agent is None:
                continue
            others = [n for n in texts if n != previous.name]
            rng = shuffler(context.options, self.id, previous.name)
            order, labels = blind_candidates(rng, others)
            messages = revise_messages(agent, context.prompt, texts.get(previous.name), order,
                                       labels, texts)  # fmt: skip
            skip = None
            if not others:
                skip = AgentError("no_contest", "no other answer to weigh: nothing to debate")
            calls.append(Call(f"{self.id}/{previous.name}", self.id, "persona", previous.name,
                              agent, tuple(messages), skip=skip,
                              details={"labels": labels, "order": order}))  # fmt: skip
        return calls

    def _before(self, context: RunContext) -> list[CallResult]:
        source = self.opening or self.debate.round_id(self.number - 1)
        stage = context.stages.get(source)
        return list(stage.calls) if stage is not None else []

    def verdict(self, context: RunContext, results: Sequence[CallResult]) -> RoundVerdict:
        answered = [r for r in results if r.status == "ok" and r.answer]
        read = {r.name: normalise(r.answer or "") for r in answered}
        numbered = {text: i for i, text in enumerate(dict.fromkeys(read.values()), 1)}
        before = {r.name: normalise(r.answer or "") for r in self._before(context) if r.answer}
        changed = [n for n, text in read.items() if self.number > 1 and before.get(n) != text]
        agreed = len(answered) >= 2 and len(numbered) == 1
        silent = [r.name for r in results if r not in answered]
        positions = {name: numbered[text] for name, text in read.items()}
        return RoundVerdict(self.number, positions, changed, agreed, silent)

    def follow(self, context: RunContext) -> list[Stage]:
        return self.debate.after(self.number, context)

    def longest_answer(self, call: Call) -> CallResult:
        """``--dry-run``: answers as long as they may be, and all different (no early end)."""
        result = CallResult.of(call)
        result.status = "ok"
        from fanout.cost import DEFAULT_COMPLETION_ESTIMATE  # --dry-run only: anyio with it

        bound = call.agent.max_tokens or DEFAULT_COMPLETION_ESTIMATE
        result.answer = call.name + " " + "x" * max(bound - len(call.name) - 1, 0)
        return result


class OpeningRound(DebateRound):
    """After a flow stage: its answers are the first round; this round reads them."""

    def _before(self, context: RunContext) -> list[CallResult]:
        stage = context.stages.get(self.opening or "")
        return list(stage.calls) if stage is not None else []


class AgreementCheck:
    """``agree: judge``: after a round, the judge reads its answers (blind) and says whether
    they agree; if not, another round follows."""

    kind = "check"
    key: str | None = None
    roles = ("judge",)

    def __init__(self, debate: Debate, number: int) -> None:
        self.debate, self.number = debate, number
        self.id = f"{debate.prefix}check{number}"

    def calls(self, context: RunContext) -> list[Call]:
        agent = context.roles["judge"]
        stage = context.stages.get(self.debate.round_id(self.number))
        texts = {r.name: r.answer or "" for r in (stage.calls if stage else []) if r.answer}
        order, labels = blind_candidates(shuffler(context.options, self.id), list(texts))
        parts = [f"Question:\n{fence(context.prompt)}\n"]
        parts += [f"Answer {label}:\n{fence(texts[labels[label]])}\n" for label in order]
        messages: list[Message] = [
            {"role": "system", "content": f"{agent.instructions}\n\n{UNTRUSTED}"},
            {"role": "user", "content": "\n".join([*parts, CHECK])},
        ]
        return [
            Call(
                f"{self.id}/{agent.name}",
                self.id,
                "judge",
                agent.name,
                agent,
                tuple(messages),
                response_format=json_schema_format("agreement", AGREEMENT_SCHEMA),
            )
        ]

    def verdict(self, context: RunContext, results: Sequence[CallResult]) -> AgreementVerdict:
        answered = bool(results) and results[0].status == "ok"
        found = parse_object(results[0].answer) if answered else None
        agree, why = (found or {}).get("agree"), (found or {}).get("reasoning")
        # An unreadable reply costs only this check: the debate goes on as if they differed.
        unread = ["the judge's reply gave no agree: true/false; taken as no agreement"]
        return AgreementVerdict(
            agree is True,
            why if isinstance(why, str) else "",
            unread if answered and not isinstance(agree, bool) else [],
        )

    def follow(self, context: RunContext) -> list[Stage]:
        stage = context.stages.get(self.id)
        verdict = stage.verdict if stage is not None else None
        agreed = isinstance(verdict, AgreementVerdict) and verdict.agree
        if agreed or self.number > self.debate.rounds:
            return [self.debate.ending(self.number)]
        return [DebateRound(self.debate, self.number + 1)]


def revise_messages(
    agent: Agent,
    prompt: str,
    mine: str | None,
    order: Sequence[str],
    labels: Mapping[str, str],
    texts: Mapping[str, str],
) -> list[Message]:
    """A persona's turn in a revision round: the question, its own last answer, the others'
    by label (fenced: data, not instructions), and what to do."""
    parts = [f"Question:\n{fence(prompt)}\n", f"Your last answer:\n{fence(mine or '(none)')}\n"]
    parts += [f"Panelist {label}:\n{fence(texts[labels[label]])}\n" for label in order]
    parts.append(REVISE)
    brief = "\n\n".join(p for p in (agent.instructions, UNTRUSTED) if p)
    return [{"role": "system", "content": brief}, {"role": "user", "content": "\n".join(parts)}]


def debate_plan(options: Options) -> list[Stage]:
    """The first round; the rest grows from the answers (``follow``)."""
    return [DebateRound(Debate.of(options, final="debate"), 1)]


def _then_debate(source: str, stage_id: str, options: Options) -> list[Stage]:
    """After a flow stage: its answers open the debate, which ends in ``<stage>-debate``."""
    debate = Debate.of(options, prefix=f"{source}-", final=stage_id)
    return [OpeningRound(debate, 2, opening=source)]


SHAPE = Shape(
    "debate",
    "Two or more personas answer, then see each other's answers (blind) and revise or defend "
    "theirs, round after round, until they agree; a synthesis or a blind judge ends it.",
    debate_plan,
    options=(SEED, ROUNDS, FINISH, AGREE),
    flag="--debate",
    roles=("synthesizer", "judge"),
    least=2,
    least_why="each persona weighs the others' answers",
    answers=("round",),
    blind=True,
    steps=(
        Step(
            "debate", "debate", _then_debate, least=2, least_why="each weighs the others' answers"
        ),
    ),
    example='fanout ask --debate --rounds 3 -O finish=judge "Is P = NP likely?"',
    order=45,
)
