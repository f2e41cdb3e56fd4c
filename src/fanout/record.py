"""What the history keeps of a run beside its document: every persona and role as it was
written (no secret: a key's variable, never its value) and the settings it ran with, so that
``runs retry`` and ``runs synth`` rebuild the same plan, whoever started the run.

One writer, ``run_record(plan)``, for every client that records runs (the CLI and the
server, through ``history.recorder_for``); one reader, ``recorded_plan``. The records are
typed (``AgentRecord``, ``SettingsRecord``); the history stores them as JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict

from fanout.cost import Price
from fanout.engine import RunSettings
from fanout.models import Agent, Attachment, Endpoint, Fallback, Limits
from fanout.params import recorded_headers
from fanout.retry import RetryPolicy

if TYPE_CHECKING:
    from pydantic import JsonValue

    from fanout.api import Plan

SYNTHESIZER = "synthesizer"  # the role ``runs synth`` asks, recorded for every run


class AgentRecord(TypedDict, total=False):
    """A persona or a role as recorded: everything needed to ask it again."""

    name: str
    description: str
    instructions: str
    model: str
    temperature: float | None
    top_p: float | None
    max_tokens: int | None
    stop: list[str] | None
    timeout: float | None
    base_url: str
    api_key_env: str
    rpm: float | None
    tpm: float | None
    concurrency: int | None
    max_context_tokens: int | None  # a conversation's bound on what a request holds
    params: dict[str, JsonValue]  # request fields (reasoning_effort, seed...)
    token_field: str | None
    extra_body: dict[str, JsonValue]
    # [name, value] pairs (a header named X-Api-Key is not a key to the history's guard): a
    # value made of ${VAR} references is kept, any other is masked; a mapping in older records.
    extra_headers: list[list[str]] | dict[str, str]
    fallbacks: list[FallbackRecord]


class FallbackRecord(TypedDict):
    model: str
    base_url: str
    api_key_env: str


class PriceRecord(TypedDict):
    input: float
    output: float


class SettingsRecord(TypedDict, total=False):
    """A run's settings as recorded (an older run's record may lack any key)."""

    roles: dict[str, AgentRecord]  # every role the run asked (the synthesizer too, when it did)
    concurrency: int
    timeout: float
    retries: int
    max_retry_after: float
    rpm: float | None
    tpm: float | None
    stream: bool | None
    max_cost: float | None
    params: dict[str, JsonValue]  # --param, for every persona
    cache: bool  # --cache
    attachments: list[dict[str, JsonValue]]  # -f, by hash (contents in the store beside)
    shape: str
    options: dict[str, object]
    synthesize: bool  # version 1 readers
    pricing: dict[str, PriceRecord]


@dataclass(frozen=True)
class RunRecord:
    """What ``History.start_run`` keeps beside the document."""

    agents: list[AgentRecord]
    synthesizer: AgentRecord  # the role ``runs synth`` asks, whether this run asked it or not
    settings: SettingsRecord


def agent_record(agent: Agent) -> AgentRecord:
    """A persona as recorded in the history: everything needed to ask it again, no secret."""
    return {
        "name": agent.name,
        "description": agent.description,
        "instructions": agent.instructions,
        "model": agent.model,
        "temperature": agent.temperature,
        "top_p": agent.top_p,
        "max_tokens": agent.max_tokens,
        "stop": list(agent.stop) if agent.stop else None,
        "timeout": agent.timeout,
        "base_url": agent.endpoint.base_url,
        "api_key_env": agent.endpoint.api_key_env,
        "rpm": agent.limits.rpm,
        "tpm": agent.limits.tpm,
        "concurrency": agent.limits.concurrency,
        "max_context_tokens": agent.max_context_tokens,
        "params": dict(agent.params),
        "token_field": agent.token_field,
        "extra_body": dict(agent.extra_body),
        # A value made of ${VAR} references is kept; any other is a secret, never stored.
        "extra_headers": [list(pair) for pair in recorded_headers(agent.extra_headers).items()],
        "fallbacks": [
            {
                "model": f.model,
                "base_url": f.endpoint.base_url,
                "api_key_env": f.endpoint.api_key_env,
            }
            for f in agent.fallbacks
        ],
    }


def agent_from_record(data: AgentRecord) -> Agent:
    """A persona as the history recorded it, ready to be asked again."""
    stop = data.get("stop")
    return Agent(
        name=data["name"],
        instructions=data.get("instructions") or "",
        description=data.get("description") or "",
        model=data["model"],
        temperature=data.get("temperature"),
        top_p=data.get("top_p"),
        max_tokens=data.get("max_tokens"),
        stop=tuple(stop) if stop else None,
        timeout=data.get("timeout"),
        endpoint=Endpoint(data["base_url"], data["api_key_env"]),
        limits=Limits(data.get("rpm"), data.get("tpm"), data.get("concurrency")),
        max_context_tokens=data.get("max_context_tokens"),
        params=_mapping(data.get("params")),
        token_field=_text_or_none(data.get("token_field")),
        extra_body=_mapping(data.get("extra_body")),
        extra_headers=_headers(data.get("extra_headers")),
        fallbacks=tuple(
            Fallback(str(f["model"]), Endpoint(str(f["base_url"]), str(f["api_key_env"])))
            for f in data.get("fallbacks") or []
            if isinstance(f, dict) and {"model", "base_url", "api_key_env"} <= f.keys()
        ),
    )


def _headers(value: object) -> dict[str, str]:
    """Recorded ``extra_headers``: ``[[name, value], ...]`` (or a mapping, if written so)."""
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    pairs = value if isinstance(value, list) else []
    return {str(p[0]): str(p[1]) for p in pairs if isinstance(p, list) and len(p) == 2}


def _mapping(value: object) -> dict[str, JsonValue]:
    """A JSON object read back from the history, or nothing."""
    return {str(k): v for k, v in value.items()} if isinstance(value, dict) else {}


def _text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def settings_record(
    settings: RunSettings,
    shape: str,
    options: Mapping[str, object],
    pricing: Mapping[str, Price],
    roles: Mapping[str, Agent],
) -> SettingsRecord:
    """A run's settings as the history records them (what ``runs retry`` runs it again with)."""
    return {
        "roles": {r: agent_record(a) for r, a in roles.items()},
        "concurrency": settings.concurrency,
        "timeout": settings.timeout,
        "retries": settings.retry.retries,
        "max_retry_after": settings.retry.max_retry_after,
        "rpm": settings.rpm,
        "tpm": settings.tpm,
        "stream": settings.stream,
        "max_cost": settings.max_cost,
        "params": dict(settings.params),
        "cache": settings.cache,
        "attachments": _kept(settings.attachments),
        "shape": shape,
        "options": dict(options),
        "synthesize": bool(options.get("synthesize")),
        "pricing": {m: {"input": p.input, "output": p.output} for m, p in pricing.items()},
    }


