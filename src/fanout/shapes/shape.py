"""The shape object: everything the rest of fanout needs to know about one shape.

A ``Shape`` is declared once, in its module (``SHAPE = Shape(...)``), and found by the registry
(``shapes/__init__.py``) without being listed anywhere. From it come: the plan (its stages),
its options (the CLI's flags and ``-O``, the server's fields, ``fanout shapes``, the
dashboard's form, every check), the roles it asks beside the personas, how many answers it
needs and how many personas it takes at most, which stages hold its answers, the steps it lends
a flow (``then: vote``), and, through its stages' verdicts, what it decided.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fanout.shapes.options import Option, Options

if TYPE_CHECKING:
    from fanout.engine import Stage
    from fanout.models import Agent

# A step after a flow stage: (the flow stage's id, the id to give the step's last stage, the
# run's options) -> the stages to run after it.
StepBuilder = Callable[[str, str, Options], "list[Stage]"]
AnyOption = (
    Option[bool]
    | Option[int]
    | Option[float]
    | Option[list[str]]
    | Option[dict[str, int]]
    | Option[dict[str, str]]
    | Option[dict[str, object]]
)


@dataclass(frozen=True)
class Step:
    """What ``then: <name>`` adds after a flow stage: the stages ``build`` returns, the last
    one with id ``<stage>-<suffix>`` (what a later prompt quotes); ``before`` names the ids of
    any stage it adds ahead of that one (a council's review). ``least``: personas the flow
    stage needs for it."""

    name: str
    suffix: str
    build: StepBuilder
    least: int = 1
    least_why: str = ""
    before: Callable[[str], list[str]] = lambda stage_id: []


def _no_check(options: Options, agents: Sequence[Agent]) -> None:
    return None


@dataclass(frozen=True)
class Shape:
    """One shape. ``plan(options)`` builds its stages from options already checked against
    ``options``. ``flag``: the CLI switch that picks it (``--vote``). ``roles``: the roles
    besides the personas it may ask (``judge``). ``least``: answers it needs to mean anything
    (``least_why`` says why); ``most``: personas it takes at most. ``answers``: the kinds of
    stage whose calls are its answers (shown side by side, the document's ``agents``).
    ``standalone``: it runs from a prompt alone (a flow needs its definition). ``check``:
    what its options say about the personas asked, beyond each option's own check."""

    name: str
    help: str
    plan: Callable[[Options], list[Stage]]
    options: tuple[AnyOption, ...] = ()
    flag: str | None = None
    roles: tuple[str, ...] = ()
    least: int = 1
    least_why: str = ""
    most: int | None = None
    answers: tuple[str, ...] = ("panel",)
    standalone: bool = True
    steps: tuple[Step, ...] = ()
    check: Callable[[Options, Sequence[Agent]], None] = _no_check
    example: str = ""
    order: int = 50  # where it is listed (fanout shapes, the dashboard, --help)
    option_names: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "option_names", tuple(o.name for o in self.options))

    def option(self, name: str) -> AnyOption | None:
        return next((o for o in self.options if o.name == name), None)
