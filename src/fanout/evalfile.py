"""Eval files: test cases with variables, a prompt template, an expected value and assertions.

An eval is YAML (``prompt`` + ``tests``, each test ``vars`` + ``assert``), or a dataset of
cases, CSV or JSONL (a ``prompt`` column, or ``--prompt`` for the template; other columns are
variables; ``expected``, ``assert`` and promptfoo's ``__expected`` columns hold the checks).
``{{var}}`` in the prompt and in assertion values is replaced by the case's variable.

``check_eval`` reads a file whole and returns every problem, each with its file and line;
``load_eval`` is the same reading for a run, which stops at the first.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from fanout.config import open_regular_file, read_yaml_mapping
from fanout.errors import ConfigError

# Each assertion type and the value it takes.
TEXT = ("equals", "contains", "icontains", "starts-with", "regex")
TEXTS = ("contains-any", "contains-all", "icontains-any", "icontains-all")
OTHER = ("is-json", "json-schema", "max-length", "cost", "latency", "rubric")
ASSERTION_TYPES = (*TEXT, *TEXTS, *OTHER)
NEGATABLE = (*TEXT, *TEXTS, "is-json", "json-schema", "max-length")
ALIASES = {"llm-rubric": "rubric", "startswith": "starts-with", "starts_with": "starts-with"}
TOP_KEYS = ("description", "prompt", "tests", "assert", "grader", "defaults", "agents", "judge",
            "pricing")  # fmt: skip
PANEL_KEYS = ("defaults", "agents", "judge", "pricing")  # an agents file inside the eval
TEST_KEYS = ("id", "description", "vars", "expected", "assert", "prompt")
ASSERT_KEYS = ("type", "value", "threshold")
DATASETS = (".csv", ".jsonl", ".ndjson")
_VARIABLE = re.compile(r"\{\{\s*([A-Za-z_][\w.-]*)\s*\}\}")
# How a reader hears of a problem: ``report(line, message)``.
_Report = Callable[[int | None, str], None]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an eval file, where it is."""

    source: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class Assertion:
    """One check of an answer. ``kind`` is the type without ``not-``; the value is in the
    field its kind takes (``text``, ``texts``, ``number``, ``schema``); ``threshold`` is a
    rubric's lowest passing score (0 to 1)."""

    kind: str
    negate: bool = False
    text: str | None = None
    texts: tuple[str, ...] = ()
    number: float | None = None
    schema: Mapping[str, object] | None = None
    threshold: float | None = None
    line: int | None = None

    @property
    def name(self) -> str:
        return ("not-" if self.negate else "") + self.kind

    @property
    def graded(self) -> bool:
        """Judged by the grader persona rather than computed."""
        return self.kind == "rubric"

    def describe(self) -> str:
        """``icontains 'paris'``: the assertion in a few words, for reports."""
        if self.texts:
            shown = ", ".join(repr(t) for t in self.texts)
        elif self.text is not None:
            shown = repr(self.text)
        elif self.number is not None:
            shown = f"{self.number:g}"
        else:
            shown = "schema" if self.schema is not None else ""
        return f"{self.name} {shown}".strip()


@dataclass(frozen=True)
class Case:
    """One test case: its prompt already rendered from the template and its variables."""

    id: str
    prompt: str
    vars: Mapping[str, str] = field(default_factory=dict)
    expected: str | None = None
    assertions: tuple[Assertion, ...] = ()
    description: str | None = None
    line: int | None = None


@dataclass(frozen=True)
class EvalSpec:
    """An eval file read: its cases, and its own personas (an ``agents:`` section) if any."""

    source: str
    cases: list[Case]
    description: str | None = None
    panel: Mapping[str, object] | None = None  # the agents-file sections it holds
    text: str = ""  # the YAML, for the panel's line numbers
    grader: str | None = None  # a persona's name

    @property
    def graded(self) -> bool:
        return any(a.graded for c in self.cases for a in c.assertions)


