"""The data fanout passes around: agents, calls, their results and the run report. No I/O here.

A run is stages of calls. A ``Call`` is one request to one agent (its identity is ``call_id``,
never the persona's name: one persona may be asked three times); a ``CallResult`` is its outcome;
a ``StageResult`` holds one stage's results and the verdict its shape drew from them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from pydantic import JsonValue

    from fanout.summary import Verdict

# One chat message: {"role": ..., "content": ...}; an assistant's may carry "tool_calls" (a
# list) and a tool result its "tool_call_id", so values are not all strings.
Message = dict[str, Any]
CallStatus = Literal["ok", "error", "cancelled", "skipped"]
AgentStatus = CallStatus
RunStatus = Literal["completed", "partial", "failed", "cancelled", "running", "interrupted"]

OPENAI_BASE_URL = "https://api.openai.com/v1"


@dataclass(frozen=True)
class Endpoint:
    """Where requests go and which environment variable holds the key.

    Agents sharing an endpoint share one HTTP client and one rate limiter.
    """

    base_url: str = OPENAI_BASE_URL
    api_key_env: str = "OPENAI_API_KEY"

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).hostname or self.base_url

    @property
    def is_local(self) -> bool:
        """Loopback servers (Ollama, llama.cpp, vLLM on this machine) need no key."""
        host = self.host.lower()
        if host == "localhost" or self.base_url == "local":  # "local": fanout's own server
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:  # a name, even one starting "127.", goes through DNS
            return False

    @property
    def is_openai(self) -> bool:
        return self.host.lower() == "api.openai.com"

    @property
    def display_url(self) -> str:
        """The base URL without credentials (``user:pass@``) or query (``?api-key=``)."""
        parts = urlsplit(self.base_url)
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@dataclass(frozen=True)
class Limits:
    """Rate limits of one endpoint; ``None`` means unlimited."""

    rpm: float | None = None
    tpm: float | None = None
    concurrency: int | None = None


@dataclass(frozen=True)
class Attachment:
    """A file sent with the question (``-f``): an image's bytes, or a text's (a PDF's) text.
    Known everywhere else by ``sha256``, the hash of the file as it was read."""

    name: str
    kind: Literal["image", "text", "pdf"]
    media_type: str
    sha256: str
    size: int  # the file's bytes
    text: str | None = field(default=None, repr=False)
    data: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Fallback:
    """A model tried when the one before it gives up (see ``engine.FALLBACK_KINDS``): on the
    persona's own endpoint, or on another."""

    model: str
    endpoint: Endpoint


@dataclass(frozen=True)
class Agent:
    """A persona with every default applied: what one call needs to know."""

    name: str
    instructions: str = ""
    description: str = ""
    model: str = "gpt-4o-mini"
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] | None = None
    timeout: float | None = None
    endpoint: Endpoint = field(default_factory=Endpoint)
    limits: Limits = field(default_factory=Limits)
    # The other request fields it sets (seed, reasoning_effort, response_format...: see
    # ``params.RequestParams``), checked when the agents file or the flag was read.
    params: Mapping[str, JsonValue] = field(default_factory=dict, hash=False)
    # How ``max_tokens`` goes on the wire: ``max_completion_tokens`` when the file wrote that;
    # None: by the model (``params.token_field``).
    token_field: str | None = None
    extra_body: Mapping[str, JsonValue] = field(default_factory=dict, hash=False)  # as is
    # Sent with every request; a value may name environment variables (``${VAR}``). Never
    # shown or recorded (masked like a key).
    extra_headers: Mapping[str, str] = field(default_factory=dict, hash=False)
    fallbacks: tuple[Fallback, ...] = ()  # in order
    # The most tokens a request may hold (its messages and its answer): a conversation's
    # oldest turns are left out to fit. None: the model's known window, if any.
    max_context_tokens: int | None = None

    def request_params(self) -> dict[str, JsonValue]:
        """Every request field it sets, under the name it was given, then ``extra_body`` and
        the names of its ``extra_headers`` (a value may be a secret) when it has them: what
        the document, ``--dry-run`` and the views show."""
        params: dict[str, JsonValue] = {}
        if self.temperature is not None:
            params["temperature"] = self.temperature
        if self.top_p is not None:
            params["top_p"] = self.top_p
        if self.max_tokens is not None:
            params[self.token_field or "max_tokens"] = self.max_tokens
        if self.stop:
            params["stop"] = list(self.stop)
        params.update(self.params)
        if self.extra_body:
            params["extra_body"] = dict(self.extra_body)
        if self.extra_headers:
            # Names only, as a list: a value may be a secret, and a name like X-Api-Key is
            # no key for the history to take for one.
            params["extra_headers"] = list(self.extra_headers)
        return params


