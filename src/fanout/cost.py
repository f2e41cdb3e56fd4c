"""What calls cost, and the budget a run may not exceed.

Prices are USD per million tokens, from the table shipped with fanout (``pricing.json``) with
the agents file's ``pricing:`` on top. A model with no known price costs "unknown", never a
guess. With ``--max-cost``, every call reserves its worst case (estimated prompt tokens at the
input price plus ``max_tokens`` at the output price) before it is made, and the reservation is
replaced by the real cost once the usage is known; a call whose worst case does not fit in what
is left is not made.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources

import anyio

from fanout.errors import ConfigError
from fanout.models import Agent, Usage

PER = 1_000_000
_CENT_FRACTION = 1e-12  # float noise, far below any price
DEFAULT_COMPLETION_ESTIMATE = 1024  # answer tokens assumed when max_tokens is not set


def estimate_tokens(messages: Sequence[Mapping[str, str]]) -> int:
    """A cheap guess (4 characters a token, plus framing) of a prompt's tokens, for the TPM
    limiter, which corrects it with the real usage afterwards."""
    return sum(len(m["content"]) // 4 + 4 for m in messages) + 3


def most_tokens(messages: Sequence[Mapping[str, str]]) -> int:
    """A bound no tokenizer exceeds (a token is at least one UTF-8 byte), for ``--max-cost``:
    4 characters a token is far too few for Chinese or Japanese text."""
    return sum(len(m["content"].encode("utf-8")) + 4 for m in messages) + 3


@dataclass(frozen=True)
class Price:
    """USD per million input and output tokens."""

    input: float
    output: float

    def cost(self, usage: Usage) -> float:
        return (usage.input_tokens * self.input + usage.output_tokens * self.output) / PER


@functools.cache
def _shipped_prices() -> dict[str, Price]:
    """pricing.json, read once per process (a server resolves a plan per request)."""
    data = json.loads(resources.files("fanout").joinpath("pricing.json").read_text())
    return {name: Price(**p) for name, p in data["models"].items()}


class Pricing:
    """Model name -> price; a dated snapshot (``gpt-4o-2024-08-06``) takes its base's price."""

    def __init__(self, prices: Mapping[str, Price]) -> None:
        self._prices = dict(prices)

    @classmethod
    def shipped(cls, overrides: Mapping[str, Price] | None = None) -> Pricing:
        """The table shipped with fanout, with ``overrides`` (the agents file's) on top."""
        prices = dict(_shipped_prices())
        prices.update(overrides or {})
        return cls(prices)

    def price(self, model: str) -> Price | None:
        if model in self._prices:
            return self._prices[model]
        # The longest known name the model extends with a "-suffix" (a dated snapshot).
        bases = [n for n in self._prices if model.startswith(n + "-")]
        return self._prices[max(bases, key=len)] if bases else None

    def cost(self, model: str, usage: Usage) -> float | None:
        price = self.price(model)
        return None if price is None else price.cost(usage)

    def worst_case(self, model: str, prompt_tokens: int, max_tokens: int) -> float | None:
        """The most one call can cost: its prompt plus ``max_tokens`` of answer."""
        return self.cost(model, Usage(prompt_tokens, max_tokens, prompt_tokens + max_tokens))


def check_prices(callers: Sequence[Agent], pricing: Pricing) -> None:
    """``--max-cost`` bounds what a run may spend, so every model it calls needs a price:
    one ``ConfigError`` before any call, naming the models and how to give them one."""
    unknown: dict[str, list[str]] = {}
    for agent in callers:
        if pricing.price(agent.model) is None:
            unknown.setdefault(agent.model, []).append(agent.name)
    if not unknown:
        return

    def who(names: list[str]) -> str:
        return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")

    models = "; ".join(f"{model} ({who(names)})" for model, names in unknown.items())
    example = next(iter(unknown))
    raise ConfigError(
        f"--max-cost: no price is known for {models}, so the budget cannot bound the run: "
        f"give it one in the agents file (pricing: {{{example}: {{input: 0.15, output: 0.6}}}}, "
        "USD per million tokens), or leave out --max-cost"
    )


class Budget:
    """``--max-cost``: reservations and spending never add up past ``limit_usd``.

    A call that does not fit waits while other calls hold reservations (they usually cost less
    than their worst case), and is refused only when nothing is left in flight to free room.
    """

    def __init__(self, limit_usd: float) -> None:
        self.limit_usd = limit_usd
        self.spent_usd = 0.0
        self.reserved_usd = 0.0
        self._settled = anyio.Event()

    @property
    def left_usd(self) -> float:
        return self.limit_usd - self.spent_usd - self.reserved_usd

    async def reserve(self, amount_usd: float) -> bool:
        """Hold ``amount_usd`` for one call once it fits; False if it never can."""
        while amount_usd > self.left_usd + _CENT_FRACTION:
            if self.reserved_usd <= _CENT_FRACTION:
                return False
            await self._settled.wait()
        self.reserved_usd += amount_usd
        return True

    def settle(self, reserved_usd: float, spent_usd: float) -> None:
        """The call is over: release its reservation and count what it really cost."""
        self.reserved_usd = max(self.reserved_usd - reserved_usd, 0.0)
        self.spent_usd += spent_usd
        self._settled.set()
        self._settled = anyio.Event()


@dataclass(frozen=True)
class PlannedCall:
    """One call a run would make, for ``--dry-run``."""

    agent: Agent
    prompt_tokens: int  # at most
    max_tokens: int | None  # as it would be sent
    worst_case_usd: float | None  # None: price unknown
    name: str = ""  # the call's name (``translator#2``); "" means the agent's
    stage: str = "panel"
    role: str = "persona"


def planned_call(
    agent: Agent,
    messages: Sequence[Mapping[str, str]],
    pricing: Pricing,
    *,
    name: str = "",
    stage: str = "panel",
    role: str = "persona",
) -> PlannedCall:
    """One call with its prompt bounded (``most_tokens``) and its worst-case cost."""
    prompt_tokens = most_tokens(messages)
    answer = agent.max_tokens or DEFAULT_COMPLETION_ESTIMATE
    worst = pricing.worst_case(agent.model, prompt_tokens, answer)
    return PlannedCall(agent, prompt_tokens, agent.max_tokens, worst, name, stage, role)


def plan_worst_case(calls: Sequence[PlannedCall]) -> float | None:
    """The worst case of every call together; ``None`` when a price is unknown."""
    costs = [c.worst_case_usd for c in calls]
    return None if None in costs else sum(c or 0.0 for c in costs)


def plan_fits(calls: Sequence[PlannedCall], max_cost: float | None) -> bool | None:
    """Whether the whole plan fits ``--max-cost`` even at its worst (``None``: no budget).
    A call of unknown price cannot be bounded, so it never fits: the run would skip it."""
    if max_cost is None:
        return None
    worst = plan_worst_case(calls)
    return worst is not None and worst <= max_cost
