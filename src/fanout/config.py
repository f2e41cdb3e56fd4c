"""Find, read and validate the agents file, and resolve it into ready-to-run agents.

Lookup order: ``--config``, ``$FANOUT_CONFIG``, ``./agents.yaml``, the user config dir
(``~/.config/fanout/agents.yaml`` on Linux), then the panel shipped inside the package.
Every problem becomes one ``ConfigError`` line naming the file (and the line, where YAML knows it).
"""

from __future__ import annotations

import difflib
import gc
import ipaddress
import os
import re
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, BinaryIO

import idna  # httpx's own IDNA codec: a host we accept is one httpx can encode
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    field_validator,
    model_validator,
)

from fanout.cost import DEFAULT_COMPLETION_ESTIMATE, Price
from fanout.errors import ConfigError
from fanout.models import OPENAI_BASE_URL, Agent, Endpoint, Fallback, Limits
from fanout.params import (
    BOTH_BOUNDS,
    MASK,
    REQUEST_FIELDS,
    RequestParams,
    extra_body_problem,
    header_problem,
    header_variables,
    plain_message,
    unknown_field,
    variant_of,
    with_params,
)

CONFIG_ENV = "FANOUT_CONFIG"
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces
CONFIG_NAME = "agents.yaml"
MAX_CONFIG_BYTES = 4 * 1024 * 1024  # a panel is a few KB; more is a mistake, or /dev/zero
MAX_URL_CHARS = 2048
MAX_NESTING = 64
# Bounds a number can meet on its way to a request, a timer or a cost (int * price): past
# them it overflows a C timeval or a float rather than meaning anything (MAX_ANSWER_TOKENS too).
MAX_CONCURRENCY = 1_000
MAX_TIMEOUT_S = 86_400.0
MAX_CONTEXT_TOKENS = 100_000_000
MAX_PRICE = 1_000_000.0  # USD per million tokens
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

ROLE_INSTRUCTIONS = {
    "router": (
        "You route questions to a panel of experts. Given a question and the panel's members "
        "with what each is good at, pick the few whose view is worth asking, and say why in "
        "one sentence."
    ),
    "orchestrator": (
        "You answer the user's question. You may consult experts through your tools, several "
        "at once when their views are independent; ask each a precise question. When you know "
        "enough, write the final answer yourself, crediting the experts you relied on."
    ),
}


