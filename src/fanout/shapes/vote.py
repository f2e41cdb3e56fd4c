"""A vote: every persona answers, answers are grouped, the largest group wins if it has quorum.

Without choices, answers are grouped by exact match after normalising them (case, width,
whitespace, punctuation, a leading "the answer is"): cheap, predictable and explainable, at
the price of counting "Paris" and "Paris, France" apart. With ``choices``, each persona must
pick one through structured output (an enum); an answer that fits no choice abstains. An
answer given as ``{"choice": "Paris"}`` is read as ``Paris`` (the reply as it came is kept in
the call's ``reply``).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from fanout.models import Agent, CallResult, Message, chat_messages
from fanout.shapes.options import PANEL_OPTIONS, Choices, Options, Share
from fanout.shapes.panel import PanelStage
from fanout.shapes.shape import Shape, Step
from fanout.shapes.structured import json_schema_format, parse_object
from fanout.shapes.synthesis import synthesis_after
from fanout.summary import Row, Rows, Summary, Verdict

if TYPE_CHECKING:
    from fanout.engine import RunContext, Stage

# A leading "The answer is", "Answer:", "Final answer:" (after any markdown emphasis).
_LEADING = re.compile(r"^[\W_]*(?:the\s+)?(?:final\s+)?answer\s*(?:is\b|:)", re.IGNORECASE)
_TERSE = "Reply with the answer only (a word, a number or a short phrase), no explanation."
_BAR = 24

CHOICES = Choices(
    "choices", 'The answers to pick from ("Paris,Lyon").', flag="--choices", metavar="A,B,...",
    selects=True,
)  # fmt: skip
QUORUM = Share(
    "quorum", "The share of votes (0 to 1) the winner needs. Default: more than half.",
    flag="--quorum", metavar="SHARE", selects=True,
)  # fmt: skip


def normalise(text: str) -> str:
    """The form answers are compared in: ``"The answer is: PARIS!"`` -> ``"paris"``."""
    folded = unicodedata.normalize("NFKC", text).casefold().strip()
    folded = _LEADING.sub("", folded)
    spaced = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in folded)
    return " ".join(spaced.split())


def _shown(text: str) -> str:
    """How a group's answer is shown: its first member's, without lead-in or end punctuation."""
    stripped = _LEADING.sub("", unicodedata.normalize("NFKC", text).strip())
    stripped = stripped.strip().strip("*_`\"' ").rstrip(".!?;:,").strip()
    return " ".join(stripped.split()) or text.strip()


@dataclass
class VoteGroup:
    answer: str
    members: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class VoteVerdict(Verdict):
    """The tally: the winner (None: a tie or no vote), its share of the votes cast, the share
    it needed and whether it had it; who voted what; who did not vote, and why."""

    type: ClassVar[str] = "vote"
    legacy: ClassVar[tuple[str, ...]] = ("vote",)
    winner: str | None
    share: float
    quorum: float
    quorum_met: bool
    tally: dict[str, int]
    groups: list[VoteGroup]
    abstained: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    votes_cast: int = 0
    method: str = "exact"
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> Summary:
        decided = self.winner is not None and self.quorum_met
        need = "more than half" if self.quorum == 0.5 else f"{self.quorum:.0%}"
        reason = next((w for w in self.warnings if w.startswith("no quorum")), "no quorum")
        headline = (
            f"Winner: {self.winner} · {self.share:.0%} · quorum ({need}) met"
            if decided
            else f"No decision: {reason.removeprefix('no quorum: ')}"
        )
        cast = self.votes_cast or sum(self.tally.values())
        rows = tuple(
            Row(
                answer,
                (str(count), f"{count / cast:.0%}" if cast else "-"),
                share=count / cast if cast else 0.0,
                marked=decided and answer == self.winner,
            )
            for answer, count in self.tally.items()
        )
        method = "choices" if self.method == "choices" else "exact match"
        note = (
            f"{cast} votes cast ({method}) · {len(self.abstained)} abstained · "
            f"{len(self.failed)} without an answer"
        )
        members = next((g.members for g in self.groups if g.answer == self.winner), [])
        return Summary(
            "Vote",
            headline,
            decided=decided,
            answer=self.winner if decided else None,
            author=", ".join(members) if decided else None,
            rows=(Rows("tally", rows=rows),),
            notes=(note,),
            warnings=tuple(w for w in self.warnings if not w.startswith("no quorum")),
            chosen=tuple(members) if decided else (),
        )


class VoteStage(PanelStage):
    """The panel, asked to vote; its verdict is the tally (``vote`` in the result document).

    Options: ``choices`` (list of str), ``quorum`` (the share the winner needs; default: more
    than half of the votes cast).
    """

    key: str | None = "vote"

    def messages(self, agent: Agent, context: RunContext) -> list[Message]:
        choices = CHOICES.of(context.options) or []
        how = _TERSE
        if choices:
            how = (
                "Choose exactly one of these answers: "
                + "; ".join(choices)
                + '. Reply with JSON only: {"choice": "<your choice, written exactly as given>"}.'
            )
        return chat_messages(agent, f"{context.prompt}\n\n{how}")

    def response_format(self, context: RunContext) -> Mapping[str, object] | None:
        choices = CHOICES.of(context.options)
        if not choices:
            return None
        schema = {
            "type": "object",
            "properties": {"choice": {"type": "string", "enum": choices}},
            "required": ["choice"],
            "additionalProperties": False,
        }
        return json_schema_format("vote", schema)

    def reader(self, context: RunContext) -> Callable[[CallResult], object] | None:
        choices = CHOICES.of(context.options)
        return (lambda result: read_choice(result, choices)) if choices else None

    def verdict(self, context: RunContext, results: Sequence[CallResult]) -> VoteVerdict:
        options = context.options
        return tally_votes(results, CHOICES.of(options) or [], QUORUM.of(options))


def read_choice(result: CallResult, choices: Sequence[str]) -> None:
    """A reply that picks a choice reads as that choice (``Paris``, not ``{"choice":
    "Paris"}``); the reply as it came stays in ``details["reply"]``."""
    if result.answer is None:
        return
    vote = read_vote(result.answer, choices)
    if vote is not None and vote[1] != result.answer:
        result.details["reply"] = result.answer
        result.answer = vote[1]


def read_vote(answer: str, choices: Sequence[str]) -> tuple[str, str] | None:
    """(group key, answer as shown) for one answer, or None: an abstention. With choices, the
    answer must name exactly one: as ``{"choice": ...}`` or as the whole answer."""
    if not choices:
        key = normalise(answer)
        return (key, _shown(answer)) if key else None
    found = parse_object(answer)
    picked = found.get("choice") if found is not None else None
    said = picked if isinstance(picked, str) else answer
    matches = [c for c in choices if normalise(c) == normalise(said)]
    return (normalise(matches[0]), matches[0]) if len(matches) == 1 else None


def tally_votes(
    results: Sequence[CallResult], choices: Sequence[str], quorum: float | None
) -> VoteVerdict:
    """The ``vote`` verdict: winner, its share of the votes cast, whether it has quorum, the
    tally and who voted what; failures and abstentions are listed, never counted."""
    groups: dict[str, VoteGroup] = {}
    abstained: list[str] = []
    failed: list[str] = []
    for result in results:
        if result.status != "ok" or result.answer is None:
            failed.append(result.name)
            continue
        vote = read_vote(result.answer, choices)
        if vote is None:
            abstained.append(result.name)
            continue
        key, shown = vote
        groups.setdefault(key, VoteGroup(shown)).members.append(result.name)
    ranked = sorted(groups.values(), key=lambda g: -len(g.members))  # stable: first seen
    cast = sum(len(g.members) for g in ranked)
    top = len(ranked[0].members) if ranked else 0
    leaders = [g.answer for g in ranked if len(g.members) == top]
    winner = leaders[0] if len(leaders) == 1 else None
    share = round(top / cast, 4) if cast else 0.0
    needed = 0.5 if quorum is None else float(quorum)
    # The default is a strict majority: exactly half is not "more than half".
    met = winner is not None and (share > needed if quorum is None else share >= needed)
    warnings = _vote_warnings(cast, share, met, winner, leaders, top, quorum, failed, abstained)
    if abstained and choices:
        warnings[-1] = warnings[-1].replace("(no usable answer)", "(fits no choice)")
    return VoteVerdict(
        winner=winner,
        share=share,
        quorum=needed,
        quorum_met=met,
        tally={g.answer: len(g.members) for g in ranked},
        groups=ranked,
        abstained=abstained,
        failed=failed,
        votes_cast=cast,
        method="choices" if choices else "exact",
        warnings=warnings,
    )


def _vote_warnings(
    cast: int,
    share: float,
    met: bool,
    winner: str | None,
    leaders: Sequence[str],
    top: int,
    quorum: float | None,
    failed: Sequence[str],
    abstained: Sequence[str],
) -> list[str]:
    warnings: list[str] = []
    if not cast:
        warnings.append("no quorum: no vote was cast")
    elif winner is None:
        warnings.append(f"no quorum: {' and '.join(leaders)} tie with {top} votes each")
    elif not met:
        need = "more than half" if quorum is None else f"at least {quorum:.0%}"
        warnings.append(
            f"no quorum: {winner} has {top} of {cast} votes ({share:.0%}); it needs {need}"
        )
    if failed:
        warnings.append(f"{len(failed)} did not vote (no answer): {', '.join(failed)}")
    if abstained:
        warnings.append(f"{len(abstained)} abstained (no usable answer): {', '.join(abstained)}")
    return warnings


class TallyStage:
    """``then: vote`` in a flow: the tally of an earlier stage's answers (no call of its
    own)."""

    kind = "vote"
    key: str | None = "vote"
    roles: tuple[str, ...] = ()
    makes_calls = False

    def __init__(self, stage_id: str, source: str) -> None:
        self.id, self.source = stage_id, source

    def calls(self, context: RunContext) -> list[object]:
        return []

    def verdict(self, context: RunContext, results: Sequence[CallResult]) -> VoteVerdict:
        stage = context.stages.get(self.source)
        return tally_votes(stage.calls if stage else [], [], QUORUM.of(context.options))


def vote_plan(options: Options) -> list[Stage]:
    """Every persona votes (``choices``, ``quorum``); the tally is the ``vote`` verdict."""
    return [VoteStage(), *synthesis_after(options)]


def _then_vote(source: str, stage_id: str, options: Options) -> list[Stage]:
    return [TallyStage(stage_id, source)]  # type: ignore[list-item]


SHAPE = Shape(
    "vote",
    "Every persona answers; the answers are grouped and the largest group wins if it has quorum.",
    vote_plan,
    options=(*PANEL_OPTIONS, CHOICES, QUORUM),
    flag="--vote",
    steps=(Step("vote", "vote", _then_vote),),
    example='fanout ask --vote --choices "Paris,Lyon" "What is the capital of France?"',
    order=20,
)
