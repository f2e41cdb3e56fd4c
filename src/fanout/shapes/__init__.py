"""The shapes a run can take, registered in one place.

A shape turns a request's options into a plan: a list of stages (``engine.Stage``). Adding one
is a module here plus one entry in ``SHAPES``; the engine, history, export, events and the live
view handle its calls and verdicts generically.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fanout.engine import Stage
from fanout.errors import ConfigError
from fanout.shapes.council import CouncilSynthesisStage, ReviewStage
from fanout.shapes.flow import flow_plan
from fanout.shapes.judge import JudgeStage
from fanout.shapes.orchestrate import orchestrate_plan
from fanout.shapes.panel import PanelStage
from fanout.shapes.route import route_plan
from fanout.shapes.synthesis import SynthesisStage
from fanout.shapes.vote import VoteStage, check_vote

Shape = Callable[[Mapping[str, Any]], list[Stage]]


def panel_plan(options: Mapping[str, Any]) -> list[Stage]:
    """Every persona answers; with ``synthesize``, a synthesizer merges the answers (with
    ``map`` too, into an agreement map)."""
    return [PanelStage(), *_synthesis(options)]


def vote_plan(options: Mapping[str, Any]) -> list[Stage]:
    """Every persona votes (``choices``, ``quorum``); the tally is the ``vote`` verdict."""
    check_vote(options)
    return [VoteStage(), *_synthesis(options)]


def judge_plan(options: Mapping[str, Any]) -> list[Stage]:
    """The panel answers (``repeat``/``best_of`` for several tries); a blind judge picks one."""
    return [PanelStage(), JudgeStage(), *_synthesis(options)]


def council_plan(options: Mapping[str, Any]) -> list[Stage]:
    """The panel answers, each persona ranks the others blind (Borda count), then the
    synthesizer writes the final answer seeing the ranking."""
    return [
        PanelStage(),
        ReviewStage(),
        CouncilSynthesisStage(agreement_map=bool(options.get("map"))),
    ]


def _synthesis(options: Mapping[str, Any]) -> list[Stage]:
    if options.get("synthesize") or options.get("map"):
        return [SynthesisStage(agreement_map=bool(options.get("map")))]
    return []


SHAPES: dict[str, Shape] = {
    "panel": panel_plan,
    "flow": flow_plan,  # the stages of a flow file (fanout flow run)
    "route": route_plan,  # a router picks the personas (fanout ask --route)
    "orchestrate": orchestrate_plan,  # personas as tools (fanout ask --orchestrate)
    "vote": vote_plan,
    "judge": judge_plan,
    "council": council_plan,
}


def build_plan(shape: str, options: Mapping[str, Any]) -> list[Stage]:
    """The stages of ``shape`` with ``options``; ConfigError for a shape nobody registered."""
    try:
        make = SHAPES[shape]
    except KeyError:
        known = ", ".join(sorted(SHAPES))
        raise ConfigError(f"unknown shape {shape!r} (known: {known})") from None
    return make(options)


def roles_of(stages: Sequence[Stage]) -> list[str]:
    """The roles beside the personas a plan needs (``synthesizer``, ``judge``...)."""
    needed: list[str] = []
    for stage in stages:
        for role in getattr(stage, "roles", ()):
            if role not in needed:
                needed.append(role)
    return needed