class FallbackSpec(BaseModel):
    """A fallback written out: a model, and where it is if not on the persona's endpoint."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(min_length=1)
    base_url: str | None = None
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    @field_validator("base_url")
    @classmethod
    def _a_server(cls, value: str | None) -> str | None:
        problem = "a fallback is on a server, not local" if value == "local" else None
        problem = problem or (base_url_problem(value) if value is not None else None)
        if problem:
            raise ValueError(problem)
        return value


class _AgentFields(RequestParams):
    """Fields a persona, the defaults and the synthesizer share: the request fields fanout
    knows (``RequestParams``: at the top, or under ``params:``) and how to reach the model."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    description: str | None = None
    instructions: str | None = None
    model: str | None = Field(default=None, min_length=1)
    params: RequestParams | None = None
    extra_body: dict[str, JsonValue] | None = None
    extra_headers: dict[str, str] | None = None
    # Tried in order when the model gives up for a reason another may not have.
    fallbacks: list[FallbackSpec] | None = Field(default=None, max_length=10)
    base_url: str | None = None
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    timeout: float | None = Field(default=None, gt=0, le=MAX_TIMEOUT_S)
    rpm: float | None = Field(default=None, gt=0, le=1e6)
    tpm: float | None = Field(default=None, gt=0, le=1e10)
    concurrency: int | None = Field(default=None, ge=1, le=MAX_CONCURRENCY)
    max_context_tokens: int | None = Field(default=None, gt=0, le=MAX_CONTEXT_TOKENS)

    @field_validator("base_url")
    @classmethod
    def _a_usable_url(cls, value: str | None) -> str | None:
        if value is not None and value != "local":
            problem = base_url_problem(value)
            if problem:
                raise ValueError(problem)
        return value

    @field_validator("fallbacks", mode="before")
    @classmethod
    def _model_names(cls, value: object) -> object:
        # A model name alone is a fallback on the persona's own endpoint.
        if isinstance(value, list):
            return [{"model": item} if isinstance(item, str) else item for item in value]
        return value

    @field_validator("extra_body")
    @classmethod
    def _no_own_fields(cls, value: dict[str, JsonValue] | None) -> dict[str, JsonValue] | None:
        problem = extra_body_problem(value or {})
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("extra_headers")
    @classmethod
    def _sendable(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for name, text in (value or {}).items():
            problem = header_problem(name, text)
            if problem:
                raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _each_field_once(self) -> _AgentFields:
        given = {k for k in self.model_fields_set if k in REQUEST_FIELDS}
        nested = set(self.params.model_fields_set) if self.params is not None else set()
        twice = sorted(given & nested)
        if twice:
            raise ValueError(f"{twice[0]} is set twice: at the top and under params:")
        bounds = {"max_tokens", "max_completion_tokens"}
        if bounds <= given | nested:
            raise ValueError(BOTH_BOUNDS)
        return self


def _a_name(value: str) -> str:
    """A name is typed after ``-a`` and printed in tables: no spaces or commas, nothing
    invisible (control or format characters)."""
    if not is_persona_name(value):
        raise ValueError("must be a non-empty name without spaces, commas or control characters")
    return value


def is_persona_name(value: str) -> bool:
    """Whether ``value`` can name a persona (in an agents file or ``-p NAME=...``)."""
    return (
        bool(value)
        and value.isprintable()
        and "," not in value
        and not any(c.isspace() for c in value)
    )


class AgentSpec(_AgentFields):
    name: str

    _valid_name = field_validator("name")(_a_name)


class RoleSpec(_AgentFields):
    """A role's section (``synthesizer:``, ``judge:``, ``router:``, ``orchestrator:``): a
    persona's fields, its name its role's unless given. One model for the four: each model
    costs pydantic ~4 ms to build when fanout starts."""

    name: str | None = None  # null: the role's own

    @field_validator("name")
    @classmethod
    def _a_name_if_given(cls, value: str | None) -> str | None:
        return None if value is None else _a_name(value)


ROLES = ("synthesizer", "router", "orchestrator", "judge")  # the sections of the roles


class PriceSpec(BaseModel):
    """USD per million tokens."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    input: float = Field(ge=0, le=MAX_PRICE)
    output: float = Field(ge=0, le=MAX_PRICE)


class PanelSpec(BaseModel):
    """The agents file as written."""

    model_config = ConfigDict(extra="forbid", strict=True)

    defaults: _AgentFields = Field(default_factory=_AgentFields)
    agents: list[AgentSpec] = Field(min_length=1)
    synthesizer: RoleSpec | None = None
    router: RoleSpec | None = None  # fanout ask --route
    orchestrator: RoleSpec | None = None  # fanout ask --orchestrate
    judge: RoleSpec | None = None  # fanout ask --judge, --best-of
    pricing: dict[str, PriceSpec] = Field(default_factory=dict)

    @field_validator(
        "defaults", "synthesizer", "router", "orchestrator", "judge", "pricing", mode="before"
    )
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
    # Other roles by name (router, orchestrator): the file's sections, or their defaults.
    roles: dict[str, Agent] = field(default_factory=dict)
    # Roles that could not be built (a default role on an unusable $OPENAI_BASE_URL): an error
    # only for a run that needs them.
    role_errors: dict[str, str] = field(default_factory=dict)
    judge: Agent | None = None  # None: the default judge, with no defaults: applied
    # What a persona named on the command line (-p NAME=TEXT) starts from: the file's
    # defaults: section alone, or why it could not be built (an unusable $OPENAI_BASE_URL).
    template: Agent | str | None = None
    declared: tuple[str, ...] = ()  # the roles the file has a section for (judge:, router:...)

    def role(self, name: str) -> Agent:
        """The agent that plays ``name`` (``synthesizer``, ``judge``, ``router``...) in the
        shapes that need one."""
        if name in self.role_errors:
            raise ConfigError(self.role_errors[name])
        judge = self.judge or Agent("judge", instructions=DEFAULT_JUDGE_INSTRUCTIONS)
        # Every role by name, as ordinary as the others; ``roles`` may name any of them (a
        # stored run's panel holds them all there).
        roles = {**default_roles(), "synthesizer": self.synthesizer, "judge": judge, **self.roles}
        if name not in roles:
            raise ConfigError(f"the agents file has no {name}: section and no default for it")
        return roles[name]

    def with_personas(self, personas: Sequence[tuple[str, str]]) -> Panel:
        """The panel with personas given as (name, instructions) added after its own: each
        has the panel's defaults (model, endpoint, parameters). A name the panel already has
        (in any case) is an error naming ``-p``."""
        if not personas:
            return self
        if not isinstance(self.template, Agent):
            raise ConfigError(self.template or f"{self.source}: no defaults for a -p persona")
        taken = {a.name.casefold(): a.name for a in self.agents}
        added: list[Agent] = []
        for name, instructions in personas:
            if name.casefold() in taken:
                raise ConfigError(
                    f"-p/--persona {name + '=' + instructions!r}: the panel ({self.source}) "
                    "already has a persona "
                    f"named {taken[name.casefold()]!r}; choose another name"
                )
            taken[name.casefold()] = name
            # The instructions are all there is to say about it (a router reads this).
            added.append(
                replace(
                    self.template, name=name, instructions=instructions, description=instructions
                )
            )
        return replace(self, agents=[*self.agents, *added])

    def select(self, names: Sequence[str] | None) -> list[Agent]:
        """The personas named (in the order given, each once; any case), or the whole panel.
        An unknown name is an error naming the closest persona and the whole panel."""
        if not names:
            return list(self.agents)
        by_name = {a.name.casefold(): a for a in self.agents}
        chosen: dict[str, Agent] = {}
        for name in names:
            agent = by_name.get(name.casefold())
            base = by_name.get(name.partition("@")[0].casefold()) if "@" in name else None
            if agent is None and base is not None:
                agent = variant_of(base, name)  # analyst@reasoning_effort=low
            if agent is None:
                panel = ", ".join(a.name for a in self.agents)
                raise ConfigError(
                    f"unknown agent {name!r}{_suggest(name, [a.name for a in self.agents])}; "
                    f"the panel has {panel}"
                )
            chosen.setdefault(agent.name, agent)
        return list(chosen.values())


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
    with collector_paused():
        return _checked_panel(_parse_yaml(source, text), environ)


def read_yaml_mapping(source: str, text: str, what: str) -> dict[str, object]:
    """``text`` read as YAML the agents file's way (no tags, no duplicate keys), which must be
    a mapping holding ``what``; a ``ConfigError`` naming ``source`` and the line otherwise."""
    with collector_paused():
        return _parse_yaml(source, text, what).data


def panel_from_mapping(
    source: str, text: str, data: Mapping[str, object], environ: Mapping[str, str]
) -> Panel:
    """A panel from an agents file's sections already read (``text`` gives line numbers,
    found only for an error): an eval file's ``agents:`` section is one."""
    with collector_paused():
        return _checked_panel(YamlFile(source, dict(data), None, text), environ)


