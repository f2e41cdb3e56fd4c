"""Flow files: multi-stage pipelines in YAML, loaded, checked and turned into a run's options.

A flow names its inputs and its stages; each stage is a panel (personas in parallel) or one
agent, with a prompt template that may use the inputs (``{{topic}}``) and the answers of
earlier stages (``{{research}}``: every answer, labelled; ``{{research.physicist}}``: one).
The stages themselves are built by ``shapes.flow`` from the definition this module records in
the run's options, so a stored run is carried on (``runs retry``) without the file.

Every problem is one ``ConfigError`` line, ``file:line: problem``, as for the agents file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fanout.config import _MESSAGES as _AGENT_MESSAGES
from fanout.config import (
    AgentSpec,
    Panel,
    PanelSpec,
    YamlFile,
    _AgentFields,
    _one_line,
    _parse_yaml,
    _read_text,
    _suggest,
    collector_paused,
    panel_of,
)
from fanout.config import _describe as _describe_yaml
from fanout.errors import ConfigError
from fanout.shapes import flow_steps
from fanout.shapes.flow import OUTPUT_STAGE, TEMPLATE

STAGE_ID = r"^[A-Za-z][A-Za-z0-9_-]*$"


class InputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    required: bool = False
    default: str | None = None
    description: str | None = None


class StageSpec(BaseModel):
    """One stage as written: ``panel: [...]`` or ``agent: name``, and its prompt."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: str = Field(pattern=STAGE_ID)
    panel: list[str] | None = Field(default=None, min_length=1)
    agent: str | None = Field(default=None, min_length=1)
    prompt: str = Field(min_length=1)
    on_error: Literal["stop", "continue"] = "stop"
    min_success: int | None = Field(default=None, ge=1)
    then: str = "none"

    @property
    def personas(self) -> list[str]:
        return list(dict.fromkeys(self.panel or [])) if self.panel else [self.agent or ""]

    @property
    def follow_id(self) -> str | None:
        """The id of the stage ``then:`` adds (``review-synthesis``), if any: a step some
        shape lends a flow (``Shape.steps``)."""
        step = flow_steps().get(self.then)
        return f"{self.id}-{step.suffix}" if step else None


class FlowSpec(BaseModel):
    """A flow file as written (``agents:`` and ``defaults:`` as in an agents file)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str | None = None
    description: str | None = None
    inputs: dict[str, InputSpec] = Field(default_factory=dict)
    defaults: _AgentFields | None = None
    agents: list[AgentSpec] | None = None
    stages: list[StageSpec] = Field(min_length=1)
    output: list[str] | None = None

    @field_validator("inputs", mode="before")
    @classmethod
    def _bare_inputs(cls, value: Any) -> Any:
        # `inputs: {topic: }` or `inputs:` with nothing under it: inputs with no settings.
        if value is None:
            return {}
        if isinstance(value, dict):
            return {k: {} if v is None else v for k, v in value.items()}
        return value


@dataclass(frozen=True)
class Flow:
    """A checked flow: its definition (what a run records), the personas it asks and the
    panel they come from (the agents file's, with the flow's own ``agents:`` over it)."""

    source: str
    spec: FlowSpec
    panel: Panel

    @property
    def name(self) -> str:
        return self.spec.name or Path(self.source).stem

    @property
    def personas(self) -> list[str]:
        """Every persona the flow asks, in order of first use."""
        return list(dict.fromkeys(p for s in self.spec.stages for p in s.personas))

    def options(self, inputs: Mapping[str, str]) -> dict[str, Any]:
        """The run's options: the definition (without personas: those are recorded as the
        run's agents) and the inputs, all a carried-on run needs."""
        definition = self.spec.model_dump(exclude={"agents", "defaults"}, exclude_none=True)
        return {"flow": definition, "inputs": dict(inputs)}

    def prompt(self, inputs: Mapping[str, str]) -> str:
        """What the history lists as the run's prompt."""
        given = ", ".join(f"{k}={v}" for k, v in inputs.items())
        return f"flow {self.name}" + (f": {given}" if given else "")

    def inputs(self, given: Mapping[str, str]) -> dict[str, str]:
        """The inputs of a run: those given, then defaults; ConfigError for one that is
        unknown or required and missing."""
        declared = self.spec.inputs
        for key in given:
            if key not in declared:
                raise ConfigError(
                    f"{self.source}: -i {key}: the flow has no input {key!r}"
                    f"{_suggest(key, declared)}"
                    + (f" (its inputs: {', '.join(declared)})" if declared else "")
                )
        values: dict[str, str] = {}
        for key, spec in declared.items():
            if key in given:
                values[key] = given[key]
            elif spec.default is not None:
                values[key] = spec.default
            elif spec.required:
                raise ConfigError(f"{self.source}: input {key!r} is required: give -i {key}=...")
        return values


def load_flow(path: Path, panel: Panel) -> Flow:
    """Read and check a flow file against ``panel`` (the agents file's personas)."""
    return _flow_from_text(str(path), _read_text(path), panel)


