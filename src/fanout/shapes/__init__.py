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
from fanout.models import Agent
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


# The options each shape reads; any other is a mistake worth one line, not a silent no-op.
_PANEL_OPTIONS = ("synthesize", "map", "seed", "best_of", "repeat")
SHAPE_OPTIONS: dict[str, tuple[str, ...]] = {
    "panel": _PANEL_OPTIONS,
    "flow": ("synthesize", "seed", "flow", "inputs"),
    "route": (*_PANEL_OPTIONS, "route_max"),
    "orchestrate": ("seed", "max_turns"),  # it writes the answer: no synthesis
    "vote": (*_PANEL_OPTIONS, "choices", "quorum"),
    "judge": _PANEL_OPTIONS,
    "council": _PANEL_OPTIONS,
}


# How many answers a shape needs to mean anything: a council's reviewers each rank the others'
# answers, and ranking fewer than two is no ranking.
SHAPE_MIN_ANSWERS: dict[str, tuple[int, str]] = {
    "council": (3, "each persona ranks the others' answers, at least two of them"),
}


def check_plan(shape: str, options: Mapping[str, Any], agents: Sequence[Agent]) -> None:
    """ConfigError for what ``options`` say about the personas asked: a name in ``repeat``
    or in a flow that is not among them, or too few answers for ``shape``."""
    names = [a.name for a in agents]
    repeat = options.get("repeat") or {}
    for name in repeat:
        if name not in names:
            raise ConfigError(
                f"options: repeat: {name!r} is not one of the personas asked "
                f"({', '.join(names)}){_closest(name, names)}"
            )
    if shape == "flow":
        for name in _flow_personas(options):
            if name not in names:
                raise ConfigError(
                    f"options: flow: persona {name!r} is not one of the personas asked "
                    f"({', '.join(names)})"
                )
    least, why = SHAPE_MIN_ANSWERS.get(shape, (1, ""))
    every = options.get("best_of") or 1
    answers = sum(repeat.get(name) or every for name in names)
    if answers < least:
        raise ConfigError(
            f"the {shape} shape needs at least {least} answers ({why}); the personas asked "
            f"give {answers}"
        )


def _flow_personas(options: Mapping[str, Any]) -> list[str]:
    stages = (options.get("flow") or {}).get("stages") or []
    found: list[str] = []
    for stage in stages:
        if isinstance(stage, Mapping):
            found += [str(n) for n in stage.get("panel") or []]
            found += [str(stage["agent"])] if stage.get("agent") else []
    return list(dict.fromkeys(found))


def stored_options(shape: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """A stored run's options as its shape takes them today: one set that the shape no
    longer reads (an earlier version's ``synthesize`` beside an orchestrator, which ignored
    it) is dropped rather than making the run impossible to carry on."""
    known = SHAPE_OPTIONS.get(shape, ())
    return {k: v for k, v in options.items() if k in known or not v}


def _whole(low: int, high: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _flag(value: Any) -> bool:
    return value is None or isinstance(value, bool)


def _counts(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and _whole(1, 50)(v) for k, v in value.items()
    )


def _texts(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    )


# What each option's value must be, and how to say so.
_OPTION_VALUES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "synthesize": (_flag, "true or false"),
    "map": (_flag, "true or false"),
    "seed": (lambda v: v is None or _whole(0, 2**63)(v), "a whole number from 0"),
    "best_of": (lambda v: v is None or _whole(1, 50)(v), "a whole number from 1 to 50"),
    "repeat": (lambda v: v is None or _counts(v), "persona names to counts from 1 to 50"),
    "route_max": (lambda v: v is None or _whole(1, 1000)(v), "a whole number from 1 to 1,000"),
    "max_turns": (lambda v: v is None or _whole(1, 50)(v), "a whole number from 1 to 50"),
    "flow": (lambda v: isinstance(v, dict), "a flow definition"),
    "inputs": (lambda v: v is None or _texts(v), "input names to text"),
}


def check_options(shape: str, options: Mapping[str, Any]) -> None:
    """ConfigError for an option ``shape`` does not read (``quorom``) or a value it cannot
    use, so a typo in an API call or a server request is not silently ignored."""
    known = SHAPE_OPTIONS.get(shape, ())
    for key, value in options.items():
        if key not in known and value in (None, False):
            continue  # an option left unset is no mistake (a CLI run sends synthesize: false)
        if key not in known:
            raise ConfigError(
                f"options: the {shape} shape takes no option {key!r}"
                f"{_closest(key, known)} (its options: {', '.join(known)})"
            )
        test, wanted = _OPTION_VALUES.get(key, (lambda v: True, ""))
        if not test(value):
            raise ConfigError(f"options: {key}: {value!r:.60} is not {wanted}")


def _closest(key: str, known: Sequence[str]) -> str:
    from difflib import get_close_matches

    match = get_close_matches(key, known, n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def build_plan(shape: str, options: Mapping[str, Any]) -> list[Stage]:
    """The stages of ``shape`` with ``options``; ConfigError for a shape nobody registered or
    an option it does not take."""
    try:
        make = SHAPES[shape]
    except KeyError:
        known = ", ".join(sorted(SHAPES))
        raise ConfigError(f"unknown shape {shape!r} (known: {known})") from None
    check_options(shape, options)
    return make(options)


def roles_of(stages: Sequence[Stage]) -> list[str]:
    """The roles beside the personas a plan needs (``synthesizer``, ``judge``...)."""
    needed: list[str] = []
    for stage in stages:
        for role in getattr(stage, "roles", ()):
            if role not in needed:
                needed.append(role)
    return needed
