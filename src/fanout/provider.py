"""The one place that speaks to the OpenAI chat API (and every server compatible with it).

One ``AsyncOpenAI`` client per endpoint, created with ``max_retries=0`` so that fanout's own retry
policy is the only one; every failure leaves here as a ``ProviderError``.
"""

from __future__ import annotations

import email.utils
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx2  # openai's own HTTP client, for the request hook
import openai
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam

from fanout.errors import ProviderError
from fanout.models import Agent, Completion, Endpoint, Message, Usage

_T = TypeVar("_T")

# The current attempt's ``on_sent``, for the HTTP client's request hook (hooks are per client,
# attempts are per task: a context variable joins the two).
_ON_SENT: ContextVar[Callable[[], None] | None] = ContextVar("_ON_SENT", default=None)
# Key-shaped strings are hidden even when they are not one of ours (a proxy echoing a header).
_KEY_PATTERN = re.compile(r"(sk-[A-Za-z0-9_\-]{6,}|Bearer\s+[A-Za-z0-9_\-.=]{6,})")
_KEYLESS = "no-key"  # loopback servers ignore the key, but the client insists on one


class OpenAIProvider:
    """Chat completions through the official ``openai`` async client."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ
        self._clients: dict[Endpoint, openai.AsyncOpenAI] = {}
        self._cannot_stream: set[Endpoint] = set()

    async def complete(
        self,
        agent: Agent,
        messages: Sequence[Message],
        *,
        timeout_s: float,
        on_delta: Callable[[str], None] | None = None,
        on_sent: Callable[[], None] | None = None,
        response_format: Mapping[str, Any] | None = None,
    ) -> Completion:
        announce = _ON_SENT.set(on_sent)
        try:
            with self._translated(timeout_s):
                if on_delta is not None and agent.endpoint not in self._cannot_stream:
                    try:
                        return await self._streamed(agent, messages, timeout_s, on_delta)
                    except openai.APIStatusError as exc:
                        if exc.status_code not in (400, 422) or "stream" not in str(exc).lower():
                            raise
                        # A server that rejects streaming (or stream_options) gets whole answers.
                        self._cannot_stream.add(agent.endpoint)
                completion, headers = await self._whole(agent, messages, timeout_s)
                if on_delta is not None and completion.text:
                    on_delta(completion.text)
                return Completion(completion.text, completion.usage, headers)
        finally:
            _ON_SENT.reset(announce)

    async def _whole(
        self, agent: Agent, messages: Sequence[Message], timeout_s: float
    ) -> tuple[Completion, dict[str, str]]:
        client = self._client(agent.endpoint)
        raw = await client.chat.completions.with_raw_response.create(
            model=agent.model,
            messages=_wire(messages),
            timeout=timeout_s,
            temperature=_given(agent.temperature),
            top_p=_given(agent.top_p),
            max_tokens=_given(agent.max_tokens),
            stop=_given(list(agent.stop) if agent.stop else None),
        )
        return _completion_of(raw.parse()), _rate_headers(raw.headers)

    async def _streamed(
        self,
        agent: Agent,
        messages: Sequence[Message],
        timeout_s: float,
        on_delta: Callable[[str], None],
    ) -> Completion:
        client = self._client(agent.endpoint)
        raw = await client.chat.completions.with_raw_response.create(
            model=agent.model,
            messages=_wire(messages),
            timeout=timeout_s,
            stream=True,
            stream_options={"include_usage": True},
            temperature=_given(agent.temperature),
            top_p=_given(agent.top_p),
            max_tokens=_given(agent.max_tokens),
            stop=_given(list(agent.stop) if agent.stop else None),
        )
        headers = _rate_headers(raw.headers)
        if "text/event-stream" not in raw.headers.get("content-type", ""):
            # The server ignored stream=True and sent the whole answer as one JSON body.
            body = await raw.http_response.aread()
            whole = _completion_of(ChatCompletion.model_validate_json(body))
            if whole.text:
                on_delta(whole.text)
            return Completion(whole.text, whole.usage, headers)
        parts: list[str] = []
        usage = None
        chose = False
        async for chunk in raw.parse():
            if chunk.usage is not None:
                usage = _usage_of(chunk.usage)
            if chunk.choices:
                chose = True
                piece = _text(chunk.choices[0].delta.content)
                if piece:
                    parts.append(piece)
                    on_delta(piece)
        if not chose:
            raise ProviderError("the server returned no choices", kind="bad_response", usage=usage)
        return Completion("".join(parts), usage, headers)

    # -- the Batch API (``fanout batch --via openai-batch``) --------------------------------

    async def upload_batch_file(self, endpoint: Endpoint, requests: Path) -> str:
        """Upload a JSONL file of chat requests for the Batch API; the file's id."""
        client = self._client(endpoint)
        with self._translated(120.0), requests.open("rb") as content:
            upload = await client.files.create(file=(requests.name, content), purpose="batch")
        return upload.id

    async def create_batch(self, endpoint: Endpoint, file_id: str, token: str) -> str:
        """Start a batch on an uploaded file, tagged with ``token``; its id."""
        client = self._client(endpoint)
        with self._translated(60.0):
            batch = await client.batches.create(
                input_file_id=file_id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
                metadata={"fanout_job": token},
            )
        return batch.id

    async def find_batch(self, endpoint: Endpoint, token: str) -> str | None:
        """The batch tagged ``token``, if an earlier run created it but never heard back."""
        client = self._client(endpoint)
        with self._translated(60.0):
            async for batch in client.batches.list(limit=100):
                if (batch.metadata or {}).get("fanout_job") == token:
                    return batch.id
        return None

    async def batch_state(self, endpoint: Endpoint, batch_id: str) -> BatchState:
        client = self._client(endpoint)
        with self._translated(60.0):
            batch = await client.batches.retrieve(batch_id)
        counts = batch.request_counts
        return BatchState(
            batch.status,
            batch.output_file_id,
            batch.error_file_id,
            counts.completed if counts else 0,
            counts.failed if counts else 0,
            counts.total if counts else 0,
        )

    async def batch_file(self, endpoint: Endpoint, file_id: str) -> bytes:
        client = self._client(endpoint)
        with self._translated(300.0):
            content = await client.files.content(file_id)
        return content.content

    @staticmethod
    def batch_answer(status_code: int, body: Any) -> Completion:
        """One line of a batch's results, as ``complete`` would have returned it (or raised)."""
        if status_code != 200:
            inner = body.get("error", body) if isinstance(body, dict) else {}
            detail = inner.get("message") if isinstance(inner, dict) else None
            kind, retryable = _classify(status_code, inner.get("code") if inner else None)
            message = f"HTTP {status_code}: {detail or 'failed in the batch'}"
            raise ProviderError(message, kind=kind, status_code=status_code, retryable=retryable)
        try:
            return _completion_of(ChatCompletion.model_validate(body))
        except ValueError as exc:
            first = str(exc).strip().splitlines()[0]
            raise ProviderError(f"malformed response: {first[:200]}", kind="bad_response") from None

    @contextmanager
    def _translated(self, timeout_s: float) -> Iterator[None]:
        """openai's errors, as the ``ProviderError`` the rest of fanout knows."""
        try:
            yield
        except openai.APIStatusError as exc:
            raise self._status_error(exc) from None
        except openai.APITimeoutError:
            raise ProviderError.timeout(timeout_s) from None
        except (openai.APIConnectionError, httpx2.TransportError) as exc:
            cause = exc.__cause__ or exc.__context__ or exc
            detail = f": {self._redact(str(cause))}" if str(cause) else ""
            raise ProviderError(
                f"connection failed{detail}", kind="connection", retryable=True
            ) from None
        except (openai.APIError, httpx2.HTTPError, ValueError, TypeError, AttributeError) as exc:
            # Whatever shape a broken server sends, one line says so.
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ProviderError(
                f"malformed response: {self._redact(first)[:200]}", kind="bad_response"
            ) from None

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
            if not endpoint.is_openai:
                # OPENAI_ORG_ID / OPENAI_PROJECT_ID are OpenAI's business, not another server's.
                client.organization = client.project = None
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
            headers=_rate_headers(headers),
        )

    def _redact(self, text: str) -> str:
        for endpoint in self._clients:
            key = self._environ.get(endpoint.api_key_env)
            if key and len(key) >= 4:
                # as it is, and as repr() shows it inside an error message (escaped)
                for form in (key, repr(key)[1:-1], key.strip()):
                    if len(form) >= 4:
                        text = text.replace(form, "***")
        return _KEY_PATTERN.sub("***", text)


