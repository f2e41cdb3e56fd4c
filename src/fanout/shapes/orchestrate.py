"""The orchestrate shape (``fanout ask --orchestrate``): personas as tools of one orchestrator.

The orchestrator gets one function per persona (``ask_<name>``, described by the persona's
``description``, one string argument ``question``). A turn is a stage with its one call; when
it asks for functions, the next stage (``tools<n>``) makes those calls, all at once, through the
engine like any persona's, and the turn after it sees their answers as tool results. The loop
is a plan that grows (``follow``): each turn adds the stages after it, until the orchestrator
answers or ``max_turns`` is reached; then the ``answer`` stage (key ``output``) holds its
answer. A carried-on run replays the turns from the recorded calls (the function calls are
kept in each turn's call entry as ``tool_calls``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from fanout.conversation import persona_thread
from fanout.cost import DEFAULT_COMPLETION_ESTIMATE
from fanout.models import Agent, AgentError, Call, CallResult, Message, chat_messages
from fanout.shapes.options import SEED, Options, Whole
from fanout.shapes.output import OutputVerdict
from fanout.shapes.shape import Shape
from fanout.summary import Summary, Verdict
from fanout.untrusted import load_json

if TYPE_CHECKING:
    from fanout.engine import RunContext, Stage

DEFAULT_MAX_TURNS = 4
MAX_TURNS = Whole(
    "max_turns", "At most this many turns (up to 50; default 4).", flag="--max-turns",
    metavar="N", low=1, high=50, default=DEFAULT_MAX_TURNS,
)  # fmt: skip
TOOL_PREFIX = "ask_"
TOOL_NAME_MAX = 64  # the API's bound on a function's name
_NOT_IN_TOOL_NAME = re.compile(r"[^A-Za-z0-9_-]")  # nor what it may hold
LAST_TURN = "This is your last turn: write your final answer now, without calling tools."


@dataclass(frozen=True)
class TurnVerdict(Verdict):
    """One turn of the orchestrator: whom it asked (its tool calls), or that it answered."""

    type: ClassVar[str] = "orchestrator"
    legacy: ClassVar[tuple[str, ...]] = ("orchestrator",)
    turn: int = 1
    tool_calls: list[str] = field(default_factory=list)
    answered: bool = False

    def summary(self) -> Summary:
        asked = [name.removeprefix(TOOL_PREFIX) for name in self.tool_calls]
        if asked:
            return Summary("Orchestrator", f"asked {', '.join(asked)}")
        return Summary("Orchestrator", "answered" if self.answered else "no answer")


class OrchestratorTurn:
    """Turn ``n``: the orchestrator reads the conversation so far and answers or calls tools."""

    kind = "orchestrator"
    key: str | None = "orchestrator"
    roles = ("orchestrator",)

    def __init__(self, turn: int) -> None:
        self.turn = turn
        self.id = f"turn{turn}"

    def calls(self, context: RunContext) -> list[Call]:
        agent = context.roles["orchestrator"]
        messages = conversation(agent, context, self.turn)
        if self.turn >= max_turns(context.options):
            messages.append({"role": "user", "content": LAST_TURN})
        return [
            Call(
                f"{self.id}/{agent.name}",
                self.id,
                "orchestrator",
                agent.name,
                agent,
                tuple(messages),
                tools=tuple(persona_tools(context.agents)),
            )
        ]

    def verdict(self, context: RunContext, results: Sequence[CallResult]) -> TurnVerdict:
        result = results[0] if results else None
        asked = [c["name"] for c in _tool_calls(result)]
        return TurnVerdict(self.turn, asked, _answered(result))

    def longest_answer(self, call: Call) -> CallResult:
        """``--dry-run``'s worst case for a turn: every persona asked (the next turn then sees
        every answer), until the last turn, which must answer."""
        result = CallResult.of(call)
        result.status = "ok"

        bound = call.agent.max_tokens or DEFAULT_COMPLETION_ESTIMATE
        result.answer = "x" * bound
        names = [_function_name(t) for t in call.tools or ()]
        question = json.dumps({"question": "x" * (bound // max(len(names), 1))})
        result.details["tool_calls"] = [
            {"id": f"planned-{i}", "name": name, "arguments": question}
            for i, name in enumerate(names)
        ]
        return result

    def follow(self, context: RunContext) -> list[Stage]:
        """The tools it asked for and the next turn; or, once it answered, the answer."""
        stage = context.stages.get(self.id)
        result = stage.calls[0] if stage and stage.calls else None
        if _tool_calls(result) and self.turn < max_turns(context.options):
            return [ToolStage(self.turn), OrchestratorTurn(self.turn + 1)]
        return [AnswerStage(self.id)]


class ToolStage:
    """The persona calls of one turn, all at once; each answers the question it was given."""

    kind = "tools"
    key: str | None = None
    roles: tuple[str, ...] = ()
    holds_answers = True

    def __init__(self, turn: int) -> None:
        self.turn = turn
        self.id = f"tools{turn}"

    def calls(self, context: RunContext) -> list[Call]:
        agents = tool_names(context.agents)
        turn = context.stages[f"turn{self.turn}"].calls[0]
        calls: list[Call] = []
        seen: dict[str, int] = {}
        for tool_call in _tool_calls(turn):
            agent = agents.get(tool_call["name"])
            name = agent.name if agent else tool_call["name"]
            seen[name] = seen.get(name, 0) + 1
            label = name if seen[name] == 1 else f"{name}#{seen[name]}"
            question, problem = _question(tool_call["arguments"])
            if agent is None:
                problem = f"no tool {tool_call['name']!r}"
            calls.append(
                Call(
                    f"{self.id}/{label}",
                    self.id,
                    "persona",
                    label,
                    agent or context.roles["orchestrator"],
                    tuple(chat_messages(agent, question)) if agent else (),
                    skip=AgentError("bad_tool_call", problem) if problem else None,
                    details={"tool_call_id": tool_call["id"], "question": question},
                )
            )
        return calls

    def verdict(self, context: RunContext, results: Sequence[CallResult]) -> Verdict | None:
        return None


class AnswerStage:
    """Makes no call: the orchestrator's answer is the run's ``output``."""

    id = "answer"
    kind = "output"
    key: str | None = "output"
    roles: tuple[str, ...] = ()
    makes_calls = False

    def __init__(self, last_turn: str) -> None:
        self.last_turn = last_turn

    def calls(self, context: RunContext) -> list[Call]:
        return []

    def verdict(self, context: RunContext, results: Sequence[CallResult]) -> OutputVerdict:
        stage = context.stages.get(self.last_turn)
        result = stage.calls[0] if stage and stage.calls else None
        if result is None or not _answered(result) or result.answer is None:
            return OutputVerdict()
        return OutputVerdict({result.name: result.answer})


def orchestrate_plan(options: Options) -> list[Stage]:
    """The first turn; the rest of the plan grows from the orchestrator's answers."""
    return [OrchestratorTurn(1)]


