"""Best of N with a blind judge: the panel's answers are candidates, a judge picks one.

Blind means the judge learns nothing but the question and the candidates' text: each candidate
gets a label (A, B, C...) by its place in a fresh random order, no persona name or model is
sent, and every candidate is fenced with the judge told not to follow what is inside. It answers
through structured output, ``{reasoning, winner}``, where ``winner`` is a label or ``"tie"``.

Judges favour the first answer they read, so with exactly two candidates the judge reads them
in both orders (two calls, ``judge#1`` and ``judge#2``); if the two verdicts disagree, the
result is a tie, marked ``inconsistent``. With three or more, one call in one random order.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, ClassVar

from fanout.conversation import role_prompt
from fanout.models import AgentError, Call, CallResult, Message
from fanout.shapes.options import PANEL_OPTIONS, Options
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
from fanout.shapes.synthesis import synthesis_after
from fanout.summary import Row, Rows, Summary, Verdict

if TYPE_CHECKING:
    from fanout.engine import RunContext, Stage

# A pick written in words by a server that ignored the schema: `winner: "B"`, `Winner is tie`.
_WORDED = re.compile(
    r"(?i:winner)[\"'\s:*]*(?:is\s+)?(?:candidate\s+)?[\"'*]*((?i:tie)|[A-Z]{1,2})\b"
)


@dataclass(frozen=True)
class JudgeVerdict(Verdict):
    """The judge's pick: the winning call's name and its answer (None: a tie or no usable
    verdict), whether it was a tie and whether the two orders disagreed, its reasoning, the
    labels the candidates were shown under, and what degraded the decision."""

    type: ClassVar[str] = "judge"
    legacy: ClassVar[tuple[str, ...]] = ("judge",)
    winner: str | None = None
    tie: bool = False
    inconsistent: bool = False
    reasoning: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    answer: str | None = None

    def summary(self) -> Summary:
        label = next((k for k, v in self.labels.items() if v == self.winner), "?")
        if self.winner is not None:
            headline = f"Judge's pick: {self.winner} (shown as {label})"
        elif self.inconsistent:
            headline = (
                "No decision: inconsistent (the judge picked differently when the order changed)"
            )
        elif self.tie:
            headline = "No decision: the judge called a tie"
        else:
            reason = next((w for w in self.warnings if w.startswith("no decision: ")), "")
            headline = "No decision: " + (reason.removeprefix("no decision: ") or "no verdict")
        blind = tuple(Row(f"{k} = {v}", marked=v == self.winner) for k, v in self.labels.items())
        said = ("inconsistent: ", "no decision: ")
        return Summary(
            "Judge",
            headline,
            decided=self.winner is not None,
            answer=self.answer if self.winner is not None else None,
            author=self.winner,
            rows=(Rows("points", "Candidates, blind", blind),) if blind else (),
            notes=(self.reasoning,) if self.reasoning else (),
            warnings=tuple(w for w in self.warnings if not w.startswith(said)),
            chosen=(self.winner,) if self.winner is not None else (),
        )


class JudgeStage:
    """One judge (two calls for two candidates) over ``source``'s answers; its verdict is
    ``judge`` in the result document."""

    kind = "judge"
    key: str | None = "judge"
    roles = ("judge",)

    def __init__(self, stage_id: str = "judge", source: str = "panel") -> None:
        self.id = stage_id
        self.source = source

    def calls(self, context: RunContext) -> list[Call]:
        agent = context.roles["judge"]
        results = context.stages[self.source].calls if self.source in context.stages else []
        answered = [r for r in results if r.status == "ok" and r.answer]
        failed = [r.name for r in results if r not in answered]
        order, labels = blind_candidates(
            shuffler(context.options, self.id), [r.name for r in answered]
        )
        texts = {r.name: r.answer or "" for r in answered}
        if len(answered) < 2:
            skip = AgentError("no_contest", "fewer than two candidates answered: nothing to judge")
            details = {"labels": labels, "order": order, "failed": failed}
            return [
                Call(f"{self.id}/{agent.name}", self.id, "judge", agent.name, agent, (), skip=skip,
                     details=details)
            ]  # fmt: skip
        orders = [order, order[::-1]] if len(order) == 2 else [order]
        names = [agent.name] if len(orders) == 1 else [f"{agent.name}#{i + 1}" for i in range(2)]
        calls = []
        for name, shown in zip(names, orders, strict=True):
            messages = judge_messages(
                agent.instructions, role_prompt(context, agent), shown, labels, texts
            )
            calls.append(
                Call(
                    f"{self.id}/{name}",
                    self.id,
                    "judge",
                    name,
                    agent,
                    tuple(messages),
                    response_format=judge_format(list(labels)),
                    details={"labels": labels, "order": shown, "failed": failed},
                )
            )
        return calls

    def verdict(self, context: RunContext, results: Sequence[CallResult]) -> JudgeVerdict:
        verdict = judge_verdict(results)
        source = context.stages.get(self.source)
        answers = {c.name: c.answer for c in source.calls if c.status == "ok"} if source else {}
        if verdict.winner is None:
            return verdict
        return replace(verdict, answer=answers.get(verdict.winner))


def judge_messages(
    instructions: str,
    prompt: str,
    shown: Sequence[str],
    labels: Mapping[str, str],
    texts: Mapping[str, str],
) -> list[Message]:
    """The judge's conversation: the question and the candidates by label, fenced, in the
    order ``shown``; nothing about who wrote them."""
    parts = [f"Question:\n{fence(prompt)}\n"]
    for label in shown:
        parts.append(f"Candidate {label}:\n{fence(texts[labels[label]])}\n")
    choices = ", ".join(f'"{label}"' for label in shown)
    parts.append(
        f'Which candidate answers the question best? Reply with JSON: {{"reasoning": "...", '
        f'"winner": one of {choices} or "tie"}}.'
    )
    return [
        {"role": "system", "content": f"{instructions}\n\n{UNTRUSTED}"},
        {"role": "user", "content": "\n".join(parts)},
    ]


def judge_format(labels: Sequence[str]) -> dict[str, object]:
    schema = {
        "type": "object",
        "properties": {
            "reasoning": {"type": "string"},
            "winner": {"type": "string", "enum": [*labels, "tie"]},
        },
        "required": ["reasoning", "winner"],
        "additionalProperties": False,
    }
    return json_schema_format("verdict", schema)


def read_pick(answer: str | None, labels: Mapping[str, str]) -> tuple[str, str] | None:
    """(``"tie"`` or the picked call's name, reasoning) from a judge's reply; None if it
    names neither a label nor a tie."""
    found = parse_object(answer)
    picked: object = found.get("winner") if found is not None else None
    reasoning: object = found.get("reasoning") if found is not None else None
    if not isinstance(picked, str):
        worded = _WORDED.search(answer or "")
        picked = worded.group(1) if worded else None
        reasoning = answer
    if not isinstance(picked, str):
        return None
    picked = picked.strip().strip("\"'*").strip()
    if picked.casefold() == "tie":
        return "tie", str(reasoning or "")
    name = labels.get(picked.upper())
    return (name, str(reasoning or "")) if name is not None else None


def _labels(value: object) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, Mapping) else {}


def judge_verdict(results: Sequence[CallResult]) -> JudgeVerdict:
    """The judge's verdict from its call(s), with the warnings that say how the decision was
    degraded."""
    details = results[0].details if results else {}
    labels = _labels(details.get("labels"))
    failed = details.get("failed")
    warnings: list[str] = []
    if isinstance(failed, list) and failed:
        names = ", ".join(map(str, failed))
        warnings.append(f"{len(failed)} candidate(s) failed before judging: {names}")
    if results and results[0].status == "skipped":
        if len(labels) == 1:
            winner = next(iter(labels.values()))
            warnings.append(f"only {winner} answered: chosen without judging")
            return JudgeVerdict(winner=winner, labels=labels, warnings=warnings)
        warnings.append("no decision: no candidate answered")
        return JudgeVerdict(labels=labels, warnings=warnings)
    picks: list[tuple[str, str]] = []
    for result in results:
        # Each call's own labels: a call kept from an earlier run keeps what it was shown.
        own = _labels(result.details.get("labels")) or labels
        pick = read_pick(result.answer, own) if result.status == "ok" else None
        if pick is not None:
            picks.append(pick)
        elif result.status == "ok":
            warnings.append(f"{result.name}: the judge's reply named no candidate")
        else:
            why = result.error.message if result.error else result.status
            warnings.append(f"{result.name}: the judge failed: {why}")
    if not picks:
        warnings.append("no decision: the judge gave no usable verdict")
        return JudgeVerdict(labels=labels, warnings=warnings)
    if len(picks) < len(results):
        warnings.append("judged in one order only: position bias is not ruled out")
    chosen = {pick for pick, _ in picks}
    reasoning = "\n\n".join(dict.fromkeys(reason for _, reason in picks if reason)) or None
    if len(chosen) > 1:
        warnings.append("inconsistent: the judge picked differently when the order changed")
        return JudgeVerdict(None, True, True, reasoning, labels, warnings)
    if chosen == {"tie"}:
        return JudgeVerdict(None, True, False, reasoning, labels, warnings)
    return JudgeVerdict(picks[0][0], False, False, reasoning, labels, warnings)


def judge_plan(options: Options) -> list[Stage]:
    """The panel answers (``repeat``/``best_of`` for several tries); a blind judge picks one."""
    return [PanelStage(), JudgeStage(), *synthesis_after(options)]


def _then_judge(source: str, stage_id: str, options: Options) -> list[Stage]:
    return [JudgeStage(stage_id, source)]


SHAPE = Shape(
    "judge",
    "The panel answers (best_of/repeat for several tries each); a blind judge picks the best.",
    judge_plan,
    options=PANEL_OPTIONS,
    flag="--judge",
    roles=("judge",),
    blind=True,
    steps=(Step("judge", "judge", _then_judge),),
    example="fanout ask -a translator:3 --judge \"Translate 'carpe diem'\"",
    order=30,
)
