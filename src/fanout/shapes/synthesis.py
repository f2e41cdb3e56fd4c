"""The synthesis stage: one synthesizer merges the answers of an earlier stage into one.

It is the model for every stage that works on earlier answers: it reads them from the context,
builds its call (or skips it, with a reason, when there is nothing to work on) and records what
it was built from in the call's ``details``.

With ``map``, the synthesis is an agreement map: structured output with the points every answer
agrees on, the contradictions (each persona's stance), the points only one persona made, and the
merged answer. The map goes on the call's entry (``synthesis.map``); its answer is the merged
text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fanout.conversation import role_prompt
from fanout.engine import RunContext
from fanout.models import AgentError, Call, CallResult, Message
from fanout.shapes.structured import json_schema_format, parse_object

MAP_BRIEF = (
    "Write an agreement map of the answers as JSON: consensus (the points every answer agrees "
    "on), contradictions (each topic they disagree on, with every persona's stance on it by "
    "name), unique (points only one persona made, by persona), and answer (the merged answer, "
    "in prose)."
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
        details = {
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

    def verdict(self, context: RunContext, results: Sequence[CallResult]) -> dict[str, Any] | None:
        if not self.map or not results:
            return None
        return read_map(results[0])


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


def map_format(names: Sequence[str]) -> dict[str, Any]:
    """The agreement map's structured output; stances and points name a persona."""
    name = {"type": "string", "enum": list(names) or ["?"]}
    strings = {"type": "array", "items": {"type": "string"}}

    def record(**properties: Any) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": properties,
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


def read_map(result: CallResult) -> dict[str, Any]:
    """Put the map on the synthesis' entry (``details["map"]``) and its merged answer in
    ``answer``; a reply that is no map stays as it came, and the verdict says so. Done once:
    a synthesis kept from an earlier run already has its map."""
    if result.status != "ok":
        return {"map": None, "warnings": ["no agreement map: the synthesis failed"]}
    if isinstance(result.details.get("map"), dict):
        return {"map": result.details["map"], "warnings": []}
    found = parse_object(result.answer)
    agreement = _agreement(found) if found is not None else None
    if agreement is None:
        result.details["map"] = None
        return {"map": None, "warnings": ["no agreement map: the reply was not one (shown as is)"]}
    result.details["map"] = agreement
    answer = found.get("answer") if found is not None else None
    if isinstance(answer, str) and answer.strip():
        result.answer = answer.strip()
    return {"map": agreement, "warnings": []}


def _agreement(found: Mapping[str, Any]) -> dict[str, Any] | None:
    """``{consensus, contradictions: [{topic, stances: {name: stance}}], unique: {name:
    [points]}}`` from the reply, taking stances and points as lists or as mappings."""
    if not any(k in found for k in ("consensus", "contradictions", "unique")):
        return None
    consensus = [str(p) for p in _list(found.get("consensus"))]
    contradictions = []
    for item in _list(found.get("contradictions")):
        if isinstance(item, Mapping):
            stances = _by_name(item.get("stances"), "stance")
            contradictions.append({"topic": str(item.get("topic", "")), "stances": stances})
    unique: dict[str, list[str]] = {}
    for name, points in _by_name(found.get("unique"), "points").items():
        unique[name] = [str(p) for p in _list(points)] if not isinstance(points, str) else [points]
    return {"consensus": consensus, "contradictions": contradictions, "unique": unique}


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else []


def _by_name(value: Any, field: str) -> dict[str, Any]:
    """``[{name, <field>}]`` or ``{name: <field>}`` as ``{name: <field>}``."""
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items()}
    pairs = [v for v in _list(value) if isinstance(v, Mapping) and "name" in v]
    return {str(p["name"]): p.get(field) for p in pairs}