def flow_from_definition(definition: object, panel: Panel, source: str = "options.flow") -> Flow:
    """Check a flow given as a mapping (a server request's ``options.flow``) as a file is:
    written out as JSON, which YAML reads, so a problem names its line there."""
    import json

    try:
        text = json.dumps(definition, indent=1, ensure_ascii=False)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: not a flow definition (a mapping of stages...)") from None
    return _flow_from_text(source, text, panel)


def _flow_from_text(source: str, text: str, panel: Panel) -> Flow:
    with collector_paused():
        # Read once: every check below finds its line in these nodes, not in the text again.
        document = _parse_yaml(source, text, what="a 'stages:' list")
        try:
            spec = FlowSpec.model_validate(document.data)
        except ValidationError as exc:
            raise ConfigError(_one_line(_describe(document, exc))) from None
        if spec.agents:
            panel = _with_own_agents(document, panel, spec)
        problems = _check(document, spec, {a.name for a in panel.agents})
    if problems:
        raise FlowProblems(_in_file_order(source, problems))
    return Flow(source, spec, panel)


def _in_file_order(source: str, problems: list[str]) -> list[str]:
    """The problems by their line in ``source`` (a stage's checks run in their own order);
    one with no line stays where it was found, after those before it."""
    where = re.compile(re.escape(source) + r":(\d+):")
    lines: list[int] = []
    for problem in problems:
        found = where.match(problem)
        lines.append(int(found.group(1)) if found else (lines[-1] if lines else 0))
    order = sorted(range(len(problems)), key=lambda i: lines[i])  # stable: ties keep order
    return [problems[i] for i in order]


class FlowProblems(ConfigError):
    """Every problem the checks found in a flow file, in file order; it reads as the first
    (and how many more there are: ``fanout flow check`` lists them all)."""

    def __init__(self, problems: list[str]) -> None:
        more = f" (and {len(problems) - 1} more: fanout flow check)" if len(problems) > 1 else ""
        super().__init__(problems[0] + more)
        self.problems = problems


def parse_inputs(pairs: Sequence[str]) -> dict[str, str]:
    """``-i key=value`` flags as a mapping; ConfigError for one without ``=``."""
    given: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"-i {pair!r}: write it as name=value")
        given[key.strip()] = value
    return given


def references(template: str) -> list[tuple[str, str | None]]:
    """The ``(name, persona)`` pairs a prompt template refers to, in order."""
    return [(m.group(1), m.group(2)) for m in TEMPLATE.finditer(template)]


# -- checks ------------------------------------------------------------------------------------


def _with_own_agents(document: YamlFile, panel: Panel, spec: FlowSpec) -> Panel:
    """The flow's ``agents:`` over the agents file's personas (a name in both: the flow's),
    checked and resolved as an agents file's are."""
    own = PanelSpec(defaults=spec.defaults or _AgentFields(), agents=spec.agents or [])
    resolved = panel_of(document, own, {})
    mine = {a.name: a for a in resolved.agents}
    agents = [mine.pop(a.name, a) for a in panel.agents] + list(mine.values())
    return replace(panel, agents=agents)


def _check(document: YamlFile, spec: FlowSpec, personas: set[str]) -> list[str]:
    """What pydantic cannot see: names, references, order, cycles. Every problem, in file
    order (a stage's problems do not stop the checks of the others)."""
    problems: list[str] = []
    stages = spec.stages
    order: dict[str, int] = {}  # every referable stage name -> the index of its stage
    for index, stage in enumerate(stages):
        where = document.where(("stages", index, "id"))
        if stage.id == OUTPUT_STAGE or stage.id in order:
            problem = "is reserved" if stage.id == OUTPUT_STAGE else "appears twice"
            problems.append(_one_line(f"{where}: stage id {stage.id!r} {problem}"))
            continue
        order[stage.id] = index
        step = flow_steps().get(stage.then)
        added = [*step.before(stage.id), f"{stage.id}-{step.suffix}"] if step else []
        for name in added:
            if name in order:
                problems.append(
                    _one_line(f"{where}: stage id {name!r} (added by then: {stage.then}) is taken")
                )
                continue
            order[name] = index
    for index, stage in enumerate(stages):
        problems += _check_stage(document, spec, index, stage, personas, order)
    for position, name in enumerate(spec.output or []):
        if name not in order:
            where = document.where(("output", position))
            problems.append(_one_line(f"{where}: output: no stage {name!r}{_suggest(name, order)}"))
    return problems


