"""A shape's options, declared once: name, type, bounds, default, help and the CLI flag that
is its alias. The CLI's flags (``--quorum`` and the generic ``-O quorum=0.6``), the server's
fields, ``fanout shapes``, the dashboard's form and every check are read from these.

An option is read from text (the command line) with ``parse`` and from a value (the Python
API, a JSON body, a stored run) with ``check``; both say what is wrong in one line that names
the option as the user wrote it (``--quorum``, ``-O quorum``, ``options: quorum``). A shape
reads its options with ``option.of(options)``: typed, never ``Any``.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from fanout.errors import ConfigError
from fanout.summary import JsonObject, JsonValue

T = TypeVar("T")
Options = Mapping[str, object]  # a shape's options as given: read them through their Option

_INTEGER = re.compile(r"[+-]?[0-9]{1,30}")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _plain(number: float) -> str:
    return f"{number:,.10g}"


@dataclass(frozen=True)
class Option(Generic[T]):
    """One option of a shape. ``flag``: its own CLI flag (``--quorum``), if it has one;
    ``short``: a one-letter form (``-s``); ``selects``: the flag also picks the shape (a
    ``--choices`` means a vote) when no other shape is named."""

    name: str
    help: str
    flag: str | None = None
    short: str | None = None
    metavar: str = "VALUE"
    selects: bool = False
    default: T | None = None

    # -- what each kind of option overrides ----------------------------------------------------

    kind = "value"  # the form's input: switch, whole, share, list, counts, texts, document

    def wanted(self) -> str:
        """What a value must be, in words (``a whole number from 1 to 50``)."""
        raise NotImplementedError

    def value_schema(self) -> JsonObject:
        """The JSON Schema of a value."""
        raise NotImplementedError

    def coerce(self, value: object) -> T | None:
        """The value as the option holds it, or None when it is not one."""
        raise NotImplementedError

    def from_text(self, text: str) -> object:
        """A value from command-line text, before it is checked."""
        return text

    # -- shared --------------------------------------------------------------------------------

    def check(self, value: object, where: str = "") -> T | None:
        """``value`` as the option holds it (None: unset); ConfigError naming ``where``."""
        if value is None:
            return None
        coerced = self.coerce(value)
        if coerced is None:
            shown = repr(value) if not isinstance(value, dict | list) else type(value).__name__
            raise ConfigError(f"{where or self.name}: {shown:.60} is not {self.wanted()}")
        return coerced

    def parse(self, text: str, where: str = "") -> T | None:
        """``value`` from the command line; ConfigError naming ``where`` (the flag typed)."""
        return self.check(self.from_text(text), where or f"-O {self.name}")

    def of(self, options: Options) -> T | None:
        """The option's value in ``options`` (checked when the run was planned), else its
        default."""
        value = self.coerce(options[self.name]) if options.get(self.name) is not None else None
        return value if value is not None else self.default

    def describe(self) -> JsonObject:
        """The option for ``fanout shapes --json``, the dashboard's form and the schema."""
        entry: JsonObject = {
            "name": self.name,
            "kind": self.kind,
            "help": self.help,
            "wanted": self.wanted(),
            "flag": self.flag,
            "default": _as_json(self.default),
            "schema": self.value_schema(),
        }
        return entry


def _as_json(value: object) -> JsonValue:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): _as_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_as_json(v) for v in value]
    return str(value)


@dataclass(frozen=True)
class Switch(Option[bool]):
    kind = "switch"

    def wanted(self) -> str:
        return "true or false"

    def value_schema(self) -> JsonObject:
        return {"type": "boolean"}

    def coerce(self, value: object) -> bool | None:
        return value if isinstance(value, bool) else None

    def from_text(self, text: str) -> object:
        folded = text.strip().casefold()
        words = {"true": True, "yes": True, "1": True, "on": True}
        words.update({"false": False, "no": False, "0": False, "off": False})
        return words.get(folded, text)


@dataclass(frozen=True)
class Whole(Option[int]):
    low: int = 0
    high: int = 2**63
    kind = "whole"

    def wanted(self) -> str:
        if self.high >= 2**63:
            return f"a whole number from {_plain(self.low)}"
        return f"a whole number from {_plain(self.low)} to {_plain(self.high)}"

    def value_schema(self) -> JsonObject:
        return {"type": "integer", "minimum": self.low, "maximum": self.high}

    def coerce(self, value: object) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return None
        return value if self.low <= value <= self.high else None

    def from_text(self, text: str) -> object:
        digits = text.strip()
        return int(digits) if _INTEGER.fullmatch(digits) else text


@dataclass(frozen=True)
class Share(Option[float]):
    """A share of a whole: above 0, at most 1."""

    kind = "share"

    def wanted(self) -> str:
        return "a share between 0 and 1"

    def value_schema(self) -> JsonObject:
        return {"type": "number", "exclusiveMinimum": 0, "maximum": 1}

    def coerce(self, value: object) -> float | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return float(value) if math.isfinite(value) and 0 < value <= 1 else None

    def from_text(self, text: str) -> object:
        return float(text) if _DECIMAL.fullmatch(text.strip()) else text


