"""The synthesis stage: one synthesizer merges the answers of an earlier stage into one.

It is the model for every stage that works on earlier answers: it reads them from the context,
builds its call (or skips it, with a reason, when there is nothing to work on) and records what
it was built from in the call's ``details``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fanout.engine import RunContext
from fanout.models import AgentError, Call, CallResult, Message


class SynthesisStage:
    """Merge ``source``'s answers; partial (and saying so) when some have none."""

    kind = "synthesis"
    key: str | None = None
    roles = ("synthesizer",)

    def __init__(self, stage_id: str = "synthesis", source: str = "panel") -> None:
        self.id = stage_id
        self.source = source

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
        messages = synthesis_messages(agent.instructions, context.prompt, answered, missing)
        return [
            Call(
                f"{self.id}/{agent.name}",
                self.id,
                "synthesizer",
                agent.name,
                agent,
                tuple(messages),
                skip=skip,
                details=details,
            )
        ]

    def verdict(self, context: RunContext, results: Sequence[CallResult]) -> dict[str, Any] | None:
        return None


def synthesis_messages(
    instructions: str,
    prompt: str,
    answered: Sequence[CallResult],
    missing: Sequence[str],
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
    parts.append("Write the synthesis now.")
    return [
        {"role": "system", "content": instructions},
        {"role": "user", "content": "\n".join(parts)},
    ]
