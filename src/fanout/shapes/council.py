"""A council: the panel answers, every persona that answered ranks the others' answers blind,
the rankings are added up by Borda count, and the synthesizer writes the final answer seeing
the ranking.

Each reviewer is the persona's own model, briefed as a reviewer (not with its persona's
instructions, which could name it), and never sees its own answer. It gets its own random
order and labels, so no candidate is always first, and must return a strict ranking (every
label once) through structured output. A reply that is not one is an abstention: shown, and
left out of the count, never guessed at.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from fanout.conversation import role_prompt
from fanout.models import AgentError, Call, CallResult, Message
from fanout.shapes.options import MAP, PANEL_OPTIONS, Options
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
from fanout.summary import Row, Rows, Summary, Verdict

if TYPE_CHECKING:
    from fanout.engine import RunContext, Stage

REVIEW_BRIEF = (
    "You are reviewing answers to a question, labelled A, B, C... in no particular order. "
    "Rank them from best to worst: correct first, then complete, clear and concise. Judge the "
    "content, not the length, the position or the label."
)


@dataclass
class Review:
    """One reviewer's ranking, best first (empty: it abstained, for ``reason``)."""

    reviewer: str
    ranking: list[str] = field(default_factory=list)
    abstained: bool = False
    reason: str | None = None


@dataclass
class Standing:
    """A candidate's place in the aggregate: Borda points, mean position, rankings it is in."""

    name: str
    borda: int = 0
    mean_position: float | None = None
    votes: int = 0


@dataclass(frozen=True)
class ReviewVerdict(Verdict):
    """Each reviewer's ranking and their Borda aggregate (best first)."""

    type: ClassVar[str] = "review"
    legacy: ClassVar[tuple[str, ...]] = ("review",)
    reviews: list[Review] = field(default_factory=list)
    aggregate: list[Standing] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> Summary:
        ranked = [s for s in self.aggregate if s.votes]
        headline = (
            f"Ranked first by the panel: {ranked[0].name} (Borda {ranked[0].borda})"
            if ranked
            else "No ranking: no reviewer gave one"
        )
        table = tuple(
            Row(
                s.name,
                (
                    str(s.borda),
                    f"{s.mean_position:.2f}" if s.mean_position is not None else "-",
                    str(s.votes),
                ),
                marked=bool(ranked) and s is ranked[0],
            )
            for s in self.aggregate
        )
        each = tuple(
            Row(
                f"{r.reviewer}: abstained"
                if r.abstained
                else f"{r.reviewer}: {' > '.join(r.ranking)}"
            )
            for r in self.reviews
        )
        return Summary(
            "Review",
            headline,
            decided=bool(ranked),
            rows=(
                Rows(
                    "ranking",
                    "Peer ranking (Borda count)",
                    table,
                    ("Borda", "Mean position", "Votes"),
                ),
                Rows("points", "Each reviewer", each),
            ),
            warnings=tuple(w for w in self.warnings if not w.startswith("no ranking")),
        )


class ReviewStage:
    """Every persona that answered ``source`` ranks the other answers; the verdict (``review``)
    is each ranking and their Borda aggregate."""

    kind = "review"
    key: str | None = "review"
    roles: tuple[str, ...] = ()

    def __init__(self, stage_id: str = "review", source: str = "panel") -> None:
        self.id = stage_id
        self.source = source

    def calls(self, context: RunContext) -> list[Call]:
        results = context.stages[self.source].calls if self.source in context.stages else []
        answered = [r for r in results if r.status == "ok" and r.answer]
        texts = {r.name: r.answer or "" for r in answered}
        agents = {a.name: a for a in context.agents}
        calls = []
        for reviewer in answered:
            agent = agents.get(reviewer.name.split("#")[0])
            if agent is None:  # not one of this run's personas: nobody to ask
                continue
            others = [r.name for r in answered if r.name != reviewer.name]
            rng = shuffler(context.options, self.id, reviewer.name)
            order, labels = blind_candidates(rng, others)
            skip = None
            if len(others) < 2:
                skip = AgentError("no_contest", "fewer than two other answers to rank")
            messages = review_messages(role_prompt(context, agent), order, labels, texts)
            calls.append(
                Call(
                    f"{self.id}/{reviewer.name}",
                    self.id,
                    "reviewer",
                    reviewer.name,
                    agent,
                    tuple(messages),
                    response_format=ranking_format(order),
                    skip=skip,
                    details={"labels": labels, "order": order},
                )
            )
        return calls

    def verdict(self, context: RunContext, results: Sequence[CallResult]) -> ReviewVerdict:
        source = context.stages.get(self.source)
        ranked = [r.name for r in source.calls if r.status == "ok"] if source else []
        unanswered = [r.name for r in source.calls if r.status != "ok"] if source else []
        return review_verdict(results, ranked, unanswered)


def review_messages(
    prompt: str, order: Sequence[str], labels: Mapping[str, str], texts: Mapping[str, str]
) -> list[Message]:
    """One reviewer's conversation: the question and the others' answers, fenced, by label."""
    parts = [f"Question:\n{fence(prompt)}\n"]
    for label in order:
        parts.append(f"Candidate {label}:\n{fence(texts[labels[label]])}\n")
    parts.append(
        'Rank every candidate from best to worst. Reply with JSON: {"reasoning": "...", '
        f'"ranking": [every one of {", ".join(order)}, each once, best first]}}.'
    )
    return [
        {"role": "system", "content": f"{REVIEW_BRIEF}\n\n{UNTRUSTED}"},
        {"role": "user", "content": "\n".join(parts)},
    ]