def _checked_panel(document: YamlFile, environ: Mapping[str, str]) -> Panel:
    try:
        spec = PanelSpec.model_validate(document.data)
    except ValidationError as exc:
        raise ConfigError(_one_line(_describe(document, exc, unknown_first=True))) from None
    return panel_of(document, spec, environ)


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cycle collector off while a file becomes objects: a file of 20,000 personas
    is some million objects, none of them garbage, and the collector walked them all again
    and again as they grew (most of the time a large file took). On again after, as it was."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def panel_of(document: YamlFile, spec: PanelSpec, environ: Mapping[str, str]) -> Panel:
    """The panel a checked file declares (an agents file, or a flow file's own ``agents:``):
    a name given twice is refused at its line, then every persona is resolved."""
    seen: set[str] = set()
    for index, agent in enumerate(spec.agents):
        if agent.name in seen:
            where = document.where(("agents", index, "name"))
            raise ConfigError(_one_line(f"{where}: duplicate agent name {agent.name!r}"))
        seen.add(agent.name)
    return _resolve(document.source, spec, environ)


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
        for endpoint in (agent.endpoint, *(f.endpoint for f in agent.fallbacks)):
            _check_key(agent, endpoint, environ)
        _check_headers(agent, environ)


def _check_key(agent: Agent, endpoint: Endpoint, environ: Mapping[str, str]) -> None:
    key = environ.get(endpoint.api_key_env)
    if not endpoint.is_local and not key:
        fallback = "" if endpoint == agent.endpoint else " (a fallback)"
        raise ConfigError(
            f"agent {agent.name!r}: no API key for {endpoint.host}{fallback}: set "
            f"${endpoint.api_key_env}, point base_url at a server of yours (Ollama: "
            "http://localhost:11434/v1), or add --local for the model that comes with "
            "fanout[local]"
        )
    if key and not _HEADER_SAFE.fullmatch(key):
        raise ConfigError(
            f"${endpoint.api_key_env} holds spaces, line breaks or non-ASCII characters; "
            "an API key cannot (check how it was set)"
        )


