"""The shape flags of ``ask`` and ``batch``, made from the registry: ``--shape NAME`` and the
generic ``-O key=value`` for any shape and option, and, as their aliases, each shape's own
switch (``--vote``) and each option's own flag (``--quorum``, ``-s``). A shape added to
``fanout.shapes`` has its flags here without a line of this module changing.

``with_shape_flags`` adds the flags to a command's signature (Typer reads them from it);
``shape_from_flags`` turns what was typed into the shape and its checked options, each mistake
one ``ConfigError`` naming the flag as it was typed.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from typing import Annotated, TypeVar

import typer

from fanout.cli.options import GROUP_SHAPE_OPTIONS, GROUP_SHAPES
from fanout.errors import ConfigError
from fanout.shapes import SHAPES, Shape, all_options, shape_of
from fanout.shapes.options import Switch, closest
from fanout.shapes.shape import AnyOption

F = TypeVar("F", bound=Callable[..., object])
SHAPE_PARAM = "shape_name"
OPTION_PARAM = "shape_option"


def _param(name: str) -> str:
    return re.sub(r"\W", "_", name)


def _shape_param(shape: Shape) -> str:
    return "shape_" + _param(shape.name)


def _option_param(option: AnyOption) -> str:
    return "option_" + _param(option.name)


def shape_parameters() -> list[inspect.Parameter]:
    """The parameters Typer makes the shape flags from, in the order ``--help`` lists them."""
    names = ", ".join(SHAPES)
    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [
        inspect.Parameter(
            SHAPE_PARAM,
            positional,
            default=None,
            annotation=Annotated[
                str | None,
                typer.Option(
                    "--shape",
                    metavar="NAME",
                    help=f"How the run decides: {names} (fanout shapes describes them).",
                    show_default=False,
                    rich_help_panel=GROUP_SHAPES,
                ),
            ],
        )
    ]
    for shape in SHAPES.values():
        if shape.flag:
            option = typer.Option(shape.flag, help=shape.help, rich_help_panel=GROUP_SHAPES)
            annotation = Annotated[bool, option]
            params.append(inspect.Parameter(_shape_param(shape), positional, default=False,
                                            annotation=annotation))  # fmt: skip
    params.append(
        inspect.Parameter(
            OPTION_PARAM,
            positional,
            default=None,
            annotation=Annotated[
                list[str] | None,
                typer.Option(
                    "--option",
                    "-O",
                    metavar="KEY=VALUE",
                    help="An option of the shape, e.g. -O quorum=0.6 (repeatable); fanout "
                    "shapes lists every shape's options.",
                    show_default=False,
                    rich_help_panel=GROUP_SHAPE_OPTIONS,
                ),
            ],
        )
    )
    for option in all_options().values():
        if option.flag:
            params.append(_option_parameter(option))
    return params


def _option_parameter(option: AnyOption) -> inspect.Parameter:
    flags = [option.flag or "", *([option.short] if option.short else [])]
    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    if isinstance(option, Switch):
        switch = typer.Option(*flags, help=option.help, rich_help_panel=GROUP_SHAPE_OPTIONS)
        return inspect.Parameter(
            _option_param(option), positional, default=False, annotation=Annotated[bool, switch]
        )
    given = typer.Option(
        *flags,
        metavar=option.metavar,
        help=option.help,
        show_default=False,
        rich_help_panel=GROUP_SHAPE_OPTIONS,
    )
    return inspect.Parameter(
        _option_param(option), positional, default=None, annotation=Annotated[str | None, given]
    )


def with_shape_flags(after: str) -> Callable[[F], F]:
    """Give a command (whose last parameter is ``**shape_flags``) the shape flags, placed
    after its parameter ``after`` so that ``--help`` lists their groups there."""

    def add(command: F) -> F:
        signature = inspect.signature(command, eval_str=True)  # Typer reads the objects
        own = [p for p in signature.parameters.values() if p.kind != p.VAR_KEYWORD]
        at = next(i for i, p in enumerate(own) if p.name == after) + 1
        params = [*own[:at], *shape_parameters(), *own[at:]]
        command.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        return command

    return add


def shape_from_flags(given: Mapping[str, object]) -> tuple[str, dict[str, object]]:
    """The shape the flags ask for and its options, each checked: ``--vote --judge`` is
    "choose one", ``--route-max`` without ``--route`` "goes with --route", a bad value names
    the flag typed, ``-O quorom=1`` says "did you mean 'quorum'"."""
    shape = _picked(given)
    typed = _typed_options(given)
    if shape is None:
        shape = _implied(typed)
    known = shape_of(shape or "panel")
    options: dict[str, object] = {}
    for where, option, text in typed:
        if option.name not in known.option_names:
            raise ConfigError(_not_with(where, option, known))
        value = option.parse(text, where) if text is not None else True
        if value is not None:
            options[option.name] = value
    return known.name, options


def _picked(given: Mapping[str, object]) -> str | None:
    """The shape named (``--shape``, or a shape's own switch); ConfigError for two."""
    named: list[tuple[str, str]] = []
    shape_name = given.get(SHAPE_PARAM)
    if isinstance(shape_name, str):
        named.append((f"--shape {shape_name}", shape_of(shape_name.strip()).name))
    for shape in SHAPES.values():
        if shape.flag and given.get(_shape_param(shape)) is True:
            named.append((shape.flag, shape.name))
    distinct = list(dict.fromkeys(name for _, name in named))
    if len(distinct) > 1:
        first = next(flag for flag, name in named if name == distinct[0])
        second = next(flag for flag, name in named if name == distinct[1])
        raise ConfigError(f"{first} and {second}: choose one")
    return distinct[0] if distinct else None


def _typed_options(given: Mapping[str, object]) -> list[tuple[str, AnyOption, str | None]]:
    """(the flag as typed, the option, its text; None for a switch) for every option given."""
    options = all_options()
    typed: list[tuple[str, AnyOption, str | None]] = []
    for option in options.values():
        value = given.get(_option_param(option))
        if option.flag and value is True:
            typed.append((option.flag, option, None))
        elif option.flag and isinstance(value, str):
            typed.append((option.flag, option, value))
    pairs = given.get(OPTION_PARAM)
    for pair in pairs if isinstance(pairs, list) else []:
        key, equals, text = str(pair).partition("=")
        key = key.strip()
        if not equals or not key:
            raise ConfigError(f"-O {pair!r}: write it as key=value, e.g. -O quorum=0.6")
        found = options.get(key)
        if found is None:
            near = closest(key, list(options))
            raise ConfigError(f"-O {key}: no shape takes an option {key!r}{near}")
        typed.append((f"-O {key}", found, text))
    return typed


def _implied(typed: list[tuple[str, AnyOption, str | None]]) -> str | None:
    """The shape an option implies when none is named (``--choices`` means a vote)."""
    for _, option, _ in typed:
        takers = [s for s in SHAPES.values() if option.name in s.option_names]
        if option.selects and len(takers) == 1:
            return takers[0].name
    return None


def _not_with(where: str, option: AnyOption, shape: Shape) -> str:
    """Why an option does not go with the shape asked for."""
    takers = [s for s in SHAPES.values() if option.name in s.option_names]
    if where.startswith("-O "):
        names = ", ".join(shape.option_names) or "none"
        return (
            f"{where}: the {shape.name} shape takes no option {option.name!r}"
            f"{closest(option.name, list(shape.option_names))} (its options: {names})"
        )
    if len(takers) == 1 and takers[0].flag:
        return f"{where} goes with {takers[0].flag}"
    return f"{where} does not go with {shape.flag or '--shape ' + shape.name}"


def with_repeat(
    shape: str, options: dict[str, object], repeat: dict[str, int]
) -> tuple[str, dict[str, object]]:
    """``-a translator:3``: ask that persona three times, where the shape takes it."""
    if not repeat:
        return shape, options
    if "repeat" not in shape_of(shape).option_names:
        raise ConfigError(f"--agents NAME:N (one persona asked several times) does not go with "
                          f"the {shape} shape")  # fmt: skip
    return shape, {**options, "repeat": repeat}