def _check_stage(
    document: YamlFile,
    spec: FlowSpec,
    index: int,
    stage: StageSpec,
    personas: set[str],
    order: dict[str, int],
) -> list[str]:
    at = ("stages", index)
    if (stage.panel is None) == (stage.agent is None):
        return [
            f"{document.where((*at, 'id'))}: stage {stage.id!r}: give either panel: "
            "[personas] or agent: persona"
        ]
    problems: list[str] = []
    key = "panel" if stage.panel is not None else "agent"
    for position, name in enumerate(stage.panel or [stage.agent or ""]):
        if name not in personas:
            loc = (*at, key, position) if key == "panel" else (*at, key)
            problems.append(
                _one_line(
                    f"{document.where(loc)}: stage {stage.id!r}: unknown persona "
                    f"{name!r}{_suggest(name, personas)}"
                )
            )
    if stage.min_success is not None and stage.min_success > len(stage.personas):
        where = document.where((*at, "min_success"))
        problems.append(
            _one_line(
                f"{where}: stage {stage.id!r}: min_success {stage.min_success} is more than "
                f"its {len(stage.personas)} persona(s) can give"
            )
        )
    problems += _check_then(document.where((*at, "then")), stage)
    where = document.where((*at, "prompt"))
    problems += _check_references(where, spec, index, stage, order)
    return problems


def _check_references(
    where: str, spec: FlowSpec, index: int, stage: StageSpec, order: dict[str, int]
) -> list[str]:
    """What a stage's prompt refers to: inputs, and stages that run before it."""
    problems: list[str] = []
    for name, persona in references(stage.prompt):
        if name in spec.inputs:
            if persona is not None:
                problems.append(
                    _one_line(f"{where}: {{{{{name}.{persona}}}}}: {name!r} is an input")
                )
            continue
        if name not in order:
            problems.append(
                _one_line(
                    f"{where}: {{{{{name}}}}} is neither an input nor a stage"
                    f"{_suggest(name, [*spec.inputs, *order])} (declare it under inputs:)"
                )
            )
            continue
        target = order[name]
        if target >= index:
            cycle = _cycle(spec, order, index, target)
            problem = (
                f"a cycle: {' -> '.join(cycle)}"
                if cycle
                else f"refers to stage {name!r}, which "
                + ("is this one" if target == index else "comes later (stages run in order)")
            )
            problems.append(_one_line(f"{where}: stage {stage.id!r}: {problem}"))
            continue
        source_stage = spec.stages[target]
        if persona is not None:
            answers = source_stage.personas if name == source_stage.id else []
            if persona not in answers:
                problems.append(
                    _one_line(
                        f"{where}: {{{{{name}.{persona}}}}}: stage {name!r} does not ask "
                        f"{persona!r}{_suggest(persona, answers)}"
                    )
                )
    return problems


def _check_then(where: str, stage: StageSpec) -> list[str]:
    """``then:`` names a step some shape lends a flow, and the stage has the personas it
    needs."""
    steps = flow_steps()
    if stage.then != "none" and stage.then not in steps:
        known = ", ".join(["none", *steps])
        problem = f"then: unknown step {stage.then!r}{_suggest(stage.then, steps)} (known: {known})"
        return [_one_line(f"{where}: stage {stage.id!r}: {problem}")]
    step = steps.get(stage.then)
    if step is not None and len(stage.personas) < step.least:
        return [
            _one_line(
                f"{where}: stage {stage.id!r}: then: {stage.then} needs at least {step.least} "
                f"personas ({step.least_why}); it has {len(stage.personas)}"
            )
        ]
    return []


def _cycle(spec: FlowSpec, order: dict[str, int], start: int, target: int) -> list[str] | None:
    """The stage ids of a chain of references from ``target`` back to ``start``, if any."""
    stages = spec.stages
    path = [stages[start].id, stages[target].id]
    seen = {target}

    def walk(at: int) -> bool:
        if at == start:
            return True
        for name, _ in references(stages[at].prompt):
            nxt = order.get(name)
            if nxt is None or nxt in seen:
                if nxt == start:
                    path.append(stages[start].id)
                    return True
                continue
            seen.add(nxt)
            path.append(stages[nxt].id)
            if walk(nxt):
                return True
            path.pop()
        return False

    if target == start:
        return None
    return path if walk(target) else None


def _describe(document: YamlFile, exc: ValidationError) -> str:
    """One line for the first validation error, by the agents file's describer (its words for
    a persona's fields, a URL's key masked), with the flow's own keys and words."""
    return _describe_yaml(
        document, exc, allowed=_allowed_keys, messages=_MESSAGES, unknown_first=True
    )


_MESSAGES = {
    **_AGENT_MESSAGES,
    ("model_type", ""): "expected a mapping",
    ("string_pattern_mismatch", "id"): "must start with a letter; letters, digits, _ and -",
    ("too_short", "stages"): "the flow needs at least one stage",
    ("too_short", "panel"): "a panel needs at least one persona",
    ("literal_error", "on_error"): "must be stop or continue",
}


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    if len(loc) == 1:
        return list(FlowSpec.model_fields)
    if loc[0] == "stages":
        return list(StageSpec.model_fields)
    if loc[0] == "inputs":
        return list(InputSpec.model_fields)
    if loc[0] == "agents":
        return list(AgentSpec.model_fields)
    return list(_AgentFields.model_fields)