def _check_headers(agent: Agent, environ: Mapping[str, str]) -> None:
    """Every ``${VAR}`` an ``extra_headers`` value names is set, and sendable; a value the
    history masked (a literal, perhaps a secret) cannot be sent again."""
    for name, value in agent.extra_headers.items():
        if value == MASK:
            raise ConfigError(
                f"agent {agent.name!r}: the value of extra_headers {name!r} was not recorded "
                "(a value written out may be a secret): write it as ${VAR} in the agents "
                "file, with the value in that variable, and run it again"
            )
        for variable in header_variables({name: value}):
            text = environ.get(variable)
            if text is None:
                raise ConfigError(
                    f"agent {agent.name!r}: extra_headers {name!r} names ${variable}, "
                    "which is not set"
                )
            if not all(" " <= c <= "~" for c in text):
                raise ConfigError(
                    f"${variable} (extra_headers {name!r}) holds line breaks or non-ASCII "
                    "characters; a header cannot"
                )


_KEY_GOES = "put the key in an environment variable and name it with api_key_env"
_AUTHORITY = re.compile(r"((?i:https?))://([^/?#]*)(.*)", re.DOTALL)
_PORT = re.compile(r"[0-9]{1,5}")
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


def base_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a persona's endpoint, or ``None``: what passes here is a URL
    httpx accepts and can connect to, with no secret in it (a key in the URL would be stored
    in the history and the batch state, and userinfo would replace the Bearer key)."""
    if len(url) > MAX_URL_CHARS:
        return f"not a usable URL: longer than {MAX_URL_CHARS} characters"
    odd = next((c for c in url if c.isspace() or not c.isprintable()), None)
    if odd is not None:
        return f"not a usable URL: it holds {'a space' if odd == ' ' else repr(odd)}"
    match = _AUTHORITY.fullmatch(url)
    if match is None:
        return "must be an http:// or https:// URL, or local"
    authority, rest = match.group(2), match.group(3)
    if "@" in authority:
        return f"no user or password in a base URL: {_KEY_GOES}"
    if "?" in rest.split("#", 1)[0]:
        return f"no query string in a base URL: {_KEY_GOES}"
    if "#" in rest:
        return "not a usable URL: a base URL has no #fragment"
    if authority.startswith("["):
        host, bracket, port = authority[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            return "not a usable URL: an IPv6 address is written [::1] or [::1]:8080"
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"not a usable URL: {host!r} is not an IPv6 address"
        port = port[1:]
    else:
        host, _, port = authority.partition(":")
        if ":" in port:
            return "not a usable URL: an IPv6 address goes in brackets, like http://[::1]:8080"
        problem = _host_problem(host)
        if problem:
            return f"not a usable URL: {problem}"
    if port and not (_PORT.fullmatch(port) and 1 <= int(port) <= 65535):
        return f"not a usable URL: port {port!r} is not a number from 1 to 65535"
    return None


def _host_problem(host: str) -> str | None:
    """A registered name (letters, digits, ``-``, ``_``; IDNA for the rest) or an IPv4 address
    with four numbers of 0-255; a name whose last label is a number is taken for an address,
    as browsers and resolvers do."""
    if not host:
        return "it names no host"
    try:
        name = idna.encode(host.lower()).decode("ascii") if not host.isascii() else host.lower()
    except idna.IDNAError:
        return f"{host!r} is not a valid host name"
    labels = name.removesuffix(".").split(".")  # a fully qualified name may end in a dot
    if labels[-1].isdigit():
        try:
            ipaddress.IPv4Address(name)
        except ValueError:
            return f"{host!r} is not an IPv4 address (four numbers of 0-255)"
        return None
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        return f"{host!r} is not a valid host name"
    return None


def mask_url(url: str) -> str:
    """``url`` as an error may show it: userinfo, query and fragment (where keys hide) are
    ``***``. Used on any URL a user gave, valid or not."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=-1)
    if cut >= 0:
        rest = rest[: cut + 1] + "***"
    return f"{scheme}{sep}{rest}"