def load_eval(path: Path, prompt: str | None = None) -> EvalSpec:
    """The eval at ``path``; the first problem as a ``ConfigError`` (``fanout eval check``
    lists them all)."""
    spec, problems = read_eval(path, prompt)
    if problems:
        more = f" (and {len(problems) - 1} more: fanout eval check)" if len(problems) > 1 else ""
        raise ConfigError(f"{problems[0]}{more}")
    assert spec is not None
    return spec


def check_eval(path: Path, prompt: str | None = None) -> list[Problem]:
    """Every problem of the eval at ``path``, in file order; none when it can run."""
    return read_eval(path, prompt)[1]


def read_eval(path: Path, prompt: str | None = None) -> tuple[EvalSpec | None, list[Problem]]:
    """The eval at ``path`` and its problems (no spec when it cannot be read at all)."""
    source = str(path)
    try:
        text = _read(path)
    except ConfigError as exc:
        return None, [Problem(source, None, _without_source(str(exc), source))]
    suffix = path.suffix.lower()
    if suffix in DATASETS:
        reader = _DatasetReader(source, text, suffix, prompt)
        return reader.spec(), reader.problems
    if suffix not in (".yaml", ".yml"):
        problem = f"an eval is .yaml, .csv or .jsonl, not {suffix or 'a file without a suffix'}"
        return None, [Problem(source, None, problem)]
    return _YamlReader(path, text, prompt).read()


def _read(path: Path) -> str:
    try:
        with open_regular_file(path, "an eval file") as raw:
            return raw.read().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None


def _without_source(message: str, source: str) -> str:
    return message[len(source) + 2 :] if message.startswith(source + ": ") else message


def _is_key(node: yaml.Node, name: str | int) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.value == name


class _Lines:
    """Where each key and item of a YAML document starts (1-based lines), by its path."""

    def __init__(self, text: str) -> None:
        try:
            self._root: yaml.Node | None = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError:
            self._root = None

    def items(self, *path: str | int) -> list[int | None]:
        """The line of each item of the list at ``path``."""
        node = self._node(path)
        if not isinstance(node, yaml.SequenceNode):
            return []
        return [item.start_mark.line + 1 for item in node.value]

    def _node(self, path: Sequence[str | int]) -> yaml.Node | None:
        node = self._root
        for step in path:
            found = None
            if isinstance(node, yaml.MappingNode):
                found = next(
                    (
                        v
                        for k, v in node.value
                        if isinstance(k, yaml.ScalarNode) and k.value == step
                    ),
                    None,
                )
            elif isinstance(node, yaml.SequenceNode) and isinstance(step, int):
                found = node.value[step] if 0 <= step < len(node.value) else None
            if found is None:
                return None
            node = found
        return node

    def of(self, *path: str | int) -> int | None:
        node = self._root
        line = None
        for step in path:
            found = None
            if isinstance(node, yaml.MappingNode):
                for key, value in node.value:
                    if isinstance(key, yaml.ScalarNode) and key.value == step:
                        line, found = key.start_mark.line + 1, value
                        break
            elif isinstance(node, yaml.SequenceNode) and isinstance(step, int):
                found = node.value[step] if 0 <= step < len(node.value) else None
                line = found.start_mark.line + 1 if found is not None else line
            if found is None:
                return line
            node = found
        return line


class _Collector:
    """Problems of one file, and what the readers of its parts share."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[Problem] = []

    def add(self, line: int | None, message: str) -> None:
        self.problems.append(Problem(self.source, line, message))

    def assertions(
        self, items: object, where: int | None, lines: Sequence[int | None] = ()
    ) -> tuple[Assertion, ...]:
        """An ``assert:`` list, each item checked; ``lines``: each item's line if known."""
        if items is None:
            return ()
        if not isinstance(items, list):
            self.add(where, "'assert' must be a list of assertions ({type: ..., value: ...})")
            return ()
        found = []
        for index, item in enumerate(items):
            line = lines[index] if index < len(lines) else where
            made = parse_assertion(item, line, self.add)
            if made is not None:
                found.append(made)
        return tuple(found)


