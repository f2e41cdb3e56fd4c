"""What a stage decided, as every front end shows it: typed verdicts and their neutral summary.

A shape's stage may draw a verdict from its calls (a vote's tally, a judge's pick, a ranking).
A verdict is a typed value (a dataclass deriving from ``Verdict``) with one serializer
(``to_dict``, the result document's ``verdict``, with its ``type``) and one reader
(``verdict_from_dict`` in ``shapes``, which also upgrades what older versions stored). It
presents itself as a ``Summary``: a headline, the decided answer's text and who wrote it, rows
(a tally, a ranking, a map), notes, warnings, and whether a decision was reached. The final
view, the live board, ``runs show``, the HTML export, the dashboard and ``/v1`` draw that
summary and nothing else, so none of them knows one shape from another.

Data only: nothing here imports the rest of fanout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, ClassVar, Literal, TypeAlias

if TYPE_CHECKING:
    from pydantic import TypeAdapter

JsonValue: TypeAlias = "bool | int | float | str | list[JsonValue] | dict[str, JsonValue] | None"
JsonObject: TypeAlias = "dict[str, JsonValue]"
RowsKind = Literal["tally", "ranking", "points"]


@dataclass(frozen=True)
class Row:
    """One line of a tally, a ranking or a map: what it is about, its figures, its share of
    a bar (a tally), whether it is the one decided, and how deep it sits (a map's stances)."""

    label: str
    cells: tuple[str, ...] = ()
    share: float | None = None
    marked: bool = False
    depth: int = 0


@dataclass(frozen=True)
class Rows:
    """A block of rows: a ``tally`` (bars), a ``ranking`` (a table with ``columns``) or
    ``points`` (a list, nested by ``depth``), under its own ``title``."""

    kind: RowsKind
    title: str = ""
    rows: tuple[Row, ...] = ()
    columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class Summary:
    """A verdict as a reader sees it. ``decided``: True when the stage reached the decision it
    exists for, False when it did not (no quorum, a tie, an inconsistent judge), None when it
    decides nothing (a synthesis, a router's pick). ``answer``: the decided answer's text, by
    ``author``. ``warnings``: what degraded it, each said once (never the headline again)."""

    title: str
    headline: str
    decided: bool | None = None
    answer: str | None = None
    author: str | None = None
    model: str | None = None
    rows: tuple[Rows, ...] = ()
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    # The call names whose answers were decided (a vote's winning group, the judge's pick).
    chosen: tuple[str, ...] = ()

    def to_dict(self) -> JsonObject:
        """The summary as JSON (the dashboard and ``/api/runs`` read it)."""
        return _json(asdict(self))


class Verdict:
    """The base of every verdict: a frozen dataclass with a ``type`` of its own.

    ``summary()`` presents it; ``to_dict()`` is its entry in the result document (its fields
    and ``type``); ``product()`` is the run's own output when the verdict is one (a flow's, an
    orchestrator's), else None.
    """

    type: ClassVar[str] = ""
    # The stage keys and kinds older documents stored this verdict under, without a type.
    legacy: ClassVar[tuple[str, ...]] = ()

    def summary(self) -> Summary:
        raise NotImplementedError

    def to_dict(self) -> JsonObject:
        data: JsonObject = {"type": self.type}
        data.update(_json(asdict(self)))  # type: ignore[call-overload]
        return data

    def product(self) -> Mapping[str, Mapping[str, str] | str] | None:
        return None

    @classmethod
    def read(cls, data: Mapping[str, object]) -> Verdict:
        """A stored verdict of this type (ValueError if it is not one)."""
        body = {k: v for k, v in data.items() if k != "type"}
        verdict: Verdict = _adapter(cls).validate_python(body)
        return verdict

    @classmethod
    def schema(cls) -> JsonObject:
        """The JSON Schema of this verdict as the result document stores it."""
        schema: JsonObject = _adapter(cls).json_schema(mode="serialization")
        properties = schema.setdefault("properties", {})
        assert isinstance(properties, dict)
        properties["type"] = {"const": cls.type}
        schema["title"] = f"{cls.__name__} ({cls.type})"
        return schema


_ADAPTERS: dict[str, TypeAdapter[Verdict]] = {}


def _adapter(cls: type[Verdict]) -> TypeAdapter[Verdict]:
    """One pydantic adapter per verdict type (made once: it compiles a validator)."""
    from pydantic import TypeAdapter

    name = f"{cls.__module__}.{cls.__qualname__}"
    if name not in _ADAPTERS:
        _ADAPTERS[name] = TypeAdapter(cls)
    return _ADAPTERS[name]


@dataclass(frozen=True)
class StageError(Verdict):
    """A shape's bug cost this stage its verdict (the answers stand): what it raised."""

    type: ClassVar[str] = "error"
    error: str

    def summary(self) -> Summary:
        return Summary("Error", f"no verdict: {self.error}", decided=False)


@dataclass(frozen=True)
class UnknownVerdict(Verdict):
    """A verdict this version cannot read (another version's, or a damaged one): its plain
    fields, shown as they are."""

    type: ClassVar[str] = "unknown"
    data: dict[str, JsonValue] = field(default_factory=dict)
    title: str = "Verdict"

    def summary(self) -> Summary:
        plain = [
            f"{name}: {value}"
            for name, value in self.data.items()
            if name not in ("warnings", "type") and isinstance(value, str | int | float | bool)
        ]
        warnings = self.data.get("warnings")
        said = tuple(str(w) for w in warnings) if isinstance(warnings, list) else ()
        return Summary(self.title, "; ".join(plain) or "(no fields to show)", warnings=said)

    def to_dict(self) -> JsonObject:
        return dict(self.data)


def verdict_fields(cls: type[Verdict]) -> list[str]:
    """The names a verdict type stores (its dataclass fields)."""
    return [f.name for f in fields(cls)]  # type: ignore[arg-type]


def decided(verdicts: Sequence[Verdict | None]) -> bool | None:
    """A run's decision from its stages' verdicts: False if one of them decided nothing it
    should have, True if one decided, None if none of them decides anything."""
    said = [v.summary().decided for v in verdicts if v is not None]
    if False in said:
        return False
    return True if True in said else None


def final_summary(summaries: Sequence[Summary]) -> Summary | None:
    """What a run decided, for a reader who wants one answer (``/v1``, a status poller): the
    last summary with a decided answer (a synthesis after a judge's pick is the answer); else
    the last that decided nothing (its headline says why); else None (a bare panel)."""
    answered = [s for s in summaries if s.answer is not None and s.decided is not False]
    if answered:
        return answered[-1]
    undecided = [s for s in summaries if s.decided is False]
    return undecided[-1] if undecided else None


def _json(value: object) -> JsonObject:
    """``asdict``'s output as JSON values (tuples as lists)."""

    def convert(item: object) -> JsonValue:
        if isinstance(item, dict):
            return {str(k): convert(v) for k, v in item.items()}
        if isinstance(item, list | tuple):
            return [convert(v) for v in item]
        if item is None or isinstance(item, bool | int | float | str):
            return item
        return str(item)

    converted = convert(value)
    assert isinstance(converted, dict)
    return converted
