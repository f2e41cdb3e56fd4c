"""The route shape (``fanout ask --route``): a router picks the personas worth asking, then only
they answer.

The router is one call with structured output: an array whose items are an enum of the
panel's names (1 to ``route_max`` of them) and a reason. Its stage's verdict (key ``router``)
is whom it selected and why, said in words; the panel stage after it reads the verdict from
the context. A name the router made up is dropped; a failed or empty routing falls back to the
whole panel and says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, ClassVar

from fanout.conversation import role_prompt
from fanout.models import Agent, Call, CallResult, Message
from fanout.shapes.options import PANEL_OPTIONS, Options, Whole
from fanout.shapes.panel import PanelStage
from fanout.shapes.shape import Shape
from fanout.shapes.synthesis import synthesis_after
from fanout.summary import Row, Rows, Summary, Verdict
from fanout.untrusted import load_json

if TYPE_CHECKING:
    from fanout.engine import RunContext, Stage

ROUTER_STAGE = "router"
ROUTE_MAX = Whole(
    "route_max", "Pick at most this many personas (up to 1,000).", flag="--route-max",
    metavar="N", low=1, high=1000,
)  # fmt: skip


@dataclass(frozen=True)
class RouterVerdict(Verdict):
    """Whom the router selected and why; ``fallback``: it gave no usable choice, so the whole
    panel was asked (``reason`` says why)."""

    type: ClassVar[str] = "router"
    legacy: ClassVar[tuple[str, ...]] = ("router",)
    selected: list[str] = field(default_factory=list)
    reason: str = ""
    fallback: bool = False

    def summary(self) -> Summary:
        names = ", ".join(self.selected) or "nobody"
        if self.fallback:
            return Summary(
                "Router",
                f"Asked the whole panel ({names})",
                warnings=(self.reason,) if self.reason else (),
            )
        why = f": {self.reason}" if self.reason else " (it gave no reason)"
        picked = tuple(Row(name, marked=True) for name in self.selected)
        return Summary(
            "Router", f"The router asked {names}{why}", rows=(Rows("points", "Asked", picked),)
        )


class RouterStage:
    """One call: which personas should answer this question?"""

    id = ROUTER_STAGE
    kind = "router"
    key: str | None = "router"
    roles = ("router",)

    def calls(self, context: RunContext) -> list[Call]:
        agent = context.roles["router"]
        names = [a.name for a in context.agents]
        most = route_max(context.options, len(names))
        return [
            Call(
                f"{self.id}/{agent.name}",
                self.id,
                "router",
                agent.name,
                agent,
                tuple(router_messages(agent, role_prompt(context, agent), context.agents, most)),
                response_format=route_schema(names, most),
            )
        ]

    def verdict(self, context: RunContext, results: Sequence[CallResult]) -> RouterVerdict:
        names = [a.name for a in context.agents]
        most = route_max(context.options, len(names))
        result = results[0] if results else None
        if result is None or result.status != "ok":
            why = result.error.message if result and result.error else "the router gave no answer"
            return _everyone(names, f"routing failed ({why}): the whole panel is asked")
        picked, reason = parse_route(result.answer or "")
        selected = [n for n in dict.fromkeys(picked) if n in names][:most]
        if not selected:
            return _everyone(names, "the router picked no persona of the panel: all are asked")
        return RouterVerdict(selected, reason.strip())


class RoutedPanelStage(PanelStage):
    """The panel stage, asking only the personas the router selected."""

    def calls(self, context: RunContext) -> list[Call]:
        routed = context.stages.get(ROUTER_STAGE)
        verdict = routed.verdict if routed is not None else None
        chosen = set(verdict.selected) if isinstance(verdict, RouterVerdict) else set()
        agents = [a for a in context.agents if a.name in chosen] or list(context.agents)
        return super().calls(replace(context, agents=agents))


def route_plan(options: Options) -> list[Stage]:
    """The router, the panel it picks and, with ``synthesize``, a synthesis of their answers."""
    return [RouterStage(), RoutedPanelStage(), *synthesis_after(options)]


def route_max(options: Options, panel_size: int) -> int:
    given = ROUTE_MAX.of(options)
    return max(1, min(given, panel_size)) if given else max(1, panel_size)


def route_schema(names: Sequence[str], most: int) -> dict[str, object]:
    """Structured output: 1 to ``most`` persona names from the panel, and why."""
    return {
        "type": "json_schema",
        "json_schema": {
            "name": "route",
            "strict": True,
            "schema": {
                "type": "object",
                "properties": {
                    "personas": {
                        "type": "array",
                        "items": {"type": "string", "enum": list(names)},
                        "minItems": 1,
                        "maxItems": most,
                    },
                    "reason": {"type": "string"},
                },
                "required": ["personas", "reason"],
                "additionalProperties": False,
            },
        },
    }


def router_messages(
    router: Agent, question: str, agents: Sequence[Agent], most: int
) -> list[Message]:
    panel = "\n".join(f"- {a.name}: {a.description or '(no description)'}" for a in agents)
    ask = (
        f"Question:\n{question}\n\nThe panel:\n{panel}\n\n"
        f"Pick 1 to {most} of these personas to answer the question, and give your reason. "
        'Answer as JSON: {"personas": [names], "reason": "..."}.'
    )
    return [{"role": "system", "content": router.instructions}, {"role": "user", "content": ask}]


def parse_route(answer: str) -> tuple[list[str], str]:
    """The names and reason of a routing answer; nothing for an answer that is not one (a
    server without structured output may wrap the JSON in prose or a code fence)."""
    text = answer.strip()
    start, end = text.find("{"), text.rfind("}")
    try:
        data = load_json(text[start : end + 1]) if start >= 0 else None
    except ValueError:  # not JSON, or too long or deep to be a routing
        data = None
    if not isinstance(data, dict):
        return [], ""
    picked = data.get("personas")
    names = [p for p in picked if isinstance(p, str)] if isinstance(picked, list) else []
    reason = data.get("reason")
    return names, reason if isinstance(reason, str) else ""


def _everyone(names: Sequence[str], reason: str) -> RouterVerdict:
    return RouterVerdict(list(names), reason, fallback=True)


SHAPE = Shape(
    "route",
    "A router picks the personas worth asking from their descriptions; only those answer.",
    route_plan,
    options=(*PANEL_OPTIONS, ROUTE_MAX),
    flag="--route",
    roles=("router",),
    example='fanout ask --route "Why is the sky blue?"',
    order=50,
)