def ranking_format(labels: Sequence[str]) -> dict[str, object]:
    # Strict mode takes no minItems/maxItems: that it is a permutation is checked on reading.
    schema = {
        "type": "object",
        "properties": {
            "reasoning": {"type": "string"},
            "ranking": {"type": "array", "items": {"type": "string", "enum": list(labels)}},
        },
        "required": ["reasoning", "ranking"],
        "additionalProperties": False,
    }
    return json_schema_format("ranking", schema)


def read_ranking(answer: str | None, labels: Mapping[str, str]) -> list[str] | None:
    """The call names ranked, best first, if the reply ranks every label exactly once."""
    found = parse_object(answer)
    ranking = found.get("ranking") if found is not None else None
    if not isinstance(ranking, list) or not all(isinstance(x, str) for x in ranking):
        return None
    picked = [x.strip().upper() for x in ranking]
    if sorted(picked) != sorted(labels):
        return None
    return [labels[x] for x in picked]


def _labels(value: object) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, Mapping) else {}


def review_verdict(
    results: Sequence[CallResult], ranked: Sequence[str], unanswered: Sequence[str]
) -> ReviewVerdict:
    """Each reviewer's ranking and the Borda aggregate: Borda gives a candidate k-1 points
    for first place among k, 0 for last."""
    reviews: list[Review] = []
    abstentions: list[str] = []
    points = {name: 0 for name in ranked}
    places: dict[str, list[int]] = {name: [] for name in ranked}
    for result in results:
        labels = _labels(result.details.get("labels"))
        ranking = read_ranking(result.answer, labels) if result.status == "ok" else None
        if ranking is None:
            reason: str = "not a strict ranking" if result.status == "ok" else result.status
            if result.error is not None and result.status != "ok":
                reason = f"{result.status}: {result.error.message}"
            reviews.append(Review(result.name, [], True, reason))
            abstentions.append(f"{result.name} ({reason})")
            continue
        for place, name in enumerate(ranking):
            points[name] = points.get(name, 0) + len(ranking) - 1 - place
            places.setdefault(name, []).append(place + 1)
        reviews.append(Review(result.name, ranking))

    def standing(name: str) -> tuple[int, float]:
        spots = places.get(name) or []
        return -points.get(name, 0), (sum(spots) / len(spots) if spots else float("inf"))

    aggregate = [
        Standing(
            name,
            points.get(name, 0),
            round(sum(p) / len(p), 2) if (p := places.get(name)) else None,
            len(places.get(name) or []),
        )
        for name in sorted(points, key=standing)
    ]
    warnings = []
    if abstentions:
        warnings.append(f"{len(abstentions)} reviewer(s) abstained: {', '.join(abstentions)}")
    if all(r.abstained for r in reviews):
        warnings.append("no ranking: no reviewer gave one")
    if unanswered:
        warnings.append(f"not ranked (no answer): {', '.join(unanswered)}")
    return ReviewVerdict(reviews, aggregate, warnings)


class CouncilSynthesisStage(SynthesisStage):
    """The synthesis, told how the council ranked the answers."""

    def __init__(self, review: str = "review", *, agreement_map: bool = False) -> None:
        super().__init__(agreement_map=agreement_map)
        self.review = review

    def notes(self, context: RunContext) -> list[str]:
        stage = context.stages.get(self.review)
        verdict = stage.verdict if stage is not None else None
        aggregate = verdict.aggregate if isinstance(verdict, ReviewVerdict) else []
        rows = [r for r in aggregate if r.votes]
        if not rows:
            return ["The panel's peer review produced no ranking: weigh the answers yourself."]
        lines = [
            f"{i}. {r.name}: Borda {r.borda}, mean position {r.mean_position}"
            for i, r in enumerate(rows, 1)
        ]
        return [
            "The panel reviewed itself: each persona ranked the others' answers without knowing "
            "who wrote them (Borda count, higher is better):\n"
            + "\n".join(lines)
            + "\nLean on the answers ranked higher, but keep a correct point from any of them."
        ]


def council_plan(options: Options) -> list[Stage]:
    """The panel answers, each persona ranks the others blind (Borda count), then the
    synthesizer writes the final answer seeing the ranking."""
    return [PanelStage(), ReviewStage(), CouncilSynthesisStage(agreement_map=bool(MAP.of(options)))]


def _review_id(stage_id: str) -> str:
    return f"{stage_id}-review"


def _then_council(source: str, stage_id: str, options: Options) -> list[Stage]:
    """The stage's personas rank each other's answers blind (``<id>-review``), then the
    synthesizer writes the answer seeing the ranking (``<id>-council``, what a later prompt
    quotes)."""
    review = ReviewStage(_review_id(source), source)
    synthesis = CouncilSynthesisStage(_review_id(source))
    synthesis.id, synthesis.source = stage_id, source
    return [review, synthesis]


SHAPE = Shape(
    "council",
    "The panel answers, each persona ranks the others' answers blind (Borda count), then the "
    "synthesizer writes the final answer seeing the ranking.",
    council_plan,
    options=PANEL_OPTIONS,
    flag="--council",
    roles=("synthesizer",),
    blind=True,
    least=3,
    least_why="each persona ranks the others' answers, at least two of them",
    steps=(
        Step(
            "council",
            "council",
            _then_council,
            least=3,
            least_why="each ranks the others' answers",
            before=lambda s: [_review_id(s)],
        ),
    ),
    example='fanout ask --council "Is P = NP likely?"',
    order=40,
)
