"""The one place that speaks to the OpenAI chat API (and every server compatible with it).

One ``AsyncOpenAI`` client per endpoint, created with ``max_retries=0`` so that fanout's own retry
policy is the only one; every failure leaves here as a ``ProviderError``.
"""

from __future__ import annotations

import email.utils
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx2  # openai's own HTTP client, for the request hook
import openai

from fanout.errors import ProviderError
from fanout.models import Agent, Endpoint, Usage

Message = dict[str, str]

# Set by the caller for the duration of one attempt; called when the request's first bytes
# are written (after any connection set-up), which is when the server sees it start.
REQUEST_SENT: ContextVar[Callable[[], None] | None] = ContextVar("REQUEST_SENT", default=None)
# Key-shaped strings are hidden even when they are not one of ours (a proxy echoing a header).
_KEY_PATTERN = re.compile(r"(sk-[A-Za-z0-9_\-]{6,}|Bearer\s+[A-Za-z0-9_\-.=]{6,})")
_KEYLESS = "no-key"  # loopback servers ignore the key, but the client insists on one


@dataclass(frozen=True)
class Completion:
    """A successful answer, with the response headers the rate limiter learns from."""

    text: str
    usage: Usage | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


class Provider(Protocol):
    """What the runner needs from an LLM API. Tests hand the runner a scripted one."""

    async def complete(
        self, agent: Agent, messages: Sequence[Message], *, timeout_s: float
    ) -> Completion:
        """One attempt. ``timeout_s`` bounds its reads; the runner bounds the whole attempt."""
        ...

    async def aclose(self) -> None: ...


class OpenAIProvider:
    """Chat completions through the official ``openai`` async client."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ
        self._clients: dict[Endpoint, openai.AsyncOpenAI] = {}

    async def complete(
        self, agent: Agent, messages: Sequence[Message], *, timeout_s: float
    ) -> Completion:
        client = self._client(agent.endpoint)
        options: dict[str, Any] = {}
        for name in ("temperature", "top_p", "max_tokens"):
            value = getattr(agent, name)
            if value is not None:
                options[name] = value
        try:
            raw = await client.chat.completions.with_raw_response.create(
                model=agent.model,
                messages=list(messages),  # type: ignore[arg-type]
                timeout=timeout_s,
                **options,
            )
            completion = raw.parse()
        except openai.APIStatusError as exc:
            raise self._status_error(exc) from None
        except openai.APITimeoutError:
            raise ProviderError(
                f"no answer within {timeout_s:g} s", kind="timeout", retryable=True
            ) from None
        except openai.APIConnectionError as exc:
            cause = exc.__cause__ or exc.__context__
            detail = f": {self._redact(str(cause))}" if cause and str(cause) else ""
            raise ProviderError(
                f"connection failed{detail}", kind="connection", retryable=True
            ) from None
        except (openai.APIError, ValueError) as exc:
            raise ProviderError(
                f"malformed response: {self._redact(str(exc))[:300]}", kind="bad_response"
            ) from None
        headers = {k.lower(): v for k, v in raw.headers.items() if k.lower().startswith("x-rate")}
        if not getattr(completion, "choices", None):
            raise ProviderError("the server returned no choices", kind="bad_response")
        message = completion.choices[0].message
        text = message.content or getattr(message, "refusal", None) or ""
        usage = None
        if completion.usage is not None:
            usage = Usage(
                completion.usage.prompt_tokens or 0,
                completion.usage.completion_tokens or 0,
                completion.usage.total_tokens or 0,
            )
        return Completion(text=text, usage=usage, headers=headers)

    def prepare(self, endpoints: Iterable[Endpoint]) -> None:
        """Build the clients up front, so the first requests of a run are not held back by
        one-time set-up (rate-limited starts would otherwise bunch up at the server)."""
        for endpoint in endpoints:
            _ = self._client(endpoint).chat.completions.with_raw_response

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()

    def _client(self, endpoint: Endpoint) -> openai.AsyncOpenAI:
        client = self._clients.get(endpoint)
        if client is None:
            key = self._environ.get(endpoint.api_key_env) or _KEYLESS
            http = openai.DefaultAsyncHttpxClient(event_hooks={"request": [_announce_sent]})
            client = openai.AsyncOpenAI(
                api_key=key, base_url=endpoint.base_url, max_retries=0, http_client=http
            )
            self._clients[endpoint] = client
        return client

    def _status_error(self, exc: openai.APIStatusError) -> ProviderError:
        status = exc.status_code
        headers = exc.response.headers
        body: Any = exc.body
        code = None
        detail = exc.message
        if isinstance(body, dict):
            inner = body.get("error", body)
            if isinstance(inner, dict):
                code = inner.get("code") or inner.get("type")
                detail = str(inner.get("message") or detail)
        elif isinstance(body, str) and body.strip():
            detail = body.strip()
        detail = " ".join(self._redact(detail).split())[:500]
        kind, retryable = _classify(status, code)
        should_retry = headers.get("x-should-retry")
        if should_retry in ("true", "false") and kind != "insufficient_quota":
            retryable = should_retry == "true"
        message = f"HTTP {status}: {detail}"
        if kind == "insufficient_quota":
            message = f"HTTP {status}: out of quota (a billing problem, not a rate limit): {detail}"
        return ProviderError(
            message,
            kind=kind,
            status_code=status,
            retryable=retryable,
            retry_after=parse_retry_after(headers),
            headers={k.lower(): v for k, v in headers.items() if k.lower().startswith("x-rate")},
        )

    def _redact(self, text: str) -> str:
        for endpoint in self._clients:
            key = self._environ.get(endpoint.api_key_env)
            if key and len(key) >= 4:
                text = text.replace(key, "***")
        return _KEY_PATTERN.sub("***", text)


async def _announce_sent(request: httpx2.Request) -> None:
    callback = REQUEST_SENT.get()
    if callback is None:
        return

    async def trace(event: str, info: object) -> None:
        if event.endswith("send_request_headers.started"):
            callback()

    request.extensions["trace"] = trace


def _classify(status: int, code: Any) -> tuple[str, bool]:
    """(kind, retryable) for an HTTP status."""
    if status == 429:
        if code == "insufficient_quota":
            return "insufficient_quota", False
        return "rate_limit", True
    if status == 408:
        return "timeout", True
    if status == 409:
        return "conflict", True
    if status >= 500:
        return "server_error", True
    names = {400: "bad_request", 401: "auth", 403: "permission", 404: "not_found"}
    return names.get(status, "unprocessable" if status == 422 else "http_error"), False


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds the server asked us to wait: ``retry-after-ms``, else ``retry-after``."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000
        except ValueError:
            value = -1
        if 0 <= value < float("inf"):
            return value
    seconds = headers.get("retry-after")
    if seconds is None:
        return None
    try:
        value = float(seconds)
    except ValueError:
        parsed = email.utils.parsedate_tz(seconds)
        if parsed is None:
            return None
        value = email.utils.mktime_tz(parsed) - (time.time() if now is None else now)
        return max(value, 0.0)
    return value if 0 <= value < float("inf") else None
