"""What ``POST /api/runs`` may ask for beside the prompt: any shape the CLI has and its options
(``{"shape": "vote", "options": {"quorum": 0.6}}``, or as before ``{"vote": {...}}``), what a
shape prepares from a request (a flow's ``options.flow``: its definition inline, or the name of
a file in the folder the server was given with ``--flows``), the agreement map
(``options.map``) and personas for this run only (``personas``). Each mistake is one
``BadBody`` line naming the field. Nothing here knows one shape from another."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fanout.config import Panel
from fanout.errors import ConfigError
from fanout.shapes import SHAPES, check_options, shape_of


class BadBody(ValueError):
    """A field of the body cannot be used (the server answers 400 with this line)."""


@dataclass(frozen=True)
class Shaped:
    """A body's shape and options (checked), the panel and personas it asks, its prompt."""

    shape: str
    options: dict[str, object]
    panel: Panel
    agents: list[str] | None
    prompt: str | None


def shaped(
    body: Mapping[str, object], panel: Panel, agents: list[str] | None, flows: Path | None
) -> Shaped:
    """The shape a body names (``shape``, or a shape's own field) and its checked options; a
    flow read and checked against the panel; ``personas`` added to the panel."""
    shape, options = _named_shape(body)
    synthesize = body.get("synthesize", None)
    if synthesize is not None and not isinstance(synthesize, bool):
        raise BadBody("synthesize: true or false")
    if synthesize:
        options["synthesize"] = True
    panel, agents = _with_personas(body.get("personas"), panel, agents)
    given = body.get("prompt")
    prompt = given if isinstance(given, str) else None
    prepare = shape_of(shape).prepare
    try:
        if prepare is not None:  # the shape decides its panel, personas, prompt (a flow's)
            ready = prepare(options, panel, flows)
            options = ready.options
            panel, agents = ready.panel or panel, ready.agents or agents
            prompt = prompt or ready.prompt
        checked = check_options(shape, options)
    except ConfigError as exc:
        raise BadBody(str(exc)) from None
    return Shaped(shape, checked, panel, agents, prompt)


def _named_shape(body: Mapping[str, object]) -> tuple[str, dict[str, object]]:
    """``shape`` + ``options``, or a shape's own field (``"vote": true`` or its options)."""
    named: list[tuple[str, object]] = []
    given = body.get("shape")
    if given is not None:
        if not isinstance(given, str) or given.strip() not in SHAPES:
            known = ", ".join(SHAPES)
            raise BadBody(f"shape: {given!r} is not a shape (known: {known})")
        named.append((given.strip(), body.get("options")))
    elif body.get("options") is not None:
        named.append(("panel", body.get("options")))
    for name, each in SHAPES.items():
        value = body.get(name)
        if each.flag and value not in (None, False):  # a shape's own field, as its own flag
            named.append((name, None if value is True else value))
    distinct = list(dict.fromkeys(name for name, _ in named))
    if len(distinct) > 1:
        raise BadBody(f"choose one shape: {', '.join(distinct)}")
    if not named:
        return "panel", {}
    shape = distinct[0]
    options: dict[str, object] = {}
    for name, value in named:
        if value is None:
            continue
        if not isinstance(value, Mapping):
            field = "options" if name == body.get("shape") else name
            raise BadBody(f"{field}: true or an object of the {shape} shape's options")
        options.update({str(k): v for k, v in value.items()})
    return shape, options


def _with_personas(
    given: object, panel: Panel, agents: list[str] | None
) -> tuple[Panel, list[str] | None]:
    """``personas``: ``{"pirate": "You answer like a pirate"}`` (or ``["pirate=..."]``): added
    to the panel for this run; alone, the only ones asked (as ``-p`` without ``-a``)."""
    if given is None:
        return panel, agents
    pairs: list[tuple[str, str]] = []
    if isinstance(given, Mapping):
        pairs = [(str(k), v) for k, v in given.items() if isinstance(v, str)]
        wrong = len(pairs) != len(given)
    elif isinstance(given, list):
        split = [str(p).partition("=") for p in given if isinstance(p, str)]
        pairs = [(name.strip(), text.strip()) for name, sep, text in split if sep]
        wrong = len(pairs) != len(given)
    else:
        wrong = True
    if wrong or not pairs:
        raise BadBody('personas: an object of names to instructions, {"pirate": "You ..."}')
    from fanout.config import is_persona_name

    for name, text in pairs:
        if not is_persona_name(name) or not text.strip():
            raise BadBody(f"personas: {name!r}: a name (no spaces or commas) and instructions")
    try:
        panel = panel.with_personas(pairs)
    except ConfigError as exc:
        raise BadBody(str(exc).replace("-p/--persona", "personas")) from None
    return panel, [*(agents or []), *(name for name, _ in pairs)]
