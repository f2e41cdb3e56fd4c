"""Request parameters: the chat-completion fields fanout knows, checked before anything is sent.

A persona (or the panel's ``defaults:``) sets them at its top level or under ``params:``;
``--param key=value`` sets one for every persona of a run; ``-a analyst@reasoning_effort=low,high``
makes one copy of a persona per value. ``extra_body:`` is merged into the request as it is (a
provider's own fields); ``extra_headers:`` go with it, their values masked wherever fanout shows
or records anything.

How the answer's bound is sent: ``max_tokens`` is fanout's bound on an answer (the budget and
the rate limiter count it); on the wire it is ``max_completion_tokens`` for OpenAI's reasoning
models (a name, after any ``provider/`` prefix, starting ``o1``, ``o3``, ``o4``... or
``gpt-5``), which refuse ``max_tokens``, and ``max_tokens`` for every other model, which is
what OpenAI-compatible servers take. Writing ``max_completion_tokens:`` in the file sends that
name whatever the model; and a server that refuses the name fanout chose (a 400 naming it) is
asked again with the other one, once, and remembered for that model.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, field_validator

from fanout.errors import ConfigError

if TYPE_CHECKING:
    from fanout.models import Agent

MAX_ANSWER_TOKENS = 10_000_000
_INT64 = 2**63
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
MASK = "***"
# Fields fanout sets itself: an ``extra_body`` that set them would break what it reads.
OWN_FIELDS = ("model", "messages", "stream", "stream_options", "tools", "n")
_REASONING_MODEL = re.compile(r"(o[1-9]([-.].*)?|gpt-5([-.].*)?)")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_NOT_HERE = {
    "n": "fanout reads one answer per call: ask a persona N times with -a NAME:N",
    "stream": "fanout decides (--stream/--no-stream)",
}


class RequestParams(BaseModel):
    """The request fields fanout knows, with their types and bounds (OpenAI's chat API)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, gt=0, le=MAX_ANSWER_TOKENS)
    max_completion_tokens: int | None = Field(default=None, gt=0, le=MAX_ANSWER_TOKENS)
    stop: str | list[str] | None = Field(default=None)
    seed: int | None = Field(default=None, ge=-_INT64, lt=_INT64)
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = (
        None
    )
    response_format: dict[str, JsonValue] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, int] | None = None
    user: str | None = Field(default=None, min_length=1)
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    parallel_tool_calls: bool | None = None
    prompt_cache_key: str | None = Field(default=None, min_length=1)
    safety_identifier: str | None = Field(default=None, min_length=1)

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("give at most 4 stop sequences")
        return value

    @field_validator("logit_bias", mode="before")
    @classmethod
    def _token_ids(cls, value: object) -> object:
        # YAML reads `50256: -100` with a number for a key; the API wants the id as text.
        if not isinstance(value, dict):
            return value
        biased: dict[str, object] = {}
        for token, bias in value.items():
            if isinstance(token, bool) or not re.fullmatch(r"[0-9]+", str(token)):
                raise ValueError(f"a key is a token id (a whole number), not {token!r}")
            if isinstance(bias, bool) or not isinstance(bias, int) or not -100 <= bias <= 100:
                raise ValueError(f"token {token}: a bias is a whole number from -100 to 100")
            biased[str(token)] = bias
        return biased

    @field_validator("response_format")
    @classmethod
    def _a_format(cls, value: dict[str, JsonValue] | None) -> dict[str, JsonValue] | None:
        if value is None:
            return None
        kind = value.get("type")
        if kind not in ("text", "json_object", "json_schema"):
            raise ValueError("type is one of text, json_object, json_schema")
        schema = value.get("json_schema")
        if kind == "json_schema" and not (isinstance(schema, dict) and schema.get("name")):
            raise ValueError("json_schema needs a json_schema: mapping with a name")
        return value

    @field_validator("metadata")
    @classmethod
    def _few_pairs(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None and len(value) > 16:
            raise ValueError("at most 16 pairs")
        return value


REQUEST_FIELDS: tuple[str, ...] = tuple(RequestParams.model_fields)
# Fields an ``Agent`` keeps as its own attributes; the rest go in ``Agent.params``.
_AGENT_ATTRIBUTES = ("temperature", "top_p", "max_tokens", "max_completion_tokens", "stop")


def suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_field(key: str) -> str:
    """Why ``key`` is no request field fanout knows, with the closest one that is."""
    if key in _NOT_HERE:
        return f"{key!r} is not set here: {_NOT_HERE[key]}"
    hint = suggest(key, REQUEST_FIELDS) or "; for a provider's own field use extra_body:"
    return f"unknown parameter {key!r}{hint}"


def check_params(given: Mapping[str, object], where: str) -> dict[str, JsonValue]:
    """``given`` checked as request fields: the same dict, or a ``ConfigError`` naming
    ``where`` (``--param``, ``-a analyst@...``), the key and what is wrong."""
    for key in given:
        if key not in REQUEST_FIELDS:
            raise ConfigError(f"{where}: {unknown_field(key)}")
    if "max_tokens" in given and "max_completion_tokens" in given:
        raise ConfigError(f"{where}: {BOTH_BOUNDS}")
    try:
        checked = RequestParams.model_validate(dict(given))
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"])
        shown = given.get(str(error["loc"][0])) if error["loc"] else None
        message = plain_message(error["type"], str(error["msg"]), error.get("input"))
        raise ConfigError(f"{where}: {key}: {message} (got {json.dumps(shown)})") from None
    return {k: v for k, v in checked.model_dump().items() if k in given}


def plain_message(kind: str, message: str, given: object) -> str:
    """pydantic's message for one error, in fanout's words: ``must be ...``, and for a value
    not among those allowed, the closest one (``'hihg'`` -> did you mean 'high'?)."""
    message = message.removeprefix("Value error, ").replace("Input should be", "must be")
    if kind == "literal_error" and isinstance(given, str):
        allowed = re.findall(r"'([^']*)'", message)
        message += suggest(given, allowed)
    return message


BOTH_BOUNDS = (
    "max_tokens and max_completion_tokens: give one (fanout sends the bound under the name "
    "the model takes)"
)


def parse_value(text: str) -> JsonValue:
    """``--param``'s value, typed from how it is written: ``true``/``false``, ``null``, a
    number, a JSON object or list, else the text itself (``low``, ``"42"`` for the text 42)."""
    stripped = text.strip()
    if stripped in ("true", "false"):
        return stripped == "true"
    if stripped == "null":
        return None
    if re.fullmatch(r"[-+]?[0-9]+", stripped):
        return int(stripped)
    if re.fullmatch(r"[-+]?([0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)([eE][-+]?[0-9]+)?", stripped):
        number = float(stripped)
        return number if math.isfinite(number) else stripped
    if stripped[:1] in ("{", "[", '"'):
        try:
            value: JsonValue = json.loads(stripped)
        except (ValueError, RecursionError):
            raise ConfigError(f"not JSON: {stripped[:60]!r}") from None
        return value
    return stripped


def parse_param(given: str, flag: str = "--param") -> tuple[str, JsonValue]:
    """One ``--param key=value``, typed from its value and checked. A field that takes text
    takes the value as written when its typed reading does not fit (``user=007`` is "007")."""
    key, equals, value = given.partition("=")
    key, text = key.strip(), value.strip()
    where = f"{flag} {given!r}"
    if not equals or not key:
        raise ConfigError(f"{where}: give KEY=VALUE, e.g. {flag} seed=42")
    if key not in REQUEST_FIELDS:
        raise ConfigError(f"{where}: {unknown_field(key)}")
    try:
        typed = parse_value(text)
    except ConfigError as exc:  # [ or { that is not JSON: surely meant as JSON
        raise ConfigError(f"{where}: {exc}") from None
    try:
        return key, check_params({key: typed}, where)[key]
    except ConfigError:
        if typed == text or not _takes_text(key, text, where):
            raise
        return key, text


def _takes_text(key: str, text: str, where: str) -> bool:
    try:
        check_params({key: text}, where)
    except ConfigError:
        return False
    return True


def params_of_flags(given: Sequence[str] | None) -> dict[str, JsonValue]:
    """Every ``--param``, checked one by one, then together (the last of a key wins)."""
    params: dict[str, JsonValue] = {}
    for value in given or []:
        key, parsed = parse_param(value)
        params[key] = parsed
    if params:
        check_params(params, "--param")
    return params


def with_params(agent: Agent, given: Mapping[str, JsonValue]) -> Agent:
    """``agent`` with the checked request fields ``given`` on top of its own."""
    if not given:
        return agent
    temperature, top_p = given.get("temperature"), given.get("top_p")
    stop = given.get("stop")
    bound, field = agent.max_tokens, agent.token_field
    for name in ("max_tokens", "max_completion_tokens"):
        value = given.get(name)
        if isinstance(value, int):
            bound, field = value, (None if name == "max_tokens" else name)
    rest = {k: v for k, v in given.items() if k not in _AGENT_ATTRIBUTES}
    numbers = (int, float)
    return replace(
        agent,
        temperature=float(temperature) if isinstance(temperature, numbers) else agent.temperature,
        top_p=float(top_p) if isinstance(top_p, numbers) else agent.top_p,
        stop=_stops(stop) if stop is not None else agent.stop,
        max_tokens=bound,
        token_field=field,
        params={**agent.params, **rest} if rest else agent.params,
    )


def _stops(stop: JsonValue) -> tuple[str, ...]:
    if isinstance(stop, str):
        return (stop,)
    return tuple(str(s) for s in stop) if isinstance(stop, list) else ()


def is_reasoning_model(model: str) -> bool:
    """OpenAI's reasoning models (``o3-mini``, ``openai/o4-mini``, ``gpt-5-nano``), which take
    ``max_completion_tokens`` and refuse ``max_tokens``."""
    bare = model.rsplit("/", 1)[-1].lower()
    return _REASONING_MODEL.fullmatch(bare) is not None


def token_field(agent: Agent) -> str:
    """The name the answer's bound is sent under (see the module docstring)."""
    if agent.token_field:
        return agent.token_field
    return "max_completion_tokens" if is_reasoning_model(agent.model) else "max_tokens"


def request_fields(
    agent: Agent, response_format: Mapping[str, object] | None, bound_as: str
) -> dict[str, object]:
    """The request body beyond model, messages, tools and streaming: the persona's fields,
    the call's ``response_format`` (a shape's structured output beats the persona's own), then
    ``extra_body`` as it is."""
    body: dict[str, object] = {}
    if agent.temperature is not None:
        body["temperature"] = agent.temperature
    if agent.top_p is not None:
        body["top_p"] = agent.top_p
    if agent.max_tokens is not None:
        body[bound_as] = agent.max_tokens
    if agent.stop:
        body["stop"] = list(agent.stop)
    body.update(agent.params)
    if response_format is not None:
        body["response_format"] = dict(response_format)
    body.update(agent.extra_body)
    return body


# -- extra_body and extra_headers ------------------------------------------------------------


def extra_body_problem(body: Mapping[str, object]) -> str | None:
    """Why ``extra_body`` cannot be sent as it is, or None."""
    own = [key for key in body if key in OWN_FIELDS]
    if own:
        return f"{own[0]!r} is set by fanout itself, not in extra_body"
    return None


def header_problem(name: str, value: str) -> str | None:
    """Why a header cannot be sent (never quoting its value), or None."""
    if not _HEADER_NAME.fullmatch(name):
        return f"{name!r} is not a header name"
    if name.lower() in ("content-length", "content-type", "host", "transfer-encoding"):
        return f"{name!r} is set by the HTTP client"
    if not all(" " <= c <= "~" for c in value):
        return f"the value of {name!r} holds line breaks or non-ASCII characters"
    return None


def header_variables(headers: Mapping[str, str]) -> list[str]:
    """The environment variables the header values name (``${VAR}`` or ``$VAR``)."""
    return [m.group(1) or m.group(2) for v in headers.values() for m in _ENV_REF.finditer(v)]


def resolved_headers(
    headers: Mapping[str, str], environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The headers as sent: each ``${VAR}`` replaced by the variable's value."""
    environ = os.environ if environ is None else environ

    def value(match: re.Match[str]) -> str:
        return environ.get(match.group(1) or match.group(2), "")

    return {name: _ENV_REF.sub(value, text) for name, text in headers.items()}


def recorded_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers as the history keeps them: a value made only of ``${VAR}`` references (no
    secret in it) as written, any other masked."""
    return {
        name: text if _ENV_REF.sub("", text).strip() == "" and text.strip() else MASK
        for name, text in headers.items()
    }


def shown_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers as any view shows them: names only, every value masked."""
    return dict.fromkeys(headers, MASK)


def variant_names(given: str) -> list[str]:
    """``-a analyst@reasoning_effort=low,medium,high``: one persona name per value
    (``analyst@reasoning_effort=low``...). The values are the rest of the ``-a`` argument:
    other personas go before it or in another ``-a``. Each value is checked here."""
    persona, _, setting = given.partition("@")
    key, equals, values = setting.partition("=")
    persona, key = persona.strip(), key.strip()
    texts = [v.strip() for v in values.split(",") if v.strip()]
    where = f"--agents {given!r}"
    if not persona or not equals or not key or not texts:
        raise ConfigError(f"{where}: give NAME@KEY=VALUE,VALUE..., e.g. analyst@temperature=0,1")
    for text in texts:
        variant_value(key, text, where)
    if len(set(texts)) != len(texts):
        raise ConfigError(f"{where}: a value is given twice")
    return [f"{persona}@{key}={text}" for text in texts]


def variant_value(key: str, text: str, where: str) -> JsonValue:
    """One value of a varied parameter, typed and checked (a word or a number: it goes in
    the persona's name)."""
    if not text or not text.isprintable() or any(c.isspace() or c == "," for c in text):
        raise ConfigError(f"{where}: a value to vary is a word or a number, not {text!r}")
    try:
        value = parse_value(text)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return check_params({key: value}, where)[key]


def variant_of(agent: Agent, name: str) -> Agent:
    """The copy of ``agent`` that ``name`` (``analyst@reasoning_effort=low``) asks for: its
    parameter set, and that name."""
    _, _, setting = name.partition("@")
    key, _, text = setting.partition("=")
    where = f"--agents {name!r}"
    if not key.strip() or not text.strip():
        raise ConfigError(f"{where}: give NAME@KEY=VALUE, e.g. analyst@temperature=0")
    value = variant_value(key.strip(), text.strip(), where)
    copy = with_params(agent, {key.strip(): value})
    return replace(copy, name=f"{agent.name}@{key.strip()}={text.strip()}")
