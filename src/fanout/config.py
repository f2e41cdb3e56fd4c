"""Find, read and validate the agents file, and resolve it into ready-to-run agents.

Lookup order: ``--config``, ``$FANOUT_CONFIG``, ``./agents.yaml``, the user config dir
(``~/.config/fanout/agents.yaml`` on Linux), then the panel shipped inside the package.
Every problem becomes one ``ConfigError`` line naming the file (and the line, where YAML knows it).
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fanout.cost import DEFAULT_COMPLETION_ESTIMATE, Price
from fanout.errors import ConfigError
from fanout.models import OPENAI_BASE_URL, Agent, Endpoint, Limits

CONFIG_ENV = "FANOUT_CONFIG"
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces
CONFIG_NAME = "agents.yaml"
DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_SYNTHESIS_INSTRUCTIONS = (
    "You are the moderator of a panel of experts. You receive a question and the panel's answers. "
    "Write one answer that keeps what the answers agree on, states plainly where they disagree "
    "and why, and credits each distinct insight to the persona who gave it. Be concise."
)
DEFAULT_JUDGE_INSTRUCTIONS = (
    "You are an impartial judge. You receive a question and candidate answers labelled A, B, "
    "C... in no particular order. Pick the answer that best serves the person who asked: "
    "correct, complete, clear and concise, in that order. Judge the content, not the length, "
    "the position or the label. If no candidate is better than the others, say tie."
)


class _AgentFields(BaseModel):
    """Fields a persona, the defaults and the synthesizer share."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    description: str | None = None
    instructions: str | None = None
    model: str | None = Field(default=None, min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, gt=0)
    stop: list[str] | None = Field(default=None, max_length=4)
    base_url: str | None = Field(default=None, pattern=r"^(https?://\S+|local)$")
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    timeout: float | None = Field(default=None, gt=0)
    rpm: float | None = Field(default=None, gt=0, le=1e6)
    tpm: float | None = Field(default=None, gt=0, le=1e10)
    concurrency: int | None = Field(default=None, ge=1)

    @field_validator("base_url")
    @classmethod
    def _a_usable_url(cls, value: str | None) -> str | None:
        if value is not None and value != "local":
            try:
                parts = urlsplit(value)
                _ = parts.port  # raises on a port that is not a number in range
            except ValueError as exc:
                raise ValueError(f"not a usable URL: {exc}") from None
            if not parts.hostname:
                raise ValueError("not a usable URL: it names no host")
        return value


class AgentSpec(_AgentFields):
    name: str = Field(min_length=1, pattern=r"^[^\s,]+$")


class SynthesizerSpec(_AgentFields):
    name: str = Field(default="synthesizer", min_length=1, pattern=r"^[^\s,]+$")


class JudgeSpec(_AgentFields):
    name: str = Field(default="judge", min_length=1, pattern=r"^[^\s,]+$")


