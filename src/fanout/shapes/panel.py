"""The panel stage: every chosen persona answers the question, all at once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fanout.conversation import persona_thread
from fanout.engine import RunContext
from fanout.models import Agent, Call, CallResult, Message, chat_messages


class PanelStage:
    """One call per persona; a persona asked N times (``repeat``: ``{name: N}``, or
    ``best_of``: N for every persona) gets ``name#1`` .. ``name#N``."""

    kind = "panel"
    key: str | None = None
    roles: tuple[str, ...] = ()

    def __init__(self, stage_id: str = "panel") -> None:
        self.id = stage_id

    def calls(self, context: RunContext) -> list[Call]:
        repeat: dict[str, int] = dict(context.options.get("repeat") or {})
        every = int(context.options.get("best_of") or 1)
        response_format = self.response_format(context)
        calls = []
        for agent in context.agents:
            times = repeat.get(agent.name, every)
            names = (
                [agent.name] if times == 1 else [f"{agent.name}#{i}" for i in range(1, times + 1)]
            )
            asked = self.messages(agent, context)
            for name in names:
                # In a conversation, each persona's own thread (none outside one).
                messages, details = persona_thread(agent, name, context, asked)
                calls.append(
                    Call(
                        f"{self.id}/{name}",
                        self.id,
                        "persona",
                        name,
                        agent,
                        messages,
                        response_format=response_format,
                        details=details,
                    )
                )
        return calls

    def messages(self, agent: Agent, context: RunContext) -> list[Message]:
        """What a persona is sent (a vote adds how to answer)."""
        return chat_messages(agent, context.prompt)

    def response_format(self, context: RunContext) -> Mapping[str, Any] | None:
        """Structured output the answers must take, if any."""
        return None

    def verdict(self, context: RunContext, results: Sequence[CallResult]) -> dict[str, Any] | None:
        return None
