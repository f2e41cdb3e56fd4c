"""The route shape (``fanout ask --route``): a router picks the personas worth asking, then only
they answer.

The router is one call with structured output: an array whose items are an enum of the
panel's names (1 to ``route_max`` of them) and a reason. Its stage's verdict (key ``router``)
is ``{selected, reason, fallback}``; the panel stage after it reads the verdict from the
context. A name the router made up is dropped; a failed or empty routing falls back to the
whole panel and says so.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from fanout.conversation import role_prompt
from fanout.cost import DEFAULT_COMPLETION_ESTIMATE, PlannedCall, Pricing, most_tokens
from fanout.engine import RunContext, Stage
from fanout.models import Agent, Call, CallResult, Message
from fanout.shapes.panel import PanelStage
from fanout.shapes.synthesis import SynthesisStage

ROUTER_STAGE = "router"


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

    def verdict(self, context: RunContext, results: Sequence[CallResult]) -> dict[str, Any] | None:
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
        return {"selected": selected, "reason": reason, "fallback": False}


class RoutedPanelStage(PanelStage):
    """The panel stage, asking only the personas the router selected."""

    def calls(self, context: RunContext) -> list[Call]:
        routed = context.stages.get(ROUTER_STAGE)
        verdict = routed.verdict if routed is not None else None
        chosen = set(verdict.get("selected") or []) if verdict else set()
        agents = [a for a in context.agents if a.name in chosen] or list(context.agents)
        return super().calls(replace(context, agents=agents))


def route_plan(options: Mapping[str, Any]) -> list[Stage]:
    """The router, the panel it picks and, with ``synthesize``, a synthesis of their answers."""
    stages: list[Stage] = [RouterStage(), RoutedPanelStage()]
    if options.get("synthesize") or options.get("map"):
        stages.append(SynthesisStage(agreement_map=bool(options.get("map"))))
    return stages


def route_max(options: Mapping[str, Any], panel_size: int) -> int:
    given = options.get("route_max")
    return max(1, min(int(given), panel_size)) if given else max(1, panel_size)


def route_schema(names: Sequence[str], most: int) -> dict[str, Any]:
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
        data = json.loads(text[start : end + 1]) if start >= 0 else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return [], ""
    picked = data.get("personas")
    names = [p for p in picked if isinstance(p, str)] if isinstance(picked, list) else []
    reason = data.get("reason")
    return names, reason if isinstance(reason, str) else ""


def planned_router_call(
    router: Agent, question: str, agents: Sequence[Agent], most: int, pricing: Pricing
) -> PlannedCall:
    """``--dry-run``: the router's call (its answer is a short list: ``max_tokens`` bounds it)."""
    tokens = most_tokens(router_messages(router, question, agents, most))
    answer = router.max_tokens or DEFAULT_COMPLETION_ESTIMATE
    worst = pricing.worst_case(router.model, tokens, answer)
    return PlannedCall(router, tokens, router.max_tokens, worst)


def _everyone(names: Sequence[str], reason: str) -> dict[str, Any]:
    return {"selected": list(names), "reason": reason, "fallback": True}