def parse_assertion(
    item: object, line: int | None, report: _Report | None = None
) -> Assertion | None:
    """One ``{type, value, threshold}`` item, or None (and a problem reported) if it is not
    one fanout can check."""
    say: _Report = report or (lambda _line, _message: None)
    if not isinstance(item, dict):
        say(line, "an assertion is a mapping: {type: icontains, value: paris}")
        return None
    unknown = [str(k) for k in item if k not in ASSERT_KEYS]
    if unknown:
        say(line, f"unknown key {unknown[0]!r} in an assertion (it takes type, value, threshold)")
        return None
    raw_type = item.get("type")
    if not isinstance(raw_type, str) or not raw_type.strip():
        say(line, "an assertion needs a 'type' (one of " + ", ".join(ASSERTION_TYPES) + ")")
        return None
    name = raw_type.strip().lower()
    negate = name.startswith("not-")
    kind = ALIASES.get(name.removeprefix("not-"), name.removeprefix("not-"))
    if kind not in ASSERTION_TYPES:
        close = difflib.get_close_matches(kind, ASSERTION_TYPES, n=1, cutoff=0.75)
        hint = f"did you mean {close[0]!r}?" if close else f"one of {', '.join(ASSERTION_TYPES)}"
        say(line, f"unknown assertion type {raw_type!r} ({hint})")
        return None
    if negate and kind not in NEGATABLE:
        say(line, f"{kind} cannot be negated with not-")
        return None
    return _assertion_value(kind, negate, item.get("value"), item.get("threshold"), line, say)


def _assertion_value(
    kind: str, negate: bool, value: object, threshold: object, line: int | None, say: _Report
) -> Assertion | None:
    made = Assertion(kind, negate, line=line)
    if threshold is not None and kind != "rubric":
        say(line, f"{kind} takes no threshold (only a rubric does: its lowest passing score)")
        return None
    if kind in TEXT or kind == "rubric":
        if value is not None and not isinstance(value, str | int | float):
            say(line, f"{kind} takes a text value, not {type(value).__name__}")
            return None
        text = None if value is None else str(value)
        if kind == "regex" and text is not None:
            try:
                re.compile(text)
            except re.error as exc:
                say(line, f"regex {text!r} does not compile: {exc}")
                return None
        if kind == "rubric":
            return _rubric(made, text, threshold, line, say)
        return replace(made, text=text)
    if kind in TEXTS:
        texts = [value] if isinstance(value, str) else value
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            say(line, f"{kind} takes a list of texts: [paris, Paris]")
            return None
        return replace(made, texts=tuple(str(t) for t in texts))
    if kind in ("is-json", "json-schema"):
        return _schema(made, value, line, say)
    return _ceiling(made, value, line, say)


def _rubric(
    made: Assertion, text: str | None, threshold: object, line: int | None, say: _Report
) -> Assertion | None:
    if not text or not text.strip():
        say(line, "a rubric needs a value: what a good answer does, in words")
        return None
    if threshold is not None and (
        not isinstance(threshold, int | float) or isinstance(threshold, bool)
    ):
        say(line, "a rubric's threshold is a number from 0 to 1")
        return None
    if threshold is not None and not 0 <= float(threshold) <= 1:
        say(line, f"a rubric's threshold is from 0 to 1, not {threshold}")
        return None
    return replace(made, text=text, threshold=None if threshold is None else float(threshold))