def _kept(attachments: Sequence[Attachment]) -> list[dict[str, JsonValue]]:
    """The run's attachments as the history records them: by hash, each content kept once in
    the store beside the history (for ``runs retry``), never in a record or a document."""
    if not attachments:
        return []
    from fanout.attachments import keep
    from fanout.export import attachment_reference

    keep(attachments)
    return [attachment_reference(a) for a in attachments]


def _attachments(references: object) -> tuple[Attachment, ...]:
    """A recorded run's attachments (-f), from the store beside the history, by hash."""
    if not isinstance(references, list) or not references:
        return ()
    from fanout.attachments import from_references

    return from_references([r for r in references if isinstance(r, dict)])


def run_record(plan: Plan, written: Callable[[Agent], Agent] | None = None) -> RunRecord:
    """The record of ``plan``: its personas, its roles and the synthesizer ``runs synth``
    would ask, each as ``written`` says it was written (a persona that ran on this run's local
    server is recorded on ``base_url: local``, not on the port it happened to get)."""
    as_written = written or (lambda agent: agent)
    request = plan.request
    return RunRecord(
        agents=[agent_record(as_written(a)) for a in plan.agents],
        synthesizer=agent_record(as_written(plan.role(SYNTHESIZER))),
        settings=settings_record(
            request.settings,
            request.shape,
            request.options,
            plan.panel.pricing if plan.panel is not None else {},
            {r: as_written(a) for r, a in plan.roles.items()},
        ),
    )


@dataclass(frozen=True)
class RecordedPlan:
    """A stored run's record, read back: what rebuilding its plan starts from."""

    settings: RunSettings
    prices: dict[str, Price]
    shape: str
    options: dict[str, object]
    agents: list[Agent]
    roles: dict[str, Agent]  # the synthesizer among them, if one was recorded


def recorded_plan(
    agents: list[AgentRecord], synthesizer: AgentRecord | None, record: SettingsRecord
) -> RecordedPlan:
    """The recorded personas, roles, settings, prices, shape and options (a budget is not
    carried over: it was the first run's). Roles recorded before the synthesizer was one of
    them come from its own column."""
    settings = RunSettings(
        concurrency=record.get("concurrency", 8),
        timeout=record.get("timeout", 120.0),
        retry=RetryPolicy(record.get("retries", 3), record.get("max_retry_after", 60.0)),
        rpm=record.get("rpm"),
        tpm=record.get("tpm"),
        stream=record.get("stream", True),
        params=_mapping(record.get("params")),
        cache=record.get("cache") is True,
        attachments=_attachments(record.get("attachments")),
    )
    prices = {m: Price(p["input"], p["output"]) for m, p in record.get("pricing", {}).items()}
    options = dict(record.get("options") or {"synthesize": bool(record.get("synthesize"))})
    roles = {r: agent_from_record(a) for r, a in (record.get("roles") or {}).items()}
    if synthesizer is not None and SYNTHESIZER not in roles:
        roles = {SYNTHESIZER: agent_from_record(synthesizer), **roles}
    return RecordedPlan(
        settings=settings,
        prices=prices,
        shape=str(record.get("shape") or "panel"),
        options=options,
        agents=[agent_from_record(a) for a in agents],
        roles=roles,
    )
