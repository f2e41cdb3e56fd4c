"""A vote: every persona answers, answers are grouped, the largest group wins if it has quorum.

Without choices, answers are grouped by exact match after normalising them (case, width,
whitespace, punctuation, a leading "the answer is"): cheap, predictable and explainable, at
the price of counting "Paris" and "Paris, France" apart. With ``choices``, each persona must
pick one through structured output (an enum); an answer that fits no choice abstains.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

from fanout.engine import RunContext
from fanout.errors import ConfigError
from fanout.models import Agent, CallResult, Message, chat_messages
from fanout.shapes.panel import PanelStage
from fanout.shapes.structured import json_schema_format, parse_object

# A leading "The answer is", "Answer:", "Final answer:" (after any markdown emphasis).
_LEADING = re.compile(r"^[\W_]*(?:the\s+)?(?:final\s+)?answer\s*(?:is\b|:)", re.IGNORECASE)
_TERSE = "Reply with the answer only (a word, a number or a short phrase), no explanation."


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


class VoteStage(PanelStage):
    """The panel, asked to vote; its verdict is the tally (``vote`` in the result document).

    Options: ``choices`` (list of str), ``quorum`` (the share the winner needs; default: more
    than half of the votes cast).
    """

    key: str | None = "vote"

    def messages(self, agent: Agent, context: RunContext) -> list[Message]:
        choices = _choices(context.options)
        how = _TERSE
        if choices:
            how = (
                "Choose exactly one of these answers: "
                + "; ".join(choices)
                + '. Reply with JSON only: {"choice": "<your choice, written exactly as given>"}.'
            )
        return chat_messages(agent, f"{context.prompt}\n\n{how}")

    def response_format(self, context: RunContext) -> Mapping[str, Any] | None:
        choices = _choices(context.options)
        if not choices:
            return None
        schema = {
            "type": "object",
            "properties": {"choice": {"type": "string", "enum": choices}},
            "required": ["choice"],
            "additionalProperties": False,
        }
        return json_schema_format("vote", schema)

    def verdict(self, context: RunContext, results: Sequence[CallResult]) -> dict[str, Any] | None:
        return tally_votes(results, _choices(context.options), context.options.get("quorum"))


def check_vote(options: Mapping[str, Any]) -> None:
    """ConfigError for choices that cannot make a vote, or a quorum that is not a share."""
    choices = options.get("choices")
    if choices is not None:
        if not isinstance(choices, list | tuple) or not all(isinstance(c, str) for c in choices):
            raise ConfigError("--choices: give the choices as text")
        keys = [normalise(c) for c in choices]
        if len(set(keys)) < 2 or len(set(keys)) != len(keys) or "" in keys:
            raise ConfigError("--choices: give at least two different choices, e.g. Paris,Lyon")
    quorum = options.get("quorum")
    if quorum is not None and (
        isinstance(quorum, bool) or not isinstance(quorum, int | float) or not 0 < quorum <= 1
    ):
        raise ConfigError(f"--quorum: {quorum!r} is not a share between 0 and 1")


def _choices(options: Mapping[str, Any]) -> list[str]:
    return [str(c) for c in options.get("choices") or []]


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
) -> dict[str, Any]:
    """The ``vote`` verdict: winner, its share of the votes cast, whether it has quorum, the
    tally and who voted what; failures and abstentions are listed, never counted."""
    groups: dict[str, dict[str, Any]] = {}
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
        groups.setdefault(key, {"answer": shown, "members": []})["members"].append(result.name)
    ranked = sorted(groups.values(), key=lambda g: -len(g["members"]))  # stable: first seen
    cast = sum(len(g["members"]) for g in ranked)
    top = len(ranked[0]["members"]) if ranked else 0
    leaders = [g["answer"] for g in ranked if len(g["members"]) == top]
    winner = leaders[0] if len(leaders) == 1 else None
    share = round(top / cast, 4) if cast else 0.0
    needed = 0.5 if quorum is None else float(quorum)
    # The default is a strict majority: exactly half is not "more than half".
    met = winner is not None and (share > needed if quorum is None else share >= needed)
    warnings = _vote_warnings(cast, share, met, winner, leaders, top, quorum, failed, abstained)
    if abstained and choices:
        warnings[-1] = warnings[-1].replace("(no usable answer)", "(fits no choice)")
    return {
        "winner": winner,
        "share": share,
        "quorum": needed,
        "quorum_met": met,
        "tally": {g["answer"]: len(g["members"]) for g in ranked},
        "groups": ranked,
        "abstained": abstained,
        "failed": failed,
        "votes_cast": cast,
        "method": "choices" if choices else "exact",
        "warnings": warnings,
    }


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