def chat_messages(agent: Agent, prompt: str) -> list[Message]:
    """What a persona is sent: its instructions as the system message, then the prompt."""
    messages: list[Message] = []
    if agent.instructions:
        messages.append({"role": "system", "content": agent.instructions})
    messages.append({"role": "user", "content": prompt})
    return messages


@dataclass(frozen=True)
class Usage:
    """Tokens as the API reported them (finite, non-negative). ``reasoning_tokens`` (a
    reasoning model's thinking, from ``usage.completion_tokens_details``) are part of
    ``output_tokens``: billed as output, and bounded by ``max_completion_tokens``."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    reasoning_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.total_tokens + other.total_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
        )


@dataclass(frozen=True)
class AgentError:
    """Why a call has no answer."""

    type: str
    message: str
    status_code: int | None = None
    retryable: bool = False


@dataclass(frozen=True)
class Completion:
    """A successful answer, with the response headers the rate limiter learns from.

    ``usage`` is ``None`` when the server reported none, or nothing a count can be.
    ``finish_reason`` is the server's word on why the answer ended (``stop``, ``length`` for an
    answer cut by ``max_tokens``, ``content_filter``...); ``None`` when it gave none.
    """

    text: str
    usage: Usage | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    finish_reason: str | None = None
    # Functions the model asked to call: {"id", "name", "arguments" (JSON text)} each.
    tool_calls: tuple[Mapping[str, str], ...] = ()
    model: str | None = None  # the model that answered, as the server named it


@dataclass(slots=True)  # one per attempt: slots make it cheaper to make and fill
class AttemptTiming:
    """When one attempt went through each phase: seconds from the run's start, on one
    monotonic clock. ``None``: the attempt never got there (cut short, or not streamed)."""

    attempt: int  # from 1
    span_id: str  # the span id its request carried in ``traceparent``
    queued_s: float  # began waiting for a concurrency slot
    slot_s: float | None = None  # got its slot
    limiter_s: float | None = None  # the rate limiter let it go (and the budget had room)
    sent_s: float | None = None  # handed to the HTTP client
    first_token_s: float | None = None
    end_s: float | None = None
    error: str | None = None  # the kind of failure (``server_error``, ``timeout``...)
    backoff_s: float | None = None  # the wait before the next attempt


@dataclass(slots=True)
class CallTiming:
    """A call's time line: queued when its stage started, then each attempt. ``span_id`` is
    the call's own span (its attempts' parent)."""

    span_id: str
    queued_s: float
    attempts: list[AttemptTiming] = field(default_factory=list)
    end_s: float | None = None


@dataclass(frozen=True)
class Call:
    """One request of a run: who is asked what, in which stage and role.

    ``name`` is what people read (``physicist``, ``translator#2``); ``call_id`` is unique in the
    run (``panel/physicist``) and is what results, history and resumption are keyed by.
    ``skip`` set: the call is not made and ends ``skipped`` with that error (a stage with
    nothing to work on). ``details`` are copied onto the result (what the call was built from).
    """

    call_id: str
    stage: str
    role: str
    name: str
    agent: Agent
    messages: tuple[Message, ...]
    response_format: Mapping[str, object] | None = None
    skip: AgentError | None = None
    tools: tuple[Mapping[str, object], ...] | None = None  # functions offered to the model
    details: Mapping[str, object] = field(default_factory=dict)
    # How the stage reads an answer into its result (an agreement map's merged text), done
    # before anyone hears the call finished, so every observer (a batch line) gets it so.
    read: Callable[[CallResult], object] | None = field(default=None, compare=False)


@dataclass
class CallResult:
    """One call's outcome. ``answer`` is the answer when ``status == "ok"``; a call cut short
    (Ctrl-C, a stream that broke off) keeps the text it had, marked ``truncated``."""

    name: str
    model: str
    status: CallStatus = "cancelled"
    answer: str | None = None
    error: AgentError | None = None
    attempts: int = 0
    latency_s: float | None = None
    ttft_s: float | None = None  # time to first token, when streamed
    usage: Usage = field(default_factory=Usage)
    usage_estimated: bool = False  # the server reported none; counted from the text
    cost_usd: float | None = None  # None: the model's price is unknown
    call_id: str = ""
    stage: str = "panel"
    role: str = "persona"
    finish_reason: str | None = None
    truncated: bool = False  # cut by max_tokens (finish_reason "length") or cut short
    details: dict[str, object] = field(default_factory=dict)
    timing: CallTiming | None = None  # None: not made in this run (kept, skipped, old history)
    response_model: str | None = None  # the model the server says answered
    # The request fields it was asked with (``Agent.request_params``).
    params: dict[str, JsonValue] = field(default_factory=dict)
    cached: bool = False  # answered from the response cache: nothing sent, nothing spent

    def __post_init__(self) -> None:
        if not self.call_id:
            self.call_id = f"{self.stage}/{self.name}"

    @classmethod
    def of(cls, call: Call) -> CallResult:
        """The result a call starts with: cancelled until it ends otherwise."""
        return cls(
            call.name,
            call.agent.model,
            call_id=call.call_id,
            stage=call.stage,
            role=call.role,
            details=dict(call.details),
            params=call.agent.request_params(),
        )


AgentResult = CallResult  # the name of version 1, for code written against it


@dataclass
class StageResult:
    """One stage of a run: its calls, in order, and the verdict its shape drew (vote tally,
    judge's pick, ranking...), if any. ``key``: the verdict's name in the result document.
    ``holds_answers``: its calls are the run's answers (its shape says which stages are)."""

    id: str
    kind: str
    calls: list[CallResult] = field(default_factory=list)
    verdict: Verdict | None = None
    key: str | None = None
    holds_answers: bool = False


@dataclass
class RunReport:
    """Everything one run produced: its stages in order, each with its calls."""

    run_id: str
    prompt: str
    started_at: str
    finished_at: str
    duration_s: float
    stages: list[StageResult]
    trace_id: str | None = None
    shape: str = "panel"
    interrupted: bool = False
    recorded_status: RunStatus | None = None  # from history: a run that never finished
    span_id: str | None = None  # the run's own span in its trace
    parent_span_id: str | None = None  # the span it continues (a TRACEPARENT), if any
    attachments: tuple[Attachment, ...] = ()  # sent with the question (-f): by hash
    conversation_id: str | None = None  # None: a conversation of its own (id: the run's)
    turn: int = 1  # which turn of its conversation it is, from 1

    @property
    def calls(self) -> list[CallResult]:
        return [call for stage in self.stages for call in stage.calls]

    @property
    def answer_stages(self) -> list[StageResult]:
        """The stages whose calls are the run's answers, as its shape marked them (a panel's
        one stage; every turn's tool calls of an orchestrator; each stage of a flow)."""
        return [s for s in self.stages if s.holds_answers]

    @property
    def answers(self) -> StageResult | None:
        """The first stage holding answers (version 1's ``agents``)."""
        stages = self.answer_stages
        return stages[0] if stages else None

    @property
    def decided(self) -> bool | None:
        """Whether the run decided what its shape decides: False when a verdict reached no
        decision (no quorum, a tie, an inconsistent judge), None when nothing is decided."""
        from fanout.summary import decided

        return decided([s.verdict for s in self.stages])

    @property
    def agents(self) -> list[CallResult]:
        """The answers stage's calls: the panel's answers (version 1's ``agents``)."""
        stage = self.answers
        return stage.calls if stage else []

    @property
    def synthesis(self) -> CallResult | None:
        """The last stage's single call when it merged the answers (version 1's ``synthesis``)."""
        for stage in self.stages[1:]:
            if stage.kind == "synthesis" and stage.calls:
                return stage.calls[0]
        return None

    def stage(self, stage_id: str) -> StageResult | None:
        return next((s for s in self.stages if s.id == stage_id), None)

    @property
    def status(self) -> RunStatus:
        if self.recorded_status is not None:
            return self.recorded_status
        if self.interrupted:
            return "cancelled"
        calls = self.calls
        products = (s.verdict.product() for s in self.stages if s.verdict is not None)
        product = next((p for p in products if p is not None), None)
        if product is not None:
            # A flow's or an orchestrator's product is its output: without any, the run did not
            # do its job, however many calls answered on the way.
            if not any(product.values()):
                return "partial" if any(c.status == "ok" for c in calls) else "failed"
            return "completed" if all(c.status == "ok" for c in calls) else "partial"
        if calls and all(c.status == "ok" for c in calls):
            return "completed"
        if any(r.status == "ok" for r in self.agents):
            return "partial"
        return "failed"

    @property
    def usage(self) -> Usage:
        total = Usage()
        for result in self.calls:
            total += result.usage
        return total

    @property
    def cost_usd(self) -> float | None:
        """The run's cost; ``None`` when a call that used tokens has no known price."""
        results = self.calls
        if any(r.cost_usd is None and r.usage.total_tokens for r in results):
            return None
        return sum(r.cost_usd or 0.0 for r in results)

    @property
    def output(self) -> dict[str, str]:
        return {r.name: r.answer for r in self.agents if r.status == "ok" and r.answer is not None}

    def to_dict(self) -> dict[str, Any]:
        """The result document: exactly what ``fanout ask --json`` prints."""
        from fanout.export import report_document  # export builds on these models

        return report_document(self)