@dataclass(frozen=True)
class Choices(Option[list[str]]):
    """At least ``least`` different texts (``Paris,Lyon`` on the command line)."""

    least: int = 2
    kind = "list"

    def wanted(self) -> str:
        least = {2: "two", 3: "three"}.get(self.least, str(self.least))
        return f"at least {least} different choices, as text (e.g. Paris,Lyon)"

    def value_schema(self) -> JsonObject:
        return {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 2}

    def coerce(self, value: object) -> list[str] | None:
        if not isinstance(value, list | tuple) or not all(isinstance(c, str) for c in value):
            return None
        texts = [str(c).strip() for c in value]
        keys = [_folded(c) for c in texts]
        if "" in keys or len(set(keys)) != len(keys) or len(keys) < self.least:
            return None
        return texts

    def from_text(self, text: str) -> object:
        return [c.strip() for c in text.split(",") if c.strip()]


@dataclass(frozen=True)
class Counts(Option[dict[str, int]]):
    """Names to counts from 1 to ``high`` (``translator=3`` on the command line)."""

    high: int = 50
    kind = "counts"

    def wanted(self) -> str:
        return f"persona names to counts from 1 to {self.high}"

    def value_schema(self) -> JsonObject:
        count: JsonObject = {"type": "integer", "minimum": 1, "maximum": self.high}
        return {"type": "object", "additionalProperties": count}

    def coerce(self, value: object) -> dict[str, int] | None:
        if not isinstance(value, Mapping):
            return None
        counts: dict[str, int] = {}
        for key, count in value.items():
            if not isinstance(key, str) or isinstance(count, bool) or not isinstance(count, int):
                return None
            if not 1 <= count <= self.high:
                return None
            counts[key] = count
        return counts

    def from_text(self, text: str) -> object:
        pairs = [p.partition("=") for p in text.split(",") if p.strip()]
        if not all(sep and count.strip().isdigit() for _, sep, count in pairs):
            return text
        return {name.strip(): int(count) for name, _, count in pairs}


@dataclass(frozen=True)
class Texts(Option[dict[str, str]]):
    """Names to text (a flow's inputs: ``topic=ice`` on the command line)."""

    kind = "texts"

    def wanted(self) -> str:
        return "input names to text"

    def value_schema(self) -> JsonObject:
        return {"type": "object", "additionalProperties": {"type": "string"}}

    def coerce(self, value: object) -> dict[str, str] | None:
        if not isinstance(value, Mapping):
            return None
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            return None
        return {str(k): str(v) for k, v in value.items()}

    def from_text(self, text: str) -> object:
        pairs = [p.partition("=") for p in text.split(",") if p.strip()]
        if not all(sep and name.strip() for name, sep, _ in pairs):
            return text
        return {name.strip(): value for name, _, value in pairs}


@dataclass(frozen=True)
class Document(Option[dict[str, object]]):
    """A definition written as a mapping (a flow's stages): checked by the shape that reads
    it; on the command line, the name of a YAML or JSON file holding it."""

    kind = "document"
    describes: str = "a definition"
    schema: JsonObject = field(default_factory=lambda: {"type": "object"})

    def wanted(self) -> str:
        return self.describes

    def value_schema(self) -> JsonObject:
        return dict(self.schema)

    def coerce(self, value: object) -> dict[str, object] | None:
        return {str(k): v for k, v in value.items()} if isinstance(value, Mapping) else None

    def from_text(self, text: str) -> object:
        from pathlib import Path

        import yaml

        try:
            loaded: object = yaml.safe_load(Path(text).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ConfigError(f"-O {self.name}: cannot read {text!r}: {exc}") from None
        return loaded


def _folded(text: str) -> str:
    """A choice as choices are told apart: case, width, spaces and punctuation aside."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    kept = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in folded)
    return " ".join(kept.split())


def closest(key: str, known: Sequence[str]) -> str:
    """`` (did you mean 'quorum'?)`` for a misspelt name, else nothing."""
    from difflib import get_close_matches

    match = get_close_matches(key, known, n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


# Options more than one shape reads, declared once.
SYNTHESIZE = Switch(
    "synthesize", "Merge the answers into one.", flag="--synthesize", short="-s", default=False
)
MAP = Switch(
    "map",
    "Synthesize an agreement map: consensus, contradictions, points only one persona made, "
    "then the merged answer (implies --synthesize).",
    flag="--map",
    default=False,
)
SEED = Whole("seed", "Fix the random order blind candidates are shown in.", high=2**63)
BEST_OF = Whole(
    "best_of", "Ask every chosen persona N times (up to 50).", flag="--best-of", metavar="N",
    low=1, high=50,
)  # fmt: skip
REPEAT = Counts("repeat", "Ask these personas several times (-a translator:3 does it too).")
PANEL_OPTIONS: tuple[Option[bool] | Option[int] | Option[dict[str, int]], ...] = (
    SYNTHESIZE, MAP, SEED, BEST_OF, REPEAT,
)  # fmt: skip