async def _announce_sent(request: httpx2.Request) -> None:
    callback = _ON_SENT.get()
    if callback is None:
        return

    async def trace(event: str, info: object) -> None:
        if event.endswith("send_request_headers.started"):
            callback()

    request.extensions["trace"] = trace


@dataclass(frozen=True)
class BatchState:
    """Where a Batch API batch stands."""

    status: str  # validating, in_progress, finalizing, completed, failed, expired, cancelled...
    output_file_id: str | None
    error_file_id: str | None
    completed: int
    failed: int
    total: int


def request_line(custom_id: str, agent: Agent, messages: Sequence[Message]) -> dict[str, Any]:
    """One line of a Batch API input file: the chat request ``complete`` would send."""
    body: dict[str, Any] = {"model": agent.model, "messages": list(messages)}
    for name in ("temperature", "top_p", "max_tokens"):
        if getattr(agent, name) is not None:
            body[name] = getattr(agent, name)
    if agent.stop:
        body["stop"] = list(agent.stop)
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def _wire(messages: Sequence[Message]) -> list[ChatCompletionMessageParam]:
    return cast("list[ChatCompletionMessageParam]", list(messages))


def _given(value: _T | None) -> _T | openai.Omit:
    """A parameter the persona sets is sent; otherwise the server's default stands."""
    return openai.omit if value is None else value


def _rate_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items() if k.lower().startswith("x-rate")}


def _usage_of(usage: Any) -> Usage:
    return Usage(usage.prompt_tokens or 0, usage.completion_tokens or 0, usage.total_tokens or 0)


def _completion_of(completion: ChatCompletion) -> Completion:
    usage = _usage_of(completion.usage) if completion.usage is not None else None
    if not completion.choices:
        raise ProviderError("the server returned no choices", kind="bad_response", usage=usage)
    message = completion.choices[0].message
    text = _text(message.content) or _text(getattr(message, "refusal", None))
    return Completion(text=text, usage=usage)


def _text(content: object) -> str:
    """A message's text as a valid string: text parts joined, broken surrogates (an emoji cut
    in half at max_tokens) replaced; anything else is a malformed answer."""
    if content is None:
        return ""
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict)]
        if all(isinstance(p, str) for p in parts) and parts:
            content = "".join(p for p in parts if isinstance(p, str))
    if not isinstance(content, str):
        raise ProviderError(
            f"malformed response: the answer is {type(content).__name__}, not text",
            kind="bad_response",
        )
    return content.encode("utf-8", "replace").decode("utf-8")


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
        try:
            parsed = email.utils.parsedate_tz(seconds)
            if parsed is None:
                return None
            value = email.utils.mktime_tz(parsed) - (time.time() if now is None else now)
        except (ValueError, OverflowError, TypeError):  # a date no calendar has
            return None
        return max(value, 0.0)
    return value if 0 <= value < float("inf") else None