def max_turns(options: Options) -> int:
    return max(1, MAX_TURNS.of(options) or DEFAULT_MAX_TURNS)


def _function_name(tool: Mapping[str, object]) -> str:
    function = tool.get("function")
    return str(function.get("name")) if isinstance(function, Mapping) else ""


def tool_names(agents: Sequence[Agent]) -> dict[str, Agent]:
    """Each persona's function, ``ask_<name>``, by a name the API takes (letters, digits, ``_``
    and ``-``, at most 64): one cut or changed to fit gets a number if another persona's already
    has it, so the calls the orchestrator makes map back to one persona each."""
    named: dict[str, Agent] = {}
    for agent in agents:
        whole = _NOT_IN_TOOL_NAME.sub("_", f"{TOOL_PREFIX}{agent.name}")
        name, number = whole[:TOOL_NAME_MAX], 1
        while name in named:
            number += 1
            suffix = f"_{number}"
            name = whole[: TOOL_NAME_MAX - len(suffix)] + suffix
        named[name] = agent
    return named


def persona_tools(agents: Sequence[Agent]) -> list[dict[str, object]]:
    """One function per persona: ``ask_<name>(question)``."""
    return [
        {
            "type": "function",
            "function": {
                "name": name,
                "description": a.description or f"Ask the {a.name}.",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "question": {"type": "string", "description": "What to ask them."}
                    },
                    "required": ["question"],
                    "additionalProperties": False,
                },
            },
        }
        for name, a in tool_names(agents).items()
    ]


def conversation(agent: Agent, context: RunContext, turn: int) -> list[Message]:
    """The orchestrator's messages at ``turn``: the question, then each earlier turn's
    function calls and their results."""
    # In a conversation, its earlier questions and its own answers to them come first.
    asked = chat_messages(agent, context.prompt)
    thread, _ = persona_thread(agent, agent.name, context, asked, writes_reply=True)
    messages = list(thread)
    for earlier in range(1, turn):
        stage = context.stages.get(f"turn{earlier}")
        result = stage.calls[0] if stage and stage.calls else None
        calls = _tool_calls(result)
        if not calls:
            continue
        messages.append(
            {
                "role": "assistant",
                "content": result.answer if result and result.answer else "",
                "tool_calls": [
                    {
                        "id": c["id"],
                        "type": "function",
                        "function": {"name": c["name"], "arguments": c["arguments"]},
                    }
                    for c in calls
                ],
            }
        )
        tools = context.stages.get(f"tools{earlier}")
        by_id = {r.details.get("tool_call_id"): r for r in (tools.calls if tools else [])}
        for c in calls:
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": c["id"],
                    "content": _tool_result(by_id.get(c["id"])),
                }
            )
    return messages


def _tool_result(result: CallResult | None) -> str:
    if result is not None and result.status == "ok":
        return result.answer or ""
    why = result.error.message if result and result.error else "no answer"
    return f"[no answer: {why}]"


def _tool_calls(result: CallResult | None) -> list[dict[str, str]]:
    if result is None or result.status != "ok":
        return []
    calls = result.details.get("tool_calls")
    return [c for c in calls if isinstance(c, dict)] if isinstance(calls, list) else []


def _answered(result: CallResult | None) -> bool:
    return bool(result and result.status == "ok" and result.answer and not _tool_calls(result))


def _question(arguments: str) -> tuple[str, str | None]:
    """The ``question`` argument, or why there is none."""
    try:
        data = load_json(arguments or "{}")
    except ValueError:  # not JSON, or too long or deep to be a question
        return "", "its arguments are not JSON"
    question = data.get("question") if isinstance(data, dict) else None
    if not isinstance(question, str) or not question.strip():
        return "", "no question given"
    return question, None


SHAPE = Shape(
    "orchestrate",
    "An orchestrator answers, asking the personas as tools (ask_<name>), several at once, as "
    "it sees fit.",
    orchestrate_plan,
    options=(SEED, MAX_TURNS),
    flag="--orchestrate",
    roles=("orchestrator",),
    answers=("tools",),
    example='fanout ask --orchestrate "Plan a trip to Mars"',
    order=60,
)
