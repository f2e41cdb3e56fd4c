"""The shapes a run can take, found in one place.

A shape is one ``Shape`` object (``shape.py``), declared as ``SHAPE`` in its own module of this
package; the registry finds every module here that has one, so adding a shape is adding its
module, and nothing else. From the registry come the plans (``build_plan``), the checks of a
request's options (``check_options``, ``check_plan``), the flags and fields of every front end,
the steps a flow may take (``flow_steps``), which stages hold a run's answers
(``answer_kinds``) and how a stored verdict is read back (``verdict_from_dict``).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator, Mapping, Sequence
from functools import cache
from typing import TYPE_CHECKING

from fanout.errors import ConfigError
from fanout.shapes.options import Options, closest
from fanout.shapes.shape import AnyOption, Shape, Step
from fanout.summary import JsonObject, StageError, UnknownVerdict, Verdict

if TYPE_CHECKING:
    from fanout.engine import Stage
    from fanout.models import Agent

__all__ = [
    "SHAPES",
    "Shape",
    "Step",
    "answer_kinds",
    "build_plan",
    "check_options",
    "check_plan",
    "flow_steps",
    "roles_of",
    "shape_of",
    "stored_options",
    "verdict_from_dict",
]


class _Registry(Mapping[str, Shape]):
    """Every shape of the package, by name, in the order they are listed; loaded the first
    time it is read (``fanout --help`` does not need the stages' code)."""

    def __init__(self) -> None:
        self._extra: dict[str, Shape] = {}

    def _all(self) -> dict[str, Shape]:
        return {**_discovered(), **self._extra}

    def __getitem__(self, name: str) -> Shape:
        return self._all()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def add(self, shape: Shape) -> None:
        """Register a shape from outside the package (a plugin, a test)."""
        self._extra[shape.name] = shape

    def remove(self, name: str) -> None:
        self._extra.pop(name, None)


@cache
def _discovered() -> dict[str, Shape]:
    found: list[Shape] = []
    for module in pkgutil.iter_modules(__path__):
        loaded = importlib.import_module(f"{__name__}.{module.name}")
        shape = getattr(loaded, "SHAPE", None)
        if isinstance(shape, Shape):
            found.append(shape)
    return {s.name: s for s in sorted(found, key=lambda s: (s.order, s.name))}


SHAPES = _Registry()


def shape_of(name: str) -> Shape:
    """The shape called ``name``; ConfigError naming the known ones otherwise."""
    try:
        return SHAPES[name]
    except KeyError:
        known = ", ".join(SHAPES)
        raise ConfigError(
            f"unknown shape {name!r}{closest(name, list(SHAPES))} (known: {known})"
        ) from None


def check_options(shape: str, options: Options, where: str = "options: ") -> dict[str, object]:
    """The options ``shape`` takes, each checked against its declaration: ConfigError for one
    it does not take (``quorom``: did you mean ``quorum``?) or a value it cannot use, so a
    typo in an API call or a server request is not silently ignored. Options left unset
    (None, False) that the shape does not take are dropped (a CLI run sends synthesize: no)."""
    known = shape_of(shape)
    checked: dict[str, object] = {}
    for key, value in options.items():
        option = known.option(key)
        if option is None:
            if value is None or value is False:
                continue
            names = list(known.option_names)
            raise ConfigError(
                f"{where}the {shape} shape takes no option {key!r}{closest(key, names)} "
                f"(its options: {', '.join(names) or 'none'})"
            )
        coerced = option.check(value, f"{where}{key}")
        if coerced is not None:
            checked[key] = coerced
    return checked


def check_plan(shape: str, options: Options, agents: Sequence[Agent]) -> None:
    """ConfigError for what ``options`` say about the personas asked: a name in ``repeat``
    that is not among them, too few answers or too many personas for ``shape``, and the
    shape's own check (a flow's personas)."""
    known = shape_of(shape)
    names = [a.name for a in agents]
    repeat = options.get("repeat")
    counts = dict(repeat) if isinstance(repeat, Mapping) else {}
    for name in counts:
        if name not in names:
            raise ConfigError(
                f"options: repeat: {name!r} is not one of the personas asked "
                f"({', '.join(names)}){closest(str(name), names)}"
            )
    known.check(options, agents)
    best_of = options.get("best_of")
    every = best_of if isinstance(best_of, int) and best_of > 0 else 1
    answers = sum(int(counts.get(name) or every) for name in names)
    if answers < known.least:
        raise ConfigError(
            f"the {shape} shape needs at least {known.least} answers ({known.least_why}); the "
            f"personas asked give {answers}"
        )
    if known.most is not None and len(names) > known.most:
        raise ConfigError(
            f"the {shape} shape takes at most {known.most} personas; {len(names)} were asked"
        )


def stored_options(shape: str, options: Options) -> dict[str, object]:
    """A stored run's options as its shape takes them today: one that the shape no longer
    reads (an earlier version's ``synthesize`` beside an orchestrator, which ignored it) is
    dropped rather than making the run impossible to carry on."""
    known = SHAPES.get(shape)
    names = known.option_names if known is not None else ()
    return {k: v for k, v in options.items() if k in names or not v}


def build_plan(shape: str, options: Options) -> list[Stage]:
    """The stages of ``shape`` with ``options``; ConfigError for a shape nobody registered or
    an option it does not take."""
    known = shape_of(shape)
    return known.plan(check_options(shape, options))


def roles_of(stages: Sequence[Stage]) -> list[str]:
    """The roles beside the personas a plan needs (``synthesizer``, ``judge``...)."""
    needed: list[str] = []
    for stage in stages:
        for role in getattr(stage, "roles", ()):
            if role not in needed:
                needed.append(role)
    return needed


def flow_steps() -> dict[str, Step]:
    """Every ``then:`` a flow stage may take, by name, from the shapes that lend one."""
    return {step.name: step for shape in SHAPES.values() for step in shape.steps}


def answer_kinds(shape: str) -> tuple[str, ...]:
    """The kinds of stage whose calls are ``shape``'s answers (a panel's; every turn's tools
    of an orchestrator; each stage of a flow)."""
    known = SHAPES.get(shape)
    return known.answers if known is not None else ("panel",)


def all_options() -> dict[str, AnyOption]:
    """Every option of every shape, by name (one declaration each)."""
    found: dict[str, AnyOption] = {}
    for shape in SHAPES.values():
        for option in shape.options:
            found.setdefault(option.name, option)
    return found


@cache
def verdict_types() -> dict[str, type[Verdict]]:
    """Every verdict type by its ``type``, and by the keys older documents used."""
    _discovered()
    found: dict[str, type[Verdict]] = {}
    pending: list[type[Verdict]] = [Verdict]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.type:
            found.setdefault(cls.type, cls)
    for cls in list(found.values()):
        for key in cls.legacy:
            found.setdefault(key, cls)
    return found


def verdict_from_dict(data: object, key: str | None = None, kind: str = "") -> Verdict | None:
    """A stored verdict back as its type: by its ``type``, else (a document of an earlier
    version) by the stage's ``key`` or ``kind``; one this version cannot read stays as it
    was, shown by its plain fields."""
    if data is None:
        return None
    if not isinstance(data, Mapping):
        return UnknownVerdict({"value": str(data)})
    body: JsonObject = {str(k): v for k, v in data.items()}
    types = verdict_types()
    named = body.get("type")
    if set(body) == {"error"} and isinstance(body["error"], str):
        return StageError(body["error"])
    cls = types.get(named) if isinstance(named, str) else None
    cls = cls or types.get(key or "") or types.get(kind)
    if cls is None:
        return UnknownVerdict(body, (key or kind or "verdict").capitalize())
    try:
        return cls.read(body)
    except (ValueError, TypeError):
        return UnknownVerdict(body, cls.type.capitalize())
