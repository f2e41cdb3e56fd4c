"""Merging the panel's answers into one: the prompt the synthesizer gets."""

from __future__ import annotations

from collections.abc import Sequence

from fanout.models import AgentResult, Message


def synthesis_messages(
    instructions: str,
    prompt: str,
    answered: Sequence[AgentResult],
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