def _schema(made: Assertion, value: object, line: int | None, say: _Report) -> Assertion | None:
    if value is None and made.kind == "is-json":
        return made
    if not isinstance(value, dict):
        say(line, f"{made.kind} takes a JSON Schema (a mapping) as its value")
        return None
    try:
        from jsonschema import validators
        from jsonschema.exceptions import SchemaError
    except ImportError:
        say(line, f"{made.kind} with a schema needs the jsonschema package: pip install jsonschema")
        return None
    try:
        validators.validator_for(value).check_schema(value)
    except SchemaError as exc:
        say(line, f"not a valid JSON Schema: {exc.message}")
        return None
    return replace(made, schema=value)


def _ceiling(made: Assertion, value: object, line: int | None, say: _Report) -> Assertion | None:
    unit = {"max-length": "characters", "cost": "USD", "latency": "seconds"}[made.kind]
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        say(line, f"{made.kind} takes a number of {unit} (0 or more)")
        return None
    if made.kind == "max-length" and not float(value).is_integer():
        say(line, "max-length takes a whole number of characters")
        return None
    return replace(made, number=float(value))


def render_template(template: str, values: Mapping[str, str]) -> tuple[str, list[str]]:
    """``template`` with each ``{{name}}`` replaced; and the names it uses that ``values``
    lacks (left as they were)."""
    missing: list[str] = []

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in values:
            return values[name]
        missing.append(name)
        return match.group(0)

    return _VARIABLE.sub(fill, template), missing


def _scalar(value: object) -> str | None:
    """A variable's value as text (numbers and booleans as YAML wrote them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return None


@dataclass
class _RawCase:
    """A case as read, before its template and values are filled in."""

    id: str | None
    vars: dict[str, str]
    expected: str | None
    assertions: tuple[Assertion, ...]
    prompt: str | None
    description: str | None
    line: int | None


def _finish_cases(
    raw: Sequence[_RawCase], template: str | None, shared: Sequence[Assertion], out: _Collector
) -> list[Case]:
    """Cases with their prompts rendered, ids given and checked, shared assertions added."""
    cases: list[Case] = []
    seen: dict[str, int | None] = {}
    for number, item in enumerate(raw, 1):
        case_id = item.id or str(number)
        if case_id in seen:
            out.add(item.line, f"case id {case_id!r} appears twice (first on line {seen[case_id]})")
            continue
        seen[case_id] = item.line
        values = dict(item.vars)
        if item.expected is not None:
            values.setdefault("expected", item.expected)
        source = item.prompt if item.prompt is not None else template
        if source is None:
            out.add(item.line, f"case {case_id}: no prompt (give 'prompt' or --prompt)")
            continue
        prompt, missing = render_template(source, values)
        if missing:
            names = ", ".join("{{" + m + "}}" for m in dict.fromkeys(missing))
            out.add(item.line, f"case {case_id}: the prompt uses {names}, which it does not set")
            continue
        if not prompt.strip():
            out.add(item.line, f"case {case_id}: the prompt is empty")
            continue
        checks = [*shared, *item.assertions]
        if not checks and item.expected is not None:
            checks = [Assertion("equals", text=item.expected, line=item.line)]
        filled = [_filled(a, values, item.expected) for a in checks]
        cases.append(
            Case(case_id, prompt, values, item.expected, tuple(filled), item.description, item.line)
        )
    return cases


def _filled(assertion: Assertion, values: Mapping[str, str], expected: str | None) -> Assertion:
    """An assertion with ``{{var}}`` filled in its texts; a text assertion with no value
    takes the case's expected value."""
    text = assertion.text
    if text is None and assertion.kind in TEXT:
        text = expected
    if text is not None:
        text = render_template(text, values)[0]
    texts = tuple(render_template(t, values)[0] for t in assertion.texts)
    return replace(assertion, text=text, texts=texts)


