"""The synthesis stage: one synthesizer merges the answers of an earlier stage into one.

It is the model for every stage that works on earlier answers: it reads them from the context,
builds its call (or skips it, with a reason, when there is nothing to work on) and records what
it was built from in the call's ``details``. Its verdict is the merged answer (``synthesis``),
what every front end shows as the run's answer.

With ``map``, the synthesis is an agreement map: structured output with the points every answer
agrees on, the contradictions (each persona's stance), the points only one persona made, and the
merged answer. The map goes on the call's entry (``synthesis.map``) and in the verdict; its
answer is the merged text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from fanout.conversation import role_prompt
from fanout.models import AgentError, Call, CallResult, Message
from fanout.shapes.options import MAP, SYNTHESIZE, Options
from fanout.shapes.structured import json_schema_format, parse_object
from fanout.summary import JsonObject, Row, Rows, Summary, Verdict

if TYPE_CHECKING:
    from fanout.engine import RunContext, Stage

MAP_BRIEF = (
    "Write an agreement map of the answers as JSON: consensus (the points every answer agrees "
    "on), contradictions (each topic they disagree on, with every persona's stance on it by "
    "name), unique (points only one persona made, by persona), and answer (the merged answer, "
    "in prose)."
)


@dataclass
class Contradiction:
    topic: str
    stances: dict[str, str] = field(default_factory=dict)


@dataclass
class AgreementMap:
    """What the answers agree on, where they differ (each persona's stance) and what only
    one of them said."""

    consensus: list[str] = field(default_factory=list)
    contradictions: list[Contradiction] = field(default_factory=list)
    unique: dict[str, list[str]] = field(default_factory=dict)

    def rows(self) -> tuple[Rows, ...]:
        stances = [
            row
            for item in self.contradictions
            for row in (
                Row(item.topic),
                *(Row(f"{name}: {stance}", depth=1) for name, stance in item.stances.items()),
            )
        ]
        unique = [Row(f"{name}: {p}") for name, points in self.unique.items() for p in points]
        return (
            Rows("points", "Consensus", tuple(Row(p) for p in self.consensus)),
            Rows("points", "Contradictions", tuple(stances)),
            Rows("points", "Only one persona said", tuple(unique)),
        )


@dataclass(frozen=True)
class SynthesisVerdict(Verdict):
    """The merged answer (None: the synthesis failed or had nothing to merge), who wrote it,
    whether it is partial (and whose answers it lacks), and its agreement map if asked."""

    type: ClassVar[str] = "synthesis"
    legacy: ClassVar[tuple[str, ...]] = ("synthesis",)
    answer: str | None = None
    author: str | None = None
    model: str | None = None
    missing: list[str] = field(default_factory=list)
    map: AgreementMap | None = None
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> Summary:
        author = self.author or "the synthesizer"
        if self.answer is None:
            headline = f"No synthesis: {author} gave no answer"
        elif self.missing:
            headline = f"Merged by {author}, partial (no answer from {', '.join(self.missing)})"
        else:
            headline = f"Merged by {author}"
        return Summary(
            "Synthesis",
            headline,
            answer=self.answer,
            author=self.author,
            model=self.model,
            rows=self.map.rows() if self.map is not None else (),
            warnings=tuple(self.warnings),
        )


class SynthesisStage:
    """Merge ``source``'s answers; partial (and saying so) when some have none."""

    kind = "synthesis"
    key: str | None = None
    roles = ("synthesizer",)

    def __init__(
        self, stage_id: str = "synthesis", source: str = "panel", *, agreement_map: bool = False
    ) -> None:
        self.id = stage_id
        self.source = source
        self.map = agreement_map

    def calls(self, context: RunContext) -> list[Call]:
        agent = context.roles["synthesizer"]
        results = context.stages[self.source].calls if self.source in context.stages else []
        answered = [r for r in results if r.status == "ok"]
        missing = [r.name for r in results if r.status != "ok"]
        details: dict[str, object] = {
            "partial": bool(missing),
            "sources": [r.name for r in answered],
            "missing": missing,
        }
        skip = None
        if not answered:
            skip = AgentError("no_answers", "no persona answered, nothing to synthesize")
        notes = self.notes(context)
        if self.map:
            notes = [*notes, MAP_BRIEF]
        messages = synthesis_messages(
            agent.instructions, role_prompt(context, agent), answered, missing, notes
        )
        return [
            Call(
                f"{self.id}/{agent.name}",
                self.id,
                "synthesizer",
                agent.name,
                agent,
                tuple(messages),
                response_format=map_format([r.name for r in answered]) if self.map else None,
                skip=skip,
                details=details,
                read=read_map if self.map else None,
            )
        ]

    def notes(self, context: RunContext) -> list[str]:
        """What else the synthesizer is told (a council's ranking)."""
        return []

    def verdict(self, context: RunContext, results: Sequence[CallResult]) -> SynthesisVerdict:
        result = results[0] if results else None
        if result is None:
            return SynthesisVerdict(warnings=["no synthesis: nothing to merge"])
        missing = result.details.get("missing")
        warnings: list[str] = []
        agreement: AgreementMap | None = None
        if self.map:
            agreement, warnings = read_map(result)
        if result.status != "ok" and result.error is not None:
            warnings.append(f"no synthesis: {result.error.message}")
        return SynthesisVerdict(
            answer=result.answer if result.status == "ok" else None,
            author=result.name,
            model=result.model,
            missing=[str(m) for m in missing] if isinstance(missing, list) else [],
            map=agreement,
            warnings=warnings,
        )


def synthesis_after(options: Options, source: str = "panel") -> list[Stage]:
    """The synthesis a shape adds after its answers when ``synthesize`` or ``map`` is on."""
    if SYNTHESIZE.of(options) or MAP.of(options):
        return [SynthesisStage(source=source, agreement_map=bool(MAP.of(options)))]
    return []


def synthesis_messages(
    instructions: str,
    prompt: str,
    answered: Sequence[CallResult],
    missing: Sequence[str],
    notes: Sequence[str] = (),
) -> list[Message]:
    """The synthesizer's conversation: its brief, then the question and every answer."""
    parts = [f"Question put to the panel:\n{prompt}\n"]
    for result in answered:
        parts.append(f"--- Answer from {result.name} ({result.model}) ---\n{result.answer}\n")
    if missing:
        parts.append(
            "Note: these panel members gave no answer, so the synthesis is partial: "
            + ", ".join(missing)
            + ". Say so in one sentence at the start."
        )
    parts.extend(notes)
    parts.append("Write the synthesis now.")
    return [
        {"role": "system", "content": instructions},
        {"role": "user", "content": "\n".join(parts)},
    ]


def map_format(names: Sequence[str]) -> dict[str, object]:
    """The agreement map's structured output; stances and points name a persona."""
    name: JsonObject = {"type": "string", "enum": list(names) or ["?"]}
    strings: JsonObject = {"type": "array", "items": {"type": "string"}}

    def record(**properties: JsonObject) -> JsonObject:
        return {
            "type": "object",
            "properties": dict(properties),
            "required": list(properties),
            "additionalProperties": False,
        }

    stance = record(name=name, stance={"type": "string"})
    contradiction = record(topic={"type": "string"}, stances={"type": "array", "items": stance})
    unique = record(name=name, points=strings)
    schema = record(
        consensus=strings,
        contradictions={"type": "array", "items": contradiction},
        unique={"type": "array", "items": unique},
        answer={"type": "string"},
    )
    return json_schema_format("agreement_map", schema)


def read_map(result: CallResult) -> tuple[AgreementMap | None, list[str]]:
    """Put the map on the synthesis' entry (``details["map"]``) and its merged answer in
    ``answer``; a reply that is no map stays as it came, and the warning says so. Done once:
    a synthesis kept from an earlier run already has its map."""
    if result.status != "ok":
        return None, ["no agreement map: the synthesis failed"]
    stored = result.details.get("map")
    if isinstance(stored, Mapping):
        return _agreement(stored), []
    found = parse_object(result.answer)
    agreement = _agreement(found) if found is not None else None
    if agreement is None:
        result.details["map"] = None
        return None, ["no agreement map: the reply was not one (shown as is)"]
    result.details["map"] = _map_entry(agreement)
    answer = found.get("answer") if found is not None else None
    if isinstance(answer, str) and answer.strip():
        result.answer = answer.strip()
    return agreement, []


def _map_entry(agreement: AgreementMap) -> JsonObject:
    return {
        "consensus": list(agreement.consensus),
        "contradictions": [
            {"topic": c.topic, "stances": dict(c.stances)} for c in agreement.contradictions
        ],
        "unique": {name: list(points) for name, points in agreement.unique.items()},
    }


def _agreement(found: Mapping[str, object]) -> AgreementMap | None:
    """``{consensus, contradictions: [{topic, stances: {name: stance}}], unique: {name:
    [points]}}`` from the reply, taking stances and points as lists or as mappings."""
    if not any(k in found for k in ("consensus", "contradictions", "unique")):
        return None
    consensus = [str(p) for p in _list(found.get("consensus"))]
    contradictions = []
    for item in _list(found.get("contradictions")):
        if isinstance(item, Mapping):
            stances = {k: str(v) for k, v in _by_name(item.get("stances"), "stance").items()}
            contradictions.append(Contradiction(str(item.get("topic", "")), stances))
    unique: dict[str, list[str]] = {}
    for name, points in _by_name(found.get("unique"), "points").items():
        unique[name] = [str(p) for p in _list(points)] if not isinstance(points, str) else [points]
    return AgreementMap(consensus, contradictions, unique)


def _list(value: object) -> list[object]:
    return list(value) if isinstance(value, list) else []


def _by_name(value: object, field_name: str) -> dict[str, object]:
    """``[{name, <field>}]`` or ``{name: <field>}`` as ``{name: <field>}``."""
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items()}
    pairs = [v for v in _list(value) if isinstance(v, Mapping) and "name" in v]
    return {str(p["name"]): p.get(field_name) for p in pairs}