class PriceSpec(BaseModel):
    """USD per million tokens."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    input: float = Field(ge=0)
    output: float = Field(ge=0)


class PanelSpec(BaseModel):
    """The agents file as written."""

    model_config = ConfigDict(extra="forbid", strict=True)

    defaults: _AgentFields = Field(default_factory=_AgentFields)
    agents: list[AgentSpec] = Field(min_length=1)
    synthesizer: SynthesizerSpec | None = None
    judge: JudgeSpec | None = None
    pricing: dict[str, PriceSpec] = Field(default_factory=dict)

    @field_validator("defaults", "synthesizer", "judge", "pricing", mode="before")
    @classmethod
    def _empty_section_is_no_section(cls, value: Any) -> Any:
        # `defaults:` with every line commented out parses as null
        return {} if value is None else value


@dataclass(frozen=True)
class Panel:
    """A loaded agents file: its personas in file order, its synthesizer, its judge and where
    it came from."""

    source: str
    agents: list[Agent]
    synthesizer: Agent
    pricing: dict[str, Price] = field(default_factory=dict)  # the file's, over the shipped
    judge: Agent | None = None  # None: the default judge, with no defaults: applied

    def role(self, name: str) -> Agent:
        """The agent that plays ``name`` (``synthesizer``, ``judge``) in the shapes that need
        one."""
        judge = self.judge or Agent("judge", instructions=DEFAULT_JUDGE_INSTRUCTIONS)
        roles = {"synthesizer": self.synthesizer, "judge": judge}
        if name not in roles:
            raise ConfigError(f"the agents file has no {name}: section and no default for it")
        return roles[name]

    def select(self, names: Sequence[str] | None) -> list[Agent]:
        """The personas named (in the order given), or the whole panel."""
        if not names:
            return list(self.agents)
        by_name = {a.name: a for a in self.agents}
        chosen: list[Agent] = []
        for name in dict.fromkeys(names):
            if name not in by_name:
                raise ConfigError(f"unknown agent {name!r}{_suggest(name, by_name)}")
            chosen.append(by_name[name])
        return chosen


def find_config(explicit: Path | None, environ: Mapping[str, str]) -> Path | None:
    """The agents file to use, or ``None`` for the panel shipped with fanout."""
    if explicit is not None:
        return explicit
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV])
    local = Path(CONFIG_NAME)
    if local.is_file():
        return local
    from platformdirs import user_config_path

    user = user_config_path("fanout") / CONFIG_NAME
    return user if user.is_file() else None


def load_panel(path: Path | None, environ: Mapping[str, str] | None = None) -> Panel:
    """Read and validate an agents file (``None``: the shipped default panel)."""
    environ = os.environ if environ is None else environ
    if path is None:
        source, text = _read_default()
    else:
        source, text = str(path), _read_text(path)
    data = _parse_yaml(source, text)
    try:
        spec = PanelSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_one_line(_describe(source, text, data, exc))) from None
    seen: set[str] = set()
    for index, agent in enumerate(spec.agents):
        if agent.name in seen:
            line = _line_of(text, ("agents", index, "name"))
            where = f"{source}:{line}" if line else source
            raise ConfigError(_one_line(f"{where}: duplicate agent name {agent.name!r}"))
        seen.add(agent.name)
    return _resolve(source, spec, environ)


def apply_model(agents: Sequence[Agent], model: str | None) -> list[Agent]:
    """``--model``: the same agents with one model for this run."""
    return [replace(a, model=model) if model else a for a in agents]


def bound_answer(agent: Agent) -> Agent:
    """The same agent with a ``max_tokens`` (the default where none was set)."""
    return replace(agent, max_tokens=agent.max_tokens or DEFAULT_COMPLETION_ESTIMATE)


def check_credentials(agents: Sequence[Agent], environ: Mapping[str, str]) -> None:
    """Fail before any call when a remote endpoint has no key in the environment, or a key
    that cannot go in an HTTP header (a stray newline from a .env file, say)."""
    for agent in agents:
        endpoint = agent.endpoint
        key = environ.get(endpoint.api_key_env)
        if not endpoint.is_local and not key:
            raise ConfigError(
                f"agent {agent.name!r}: no API key for {endpoint.host}: set "
                f"${endpoint.api_key_env}, point base_url at a server of yours (Ollama: "
                "http://localhost:11434/v1), or add --local for the model that comes with "
                "fanout[local]"
            )
        if key and not _HEADER_SAFE.fullmatch(key):
            raise ConfigError(
                f"${endpoint.api_key_env} holds spaces, line breaks or non-ASCII characters; "
                "an API key cannot (check how it was set)"
            )


def _read_default() -> tuple[str, str]:
    packaged = resources.files("fanout") / CONFIG_NAME
    if packaged.is_file():
        return "<default panel>", packaged.read_text(encoding="utf-8")
    # Running from a source checkout: the packaged copy is the repository's top-level file.
    source_tree = Path(__file__).resolve().parents[2] / CONFIG_NAME
    return "<default panel>", _read_text(source_tree)


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not an agents file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    if b"\x00" in raw:
        raise ConfigError(f"{path}: not a text file (binary data)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None


class _StrictLoader(yaml.SafeLoader):
    """``safe_load`` that refuses a key written twice in one mapping (YAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(source: str, text: str) -> dict[str, Any]:
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: no tags run code
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = " ".join(str(exc.problem or exc.context or "invalid YAML").split())
        if isinstance(exc, yaml.constructor.ConstructorError) and "the tag" in problem:
            tag = problem.rsplit("tag:yaml.org,2002:", 1)[-1].strip("'")
            problem = f"tag !!{tag} is not allowed (agents files hold data, never code)"
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise ConfigError(f"{source}: invalid YAML: nested too deeply") from None
    if data is None:
        raise ConfigError(f"{source}: the file is empty; it needs an 'agents:' list")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping with an 'agents:' list, got {_yaml_type(data)}"
        )
    return data


def _describe(source: str, text: str, data: Any, exc: ValidationError) -> str:
    """One line for the first validation error: file, line, where in the file, what is wrong."""
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    line = _line_of(text, loc)
    where = f"{source}:{line}" if line else source
    path = _loc_name(data, loc)
    if err["type"] == "extra_forbidden":
        key = loc[-1]
        if not isinstance(key, str):  # `yes:`, `on:`, `1:` are not strings to YAML
            return f"{where}: unknown key {key!r} (quote it if it was meant as text)"
        allowed = _allowed_keys(loc)
        return f"{where}: {path}: unknown key {key!r}{_suggest(key, allowed)}"
    if err["type"] == "missing":
        return f"{where}: {path}: required key is missing"
    message = _MESSAGES.get((err["type"], str(loc[-1]) if loc else ""))
    message = message or _MESSAGES.get((err["type"], "")) or err["msg"]
    message = message.removeprefix("Value error, ")
    if "input" in err and not isinstance(err["input"], dict | list):
        message += f" (got {_yaml_type(err['input'])} {err['input']!r})"
    elif isinstance(err.get("input"), dict | list) and err["type"].endswith("_type"):
        message += f" (got {_yaml_type(err['input'])})"
    return f"{where}: {path}: {message}" if path else f"{where}: {message}"


