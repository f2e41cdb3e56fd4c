"""The data fanout passes around: resolved agents, results and the run report. No I/O here."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

Message = dict[str, str]  # one chat message: {"role": ..., "content": ...}
AgentStatus = Literal["ok", "error", "cancelled", "skipped"]
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


def chat_messages(agent: Agent, prompt: str) -> list[Message]:
    """What a persona is sent: its instructions as the system message, then the prompt."""
    messages: list[Message] = []
    if agent.instructions:
        messages.append({"role": "system", "content": agent.instructions})
    messages.append({"role": "user", "content": prompt})
    return messages


@dataclass(frozen=True)
class Usage:
    """Tokens as the API reported them."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.total_tokens + other.total_tokens,
        )


@dataclass(frozen=True)
class AgentError:
    """Why an agent has no answer."""

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


@dataclass
class AgentResult:
    """One persona's outcome. ``answer`` is set only when ``status == "ok"``."""

    name: str
    model: str
    status: AgentStatus = "cancelled"
    answer: str | None = None
    error: AgentError | None = None
    attempts: int = 0
    latency_s: float | None = None
    ttft_s: float | None = None  # time to first token, when streamed
    usage: Usage = field(default_factory=Usage)
    usage_estimated: bool = False  # the server reported none; counted from the text
    cost_usd: float | None = None  # None: the model's price is unknown


@dataclass
class SynthesisResult(AgentResult):
    """The merged answer. ``partial`` when some personas had no answer to merge."""

    partial: bool = False
    sources: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


@dataclass
class RunReport:
    """Everything one ``fanout ask`` produced, in the panel's order."""

    run_id: str
    prompt: str
    started_at: str
    finished_at: str
    duration_s: float
    agents: list[AgentResult]
    synthesis: SynthesisResult | None = None
    interrupted: bool = False
    recorded_status: RunStatus | None = None  # from history: a run that never finished

    @property
    def status(self) -> RunStatus:
        if self.recorded_status is not None:
            return self.recorded_status
        if self.interrupted:
            return "cancelled"
        outcomes = [r.status for r in self.agents]
        if self.synthesis is not None:
            outcomes.append(self.synthesis.status)
        if outcomes and all(s == "ok" for s in outcomes):
            return "completed"
        if any(r.status == "ok" for r in self.agents):
            return "partial"
        return "failed"

    @property
    def usage(self) -> Usage:
        total = Usage()
        for result in self.agents:
            total += result.usage
        if self.synthesis is not None:
            total += self.synthesis.usage
        return total

    @property
    def cost_usd(self) -> float | None:
        """The run's cost; ``None`` when a call that used tokens has no known price."""
        results = [*self.agents, *([self.synthesis] if self.synthesis else [])]
        if any(r.cost_usd is None and r.usage.total_tokens for r in results):
            return None
        return sum(r.cost_usd or 0.0 for r in results)

    @property
    def output(self) -> dict[str, str]:
        return {r.name: r.answer for r in self.agents if r.status == "ok" and r.answer is not None}
