"""The panel stage: every chosen persona answers the question, all at once."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from fanout.conversation import persona_thread
from fanout.models import Agent, Call, CallResult, Message, chat_messages
from fanout.shapes.options import BEST_OF, PANEL_OPTIONS, REPEAT, Options
from fanout.shapes.shape import Shape, Step
from fanout.shapes.synthesis import SynthesisStage, synthesis_after
from fanout.summary import Verdict

if TYPE_CHECKING:
    from fanout.engine import RunContext, Stage


PANEL_STAGE = "panel"  # a panel stage's id: its calls are panel/<name>


class PanelStage:
    """One call per persona; a persona asked N times (``repeat``: ``{name: N}``, or
    ``best_of``: N for every persona) gets ``name#1`` .. ``name#N``."""

    kind = "panel"
    key: str | None = None
    roles: tuple[str, ...] = ()
    holds_answers = True

    def __init__(self, stage_id: str = PANEL_STAGE) -> None:
        self.id = stage_id

    def calls(self, context: RunContext) -> list[Call]:
        repeat = REPEAT.of(context.options) or {}
        every = BEST_OF.of(context.options) or 1
        response_format = self.response_format(context)
        read = self.reader(context)
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
                        read=read,
                    )
                )
        return calls

    def messages(self, agent: Agent, context: RunContext) -> list[Message]:
        """What a persona is sent (a vote adds how to answer)."""
        return chat_messages(agent, context.prompt)

    def response_format(self, context: RunContext) -> Mapping[str, object] | None:
        """Structured output the answers must take, if any."""
        return None

    def reader(self, context: RunContext) -> Callable[[CallResult], object] | None:
        """How a reply is read into its result (a vote's ``{"choice": ...}`` as the choice)."""
        return None

    def verdict(self, context: RunContext, results: Sequence[CallResult]) -> Verdict | None:
        return None


def panel_plan(options: Options) -> list[Stage]:
    """Every persona answers; with ``synthesize``, a synthesizer merges the answers (with
    ``map`` too, into an agreement map)."""
    return [PanelStage(), *synthesis_after(options)]


def _then_synthesize(source: str, stage_id: str, options: Options) -> list[Stage]:
    return [SynthesisStage(stage_id, source)]


SHAPE = Shape(
    "panel",
    "Every persona answers at once; with synthesize, one answer merged from them all.",
    panel_plan,
    options=PANEL_OPTIONS,
    steps=(Step("synthesize", "synthesis", _then_synthesize),),
    example='fanout ask -a physicist,chemist --synthesize "Why is ice slippery?"',
    order=0,
)
