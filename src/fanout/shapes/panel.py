"""The panel stage: every chosen persona answers the question, all at once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fanout.engine import RunContext
from fanout.models import Call, CallResult, chat_messages


class PanelStage:
    """One call per persona; a persona asked N times (``repeat``) gets ``name#1`` .. ``name#N``."""

    kind = "panel"
    key: str | None = None
    roles: tuple[str, ...] = ()

    def __init__(self, stage_id: str = "panel") -> None:
        self.id = stage_id

    def calls(self, context: RunContext) -> list[Call]:
        repeat: dict[str, int] = dict(context.options.get("repeat") or {})
        calls = []
        for agent in context.agents:
            times = repeat.get(agent.name, 1)
            names = (
                [agent.name] if times == 1 else [f"{agent.name}#{i}" for i in range(1, times + 1)]
            )
            messages = tuple(chat_messages(agent, context.prompt))
            for name in names:
                calls.append(Call(f"{self.id}/{name}", self.id, "persona", name, agent, messages))
        return calls

    def verdict(self, context: RunContext, results: Sequence[CallResult]) -> dict[str, Any] | None:
        return None