class _YamlReader(_Collector):
    def __init__(self, path: Path, text: str, prompt: str | None) -> None:
        super().__init__(str(path))
        self.path, self.text, self.prompt = path, text, prompt
        self.lines = _Lines(text)

    def read(self) -> tuple[EvalSpec | None, list[Problem]]:
        try:
            data = read_yaml_mapping(self.source, self.text, "a 'tests:' list")
        except ConfigError as exc:
            message = _without_source(str(exc), self.source)
            found = re.match(r"(\d+): (.*)", message)
            line, message = (int(found.group(1)), found.group(2)) if found else (None, message)
            return None, [Problem(self.source, line, message)]
        for key in data:
            if key not in TOP_KEYS:
                self.add(self.lines.of(str(key)), f"unknown key {key!r} (an eval file has "
                         f"{', '.join(TOP_KEYS)})")  # fmt: skip
        template = self.prompt or self._text_field(data, "prompt")
        description = self._text_field(data, "description")
        grader = self._text_field(data, "grader")
        shared = self.assertions(data.get("assert"), self.lines.of("assert"), self._items("assert"))
        raw = self._tests(data.get("tests"))
        if "agents" not in data and any(k in data for k in PANEL_KEYS):
            extra = next(k for k in PANEL_KEYS if k in data)
            self.add(self.lines.of(extra), f"'{extra}:' belongs to an 'agents:' section")
        panel = {k: data[k] for k in PANEL_KEYS if k in data} if "agents" in data else None
        cases = _finish_cases(raw, template, shared, self)
        if raw and template is None and all(c.prompt is None for c in raw):
            self.add(None, "no 'prompt': the template every case is asked with")
        spec = EvalSpec(self.source, cases, description, panel, self.text, grader)
        return spec, sorted(self.problems, key=lambda p: p.line or 0)

    def _text_field(self, data: Mapping[str, object], key: str) -> str | None:
        value = data.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            self.add(self.lines.of(key), f"'{key}' must be non-empty text")
            return None
        return value

    def _items(self, *path: str | int) -> list[int | None]:
        return self.lines.items(*path)

    def _tests(self, tests: object) -> list[_RawCase]:
        where = self.lines.of("tests")
        if isinstance(tests, str):
            dataset = (self.path.parent / tests).resolve()
            try:
                text = _read(dataset)
            except ConfigError as exc:
                self.add(where, f"tests: {_without_source(str(exc), str(dataset))}")
                return []
            reader = _DatasetReader(str(dataset), text, dataset.suffix.lower(), None)
            self.problems.extend(reader.problems)
            return reader.raw
        if not isinstance(tests, list) or not tests:
            self.add(where, "'tests' must be a non-empty list of cases (or a .csv/.jsonl file)")
            return []
        raw = []
        for index, test in enumerate(tests):
            line = self.lines.of("tests", index)
            if not isinstance(test, dict):
                self.add(line, "a test is a mapping: {vars: {...}, assert: [...]}")
                continue
            made = self._test(test, index, line)
            if made is not None:
                raw.append(made)
        return raw

    def _test(self, test: Mapping[object, object], index: int, line: int | None) -> _RawCase | None:
        for key in test:
            if key not in TEST_KEYS:
                takes = ", ".join(TEST_KEYS)
                where = self.lines.of("tests", index, str(key))
                self.add(where, f"unknown key {key!r} in a test (it takes {takes})")
        values: dict[str, str] = {}
        given = test.get("vars") or {}
        if not isinstance(given, dict):
            self.add(self.lines.of("tests", index, "vars"), "'vars' must be a mapping")
            given = {}
        for name, value in given.items():
            text = _scalar(value)
            if text is None:
                where = self.lines.of("tests", index, "vars", str(name))
                self.add(where, f"variable {name!r} must be text or a number")
                continue
            values[str(name)] = text
        raw_id = test.get("id")
        expected = _scalar(test.get("expected")) if test.get("expected") is not None else None
        prompt = test.get("prompt")
        items = self._items("tests", index, "assert")
        return _RawCase(
            None if raw_id is None else str(raw_id),
            values,
            expected,
            self.assertions(test.get("assert"), self.lines.of("tests", index, "assert"), items),
            prompt if isinstance(prompt, str) else None,
            str(test["description"]) if test.get("description") is not None else None,
            line,
        )