def default_panel_text() -> str:
    """The agents file shipped with fanout, as written (comments and all)."""
    return _read_default()[1]


def _read_default() -> tuple[str, str]:
    packaged = resources.files("fanout") / CONFIG_NAME
    if packaged.is_file():
        return "<default panel>", packaged.read_text(encoding="utf-8")
    # Running from a source checkout: the packaged copy is the repository's top-level file.
    source_tree = Path(__file__).resolve().parents[2] / CONFIG_NAME
    return "<default panel>", _read_text(source_tree)


def _read_text(path: Path) -> str:
    with open_regular_file(path, "an agents file") as source:
        try:
            raw = source.read(MAX_CONFIG_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: over {MAX_CONFIG_BYTES // 2**20} MB; not an agents file")
    if b"\x00" in raw:
        raise ConfigError(f"{path}: not a text file (binary data)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None


def open_regular_file(path: Path, what: str) -> BinaryIO:
    """``path`` opened to read, if it is a regular file. Anything else is refused before a
    byte is read: a FIFO blocks for ever, ``/dev/zero`` never ends, a directory is no file."""
    try:
        # O_NONBLOCK: opening a FIFO that has no writer must not wait for one.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except ValueError:  # a NUL in the name
        raise ConfigError(f"{path}: not a usable file name") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise ConfigError(f"{path}: {file_kind(mode)}, not {what}")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def file_kind(mode: int) -> str:
    """What a file that is not a regular one is, for an error message."""
    kinds = [
        (stat.S_ISDIR, "is a directory"),
        (stat.S_ISFIFO, "is a pipe (FIFO)"),
        (stat.S_ISCHR, "is a device"),
        (stat.S_ISBLK, "is a device"),
        (stat.S_ISSOCK, "is a socket"),
    ]
    return next((kind for test, kind in kinds if test(mode)), "is not a regular file")


_MERGE_TAG = "tag:yaml.org,2002:merge"


class _StrictConstructor(yaml.constructor.SafeConstructor):
    """``safe_load``'s constructor, refusing a key written twice in one mapping (YAML keeps
    the last), a key that is a list or a mapping, and text that no request can carry (lone
    surrogates, which a ``"\\ud800"`` escape makes). Merge keys (``<<: *defaults``) are data:
    allowed."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        self._refuse_duplicates(node)
        return super().construct_mapping(node, deep=deep)  # merges the ``<<:`` keys in

    def _refuse_duplicates(self, node: yaml.MappingNode) -> None:
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                # A key given here overrides a merged one: that is the point. The merged
                # mappings themselves are checked like any other.
                merged = value_node.value if isinstance(value_node, yaml.SequenceNode) else []
                for part in [value_node, *merged]:
                    if isinstance(part, yaml.MappingNode):
                        self._refuse_duplicates(part)
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                raise yaml.constructor.ConstructorError(
                    None, None, "a key must be a name, not a list or mapping", key_node.start_mark
                )
            key = self.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark
                )
            seen.add(key)

    def construct_scalar(self, node: yaml.ScalarNode) -> Any:  # type: ignore[override]
        value = super().construct_scalar(node)
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                problem = "a lone surrogate escape (\\ud800-\\udfff) is not text"
                raise yaml.constructor.ConstructorError(
                    None, None, problem, node.start_mark
                ) from None
        return value


class _StrictLoader(_StrictConstructor, yaml.SafeLoader):
    """PyYAML's own (pure Python) safe loader, strict, with nesting bounded: it says what is
    wrong with a file in the words every error of an agents file uses."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        # A panel is a few levels deep. Past a bound, stop: PyYAML's scanner slows down with
        # the square of the nesting, and its composer recurses once per level.
        self._depth += 1
        try:
            if self._depth > MAX_NESTING:
                raise yaml.composer.ComposerError(
                    None, None, f"nested more than {MAX_NESTING} levels deep", self.get_mark()
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def fetch_flow_collection_start(self, token_class: type[yaml.Token]) -> None:
        # The scanner reads a run of "[[[[" ahead before the composer sees the first: the
        # bound must hold here too.
        if self.flow_level >= MAX_NESTING:
            raise yaml.scanner.ScannerError(
                None, None, f"nested more than {MAX_NESTING} levels deep", self.get_mark()
            )
        super().fetch_flow_collection_start(token_class)


if yaml.__with_libyaml__:

    class _FastLoader(_StrictConstructor, yaml.CSafeLoader):
        """The same constructor over libyaml's parser (C): ten times faster on a large file
        (20,000 personas)."""


@dataclass
class YamlFile:
    """A YAML file read once: its data, and its nodes, which know the line of every key (an
    error names its line without reading the file again). Data read elsewhere (``root``
    None) has its nodes composed from ``text`` the first time a line is asked for."""

    source: str
    data: dict[str, Any]
    root: yaml.Node | None
    text: str = ""

    def line_of(self, loc: Sequence[Any]) -> int | None:
        """The 1-based line of the node at ``loc`` (the key itself for unknown keys)."""
        if self.root is None:
            try:
                self.root = yaml.compose(self.text, Loader=yaml.SafeLoader)
            except yaml.YAMLError:
                return None
            if self.root is None:
                return None
        node: yaml.Node | None = self.root
        line = self.root.start_mark.line
        for item in loc:
            if isinstance(node, yaml.MappingNode):
                match = next(
                    (kv for kv in node.value if getattr(kv[0], "value", None) == item), None
                )
                if match is None:
                    return line + 1
                key, node = match
                line = key.start_mark.line
            elif isinstance(node, yaml.SequenceNode) and isinstance(item, int):
                if item >= len(node.value):
                    break
                node = node.value[item]
                line = node.start_mark.line
            else:
                break
        return line + 1

    def where(self, loc: Sequence[Any]) -> str:
        """``source:line`` of the node at ``loc`` (``source`` if no line can be found)."""
        line = self.line_of(loc)
        return f"{self.source}:{line}" if line else self.source


def _parse_yaml(source: str, text: str, what: str = "an 'agents:' list") -> YamlFile:
    try:
        root, data = _load_yaml(text)  # safe loaders: no tags run code
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
    if root is None or data is None:
        raise ConfigError(f"{source}: the file is empty; it needs {what}")
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with {what}, got {_yaml_type(data)}")
    return YamlFile(source, data, root)


def _load_yaml(text: str) -> tuple[yaml.Node | None, Any]:
    """The nodes and the data of ``text``, parsed once: by libyaml where it can, and by the
    pure-Python loader for anything it finds wrong (or that nests too deep for a panel), so a
    problem is said the same way whichever parser met it first."""
    if yaml.__with_libyaml__ and not _UNREADABLE.search(text):
        try:
            root, data = _compose_and_construct(_FastLoader(text))
        except (yaml.YAMLError, RecursionError):
            pass
        else:
            if root is None or _nesting(root) <= MAX_NESTING:
                return root, data
    return _compose_and_construct(_StrictLoader(text))


# What PyYAML's reader refuses and libyaml may take (control characters).
_UNREADABLE = yaml.reader.Reader.NON_PRINTABLE


def _compose_and_construct(loader: Any) -> tuple[yaml.Node | None, Any]:
    try:
        root = loader.get_single_node()
        return root, None if root is None else loader.construct_document(root)
    finally:
        loader.dispose()


def _nesting(root: yaml.Node) -> int:
    """How deep ``root``'s collections nest, the root being 1 (each node counted once, where it
    is first written: an alias does not nest its anchor again)."""
    deepest = 0
    seen: set[int] = set()
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)  # an alias counts where it is, as PyYAML counts it
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            continue
        stack.extend((child, depth + 1) for child in reversed(children))
    return deepest


def _describe(
    document: YamlFile,
    exc: ValidationError,
    *,
    allowed: Callable[[tuple[Any, ...]], list[str]] | None = None,
    messages: Mapping[tuple[str, str], str] | None = None,
    unknown_first: bool = False,
) -> str:
    """One line for the first validation error: file, line, where in the file, what is wrong.
    Every YAML file fanout reads (the agents file, a flow file with its own ``agents:``) is
    described here, so a value is shown the one way (a URL's key masked). ``allowed``: the
    keys a location takes; ``messages``: our words by (error type, key); ``unknown_first``:
    a misspelt key is the news even when the key it meant is reported missing first."""
    errors = exc.errors()
    err = errors[0]
    if unknown_first:
        err = next((e for e in errors if e["type"] == "extra_forbidden"), err)
    loc = tuple(err["loc"])
    allowed = allowed or _allowed_keys
    messages = messages or _MESSAGES
    where = document.where(loc)
    path = _loc_name(document.data, loc)
    if err["type"] == "extra_forbidden":
        key = loc[-1]
        if not isinstance(key, str):  # `yes:`, `on:`, `1:` are not strings to YAML
            return f"{where}: unknown key {key!r} (quote it if it was meant as text)"
        if "params" in loc[:-1] or key in ("n", "stream"):
            return f"{where}: {path}: {unknown_field(key)}"
        return f"{where}: {path}: unknown key {key!r}{_suggest(key, allowed(loc))}"
    if err["type"] == "missing":
        return f"{where}: {path}: required key is missing"
    message = messages.get((err["type"], str(loc[-1]) if loc else ""))
    message = message or messages.get((err["type"], "")) or err["msg"]
    message = plain_message(err["type"], message, err.get("input"))
    if loc and loc[-1] == "base_url" and isinstance(err.get("input"), str):
        message += f" (got {mask_url(err['input'])!r})"  # never the key a URL may hold
    elif "input" in err and not isinstance(err["input"], dict | list):
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
    if "fallbacks" in loc[:-1]:
        return list(FallbackSpec.model_fields)
    if len(loc) == 1:
        return list(PanelSpec.model_fields)
    if loc[0] == "agents":
        return list(AgentSpec.model_fields)
    if loc[0] in ROLES:  # a role's own section (synthesizer:, judge:, router:...)
        return list(RoleSpec.model_fields)
    if loc[0] == "pricing":
        return list(PriceSpec.model_fields)
    return list(_AgentFields.model_fields)


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


def _env_base_url(environ: Mapping[str, str]) -> str:
    """``$OPENAI_BASE_URL`` (or OpenAI's), checked like the file's: asked only when a persona
    falls back to it."""
    url = environ.get("OPENAI_BASE_URL") or OPENAI_BASE_URL
    problem = base_url_problem(url)
    if problem:
        raise ConfigError(_one_line(f"$OPENAI_BASE_URL: {problem} ({mask_url(url)!r})"))
    return url


def _build_agent(
    fields: _AgentFields, name: str, defaults: _AgentFields, environ: Mapping[str, str]
) -> Agent:
    """A persona or a role: its own fields, else the file's ``defaults:``."""

    def pick(key: str) -> Any:
        value = getattr(fields, key)
        return getattr(defaults, key) if value is None else value

    agent = Agent(
        name=name,
        instructions=pick("instructions") or "",
        description=pick("description") or "",
        model=pick("model") or DEFAULT_MODEL,
        timeout=pick("timeout"),
        endpoint=Endpoint(
            base_url=(pick("base_url") or _env_base_url(environ)).rstrip("/"),
            api_key_env=pick("api_key_env") or "OPENAI_API_KEY",
        ),
        limits=Limits(rpm=pick("rpm"), tpm=pick("tpm"), concurrency=pick("concurrency")),
        max_context_tokens=pick("max_context_tokens"),
    )
    return _with_requests(agent, defaults, fields)


def _resolve(source: str, spec: PanelSpec, environ: Mapping[str, str]) -> Panel:
    def build(fields: _AgentFields, name: str) -> Agent:
        return _build_agent(fields, name, spec.defaults, environ)

    agents = [build(a, a.name) for a in spec.agents]
    template: Agent | str
    try:
        template = build(_AgentFields(), "-p")
    except ConfigError as exc:  # only an error for a run that adds a persona with -p
        template = str(exc)

    def named(section: RoleSpec | None, role: str) -> tuple[RoleSpec, str]:
        given = section or RoleSpec()  # a role's section left out: its defaults
        return given, given.name or role

    synth_spec, synth_name = named(spec.synthesizer, "synthesizer")
    # The defaults' instructions speak to personas; the synthesizer gets its own brief.
    synthesizer = replace(
        build(synth_spec, synth_name),
        instructions=synth_spec.instructions or DEFAULT_SYNTHESIS_INSTRUCTIONS,
    )
    pricing = {model: Price(p.input, p.output) for model, p in spec.pricing.items()}
    roles: dict[str, Agent] = {}
    role_errors: dict[str, str] = {}
    for name, declared in (("router", spec.router), ("orchestrator", spec.orchestrator)):
        role_spec, role_name = named(declared, name)
        try:
            built = build(role_spec, role_name)
        except ConfigError as exc:
            if declared is not None:
                raise
            role_errors[name] = str(exc)
            continue
        # Like the synthesizer: the file's defaults apply, but never the personas' brief.
        roles[name] = replace(built, instructions=role_spec.instructions or ROLE_INSTRUCTIONS[name])
    judge: Agent | None = None
    judge_spec, judge_name = named(spec.judge, "judge")
    try:
        judge = replace(
            build(judge_spec, judge_name),
            instructions=judge_spec.instructions or DEFAULT_JUDGE_INSTRUCTIONS,
        )
    except ConfigError as exc:
        if spec.judge is not None:
            raise
        role_errors["judge"] = str(exc)
    return Panel(
        source=source,
        agents=agents,
        synthesizer=synthesizer,
        pricing=pricing,
        roles=roles,
        role_errors=role_errors,
        judge=judge,
        template=template,
        declared=tuple(r for r in ("router", "orchestrator", "judge") if getattr(spec, r)),
    )


def _with_requests(agent: Agent, defaults: _AgentFields, fields: _AgentFields) -> Agent:
    """``agent`` with what its requests carry: the request fields, ``extra_body`` and
    ``extra_headers`` (the persona's keys over the defaults'), and its fallbacks."""
    fallbacks = fields.fallbacks if fields.fallbacks is not None else defaults.fallbacks
    agent = replace(
        agent,
        extra_body={**(defaults.extra_body or {}), **(fields.extra_body or {})},
        extra_headers={**(defaults.extra_headers or {}), **(fields.extra_headers or {})},
        fallbacks=_fallbacks(fallbacks or [], agent.endpoint),
    )
    agent = with_params(agent, _request_params(defaults, fields))
    return replace(agent, stop=agent.stop or None)


def _fallbacks(given: Sequence[FallbackSpec], own: Endpoint) -> tuple[Fallback, ...]:
    """A persona's fallbacks: a model name is on its own endpoint (and key); a mapping may
    name another (its key in ``api_key_env``, else ``$OPENAI_API_KEY``, as a persona's)."""
    resolved: list[Fallback] = []
    for item in given:
        if item.base_url is None:
            endpoint = replace(own, api_key_env=item.api_key_env or own.api_key_env)
        else:
            endpoint = Endpoint(item.base_url.rstrip("/"), item.api_key_env or "OPENAI_API_KEY")
        resolved.append(Fallback(item.model, endpoint))
    return tuple(resolved)


def _request_params(defaults: _AgentFields, fields: _AgentFields) -> dict[str, JsonValue]:
    """The request fields of one persona: the defaults' (at the top, then under ``params:``),
    then its own; the later wins, and a bound given later replaces either name of it."""
    merged: dict[str, JsonValue] = {}
    for level in (defaults, defaults.params, fields, fields.params):
        if level is None:
            continue
        given = {k: getattr(level, k) for k in REQUEST_FIELDS if getattr(level, k) is not None}
        if given.keys() & {"max_tokens", "max_completion_tokens"}:
            merged.pop("max_tokens", None)
            merged.pop("max_completion_tokens", None)
        merged.update(given)
    return merged


def default_roles() -> dict[str, Agent]:
    """The router and orchestrator of a panel built without an agents file (the history)."""
    return {role: Agent(role, text) for role, text in ROLE_INSTRUCTIONS.items()}