# Our words for pydantic's, where its own would name internal classes or regexes.
_MESSAGES = {
    ("model_type", ""): "expected a mapping of settings (name: ..., model: ...)",
    ("dict_type", ""): "expected a mapping of settings",
    ("list_type", "agents"): "expected a list of personas, each starting with '- name:'",
    ("too_short", "agents"): "the panel needs at least one persona",
    ("string_pattern_mismatch", "name"): "must be a non-empty name without spaces or commas",
    ("string_pattern_mismatch", "base_url"): "must be an http:// or https:// URL, or local",
    ("string_pattern_mismatch", "api_key_env"): "must be an environment variable name",
    ("finite_number", ""): "must be a finite number",
}


def _one_line(message: str) -> str:
    """Errors are one line: a newline inside a name or key is shown escaped."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


def _loc_name(data: Any, loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    node = data
    for item in loc:
        if isinstance(item, int) and parts and isinstance(node, list):
            entry = node[item] if item < len(node) else None
            name = entry.get("name") if isinstance(entry, dict) else None
            parts[-1] += f"[{item}]" + (f" ({name})" if isinstance(name, str) else "")
        else:
            parts.append(str(item))
        try:
            node = node[item]
        except (KeyError, IndexError, TypeError):
            node = None
    return ".".join(parts)


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    if len(loc) == 1:
        return list(PanelSpec.model_fields)
    if loc[0] == "agents":
        return list(AgentSpec.model_fields)
    if loc[0] == "synthesizer":
        return list(SynthesizerSpec.model_fields)
    if loc[0] == "judge":
        return list(JudgeSpec.model_fields)
    if loc[0] == "pricing":
        return list(PriceSpec.model_fields)
    return list(_AgentFields.model_fields)


def _line_of(text: str, loc: tuple[Any, ...]) -> int | None:
    """The 1-based line of the YAML node at ``loc`` (the key itself for unknown keys)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    line = node.start_mark.line if node is not None else None
    for item in loc:
        if isinstance(node, yaml.MappingNode):
            match = [(k, v) for k, v in node.value if getattr(k, "value", None) == item]
            if not match:
                return None if line is None else line + 1
            key, node = match[0]
            line = key.start_mark.line
        elif isinstance(node, yaml.SequenceNode) and isinstance(item, int):
            if item >= len(node.value):
                break
            node = node.value[item]
            line = node.start_mark.line
        else:
            break
    return None if line is None else line + 1


def _yaml_type(value: Any) -> str:
    names = {
        list: "a list",
        dict: "a mapping",
        str: "a string",
        int: "a number",
        float: "a number",
        bool: "a boolean",
    }
    return names.get(type(value), type(value).__name__)


def _suggest(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _resolve(source: str, spec: PanelSpec, environ: Mapping[str, str]) -> Panel:
    defaults = spec.defaults
    env_base_url = environ.get("OPENAI_BASE_URL") or OPENAI_BASE_URL

    def build(fields: _AgentFields, name: str) -> Agent:
        def pick(key: str) -> Any:
            value = getattr(fields, key)
            return getattr(defaults, key) if value is None else value

        return Agent(
            name=name,
            instructions=pick("instructions") or "",
            description=pick("description") or "",
            model=pick("model") or DEFAULT_MODEL,
            temperature=pick("temperature"),
            top_p=pick("top_p"),
            max_tokens=pick("max_tokens"),
            stop=tuple(pick("stop")) if pick("stop") else None,
            timeout=pick("timeout"),
            endpoint=Endpoint(
                base_url=(pick("base_url") or env_base_url).rstrip("/"),
                api_key_env=pick("api_key_env") or "OPENAI_API_KEY",
            ),
            limits=Limits(rpm=pick("rpm"), tpm=pick("tpm"), concurrency=pick("concurrency")),
        )

    agents = [build(a, a.name) for a in spec.agents]
    synth_spec = spec.synthesizer or SynthesizerSpec()
    # The defaults' instructions speak to personas; the synthesizer gets its own brief.
    synthesizer = replace(
        build(synth_spec, synth_spec.name),
        instructions=synth_spec.instructions or DEFAULT_SYNTHESIS_INSTRUCTIONS,
    )
    judge_spec = spec.judge or JudgeSpec()
    judge = replace(
        build(judge_spec, judge_spec.name),
        instructions=judge_spec.instructions or DEFAULT_JUDGE_INSTRUCTIONS,
    )
    pricing = {model: Price(p.input, p.output) for model, p in spec.pricing.items()}
    return Panel(
        source=source, agents=agents, synthesizer=synthesizer, pricing=pricing, judge=judge
    )