class _DatasetReader(_Collector):
    """Cases from a CSV or JSONL dataset: a row a case."""

    SPECIAL = ("id", "prompt", "expected", "assert", "description", "vars")

    def __init__(self, source: str, text: str, suffix: str, prompt: str | None) -> None:
        super().__init__(source)
        self.prompt = prompt
        rows = self._csv(text) if suffix == ".csv" else self._jsonl(text)
        self.raw = [case for case in rows if case is not None]
        if not self.raw and not self.problems:
            self.add(None, "no cases in the dataset")

    def spec(self) -> EvalSpec | None:
        cases = _finish_cases(self.raw, self.prompt, (), self)
        self.problems.sort(key=lambda p: p.line or 0)
        return EvalSpec(self.source, cases)

    def _csv(self, text: str) -> Iterator[_RawCase | None]:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            for number, row in enumerate(reader, 2):
                yield self._row({k: v for k, v in row.items() if k is not None}, number)
        except csv.Error as exc:
            self.add(reader.line_num, f"not valid CSV: {exc}")

    def _jsonl(self, text: str) -> Iterator[_RawCase | None]:
        for number, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except (ValueError, RecursionError):
                self.add(number, "not a JSON object")
                continue
            if not isinstance(item, dict):
                self.add(number, "a case is a JSON object")
                continue
            yield self._row(item, number)

    def _row(self, row: Mapping[str, object], line: int) -> _RawCase | None:
        values: dict[str, str] = {}
        given = row.get("vars")
        source = given if isinstance(given, dict) else row
        for name, value in source.items():
            if source is row and (name in self.SPECIAL or str(name).startswith("__expected")):
                continue
            text = _scalar(value) if value is not None else ""
            if text is None:
                self.add(line, f"variable {name!r} must be text or a number")
                return None
            values[str(name)] = text
        checks = list(self._expected_columns(row, line))
        listed = row.get("assert")
        if isinstance(listed, str) and listed.strip():
            try:
                listed = json.loads(listed)
            except ValueError:
                self.add(line, "the 'assert' column must be a JSON list of assertions")
                listed = None
        if listed:
            checks.extend(self.assertions(listed, line))
        expected = row.get("expected")
        prompt = row.get("prompt")
        raw_id = row.get("id")
        return _RawCase(
            None if raw_id in (None, "") else str(raw_id),
            values,
            None if expected in (None, "") else _scalar(expected),
            tuple(checks),
            prompt if isinstance(prompt, str) and prompt.strip() else None,
            None,
            line,
        )

    def _expected_columns(self, row: Mapping[str, object], line: int) -> Iterator[Assertion]:
        """promptfoo's ``__expected`` columns: ``icontains: paris``, ``is-json`` or a plain
        value (equals)."""
        for name, value in row.items():
            if not str(name).startswith("__expected") or not isinstance(value, str):
                continue
            if not value.strip():
                continue
            kind, sep, rest = value.partition(":")
            kind = kind.strip().lower()
            known = ALIASES.get(kind.removeprefix("not-"), kind.removeprefix("not-"))
            if (sep and known in ASSERTION_TYPES) or value.strip().lower() == "is-json":
                item: dict[str, object] = {"type": kind}
                body = rest.strip()
                if known in TEXTS:
                    item["value"] = [t.strip() for t in body.split(",")]
                elif known in ("max-length", "cost", "latency"):
                    try:
                        item["value"] = float(body)
                    except ValueError:
                        item["value"] = body
                elif body:
                    item["value"] = body
                made = parse_assertion(item, line, self.add)
            else:
                made = Assertion("equals", text=value, line=line)
            if made is not None:
                yield made
