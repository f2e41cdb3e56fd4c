"""The one place that speaks to the OpenAI chat API (and every server compatible with it).

One ``AsyncOpenAI`` client per endpoint, created with ``max_retries=0`` so that fanout's own retry
policy is the only one; every failure leaves here as a ``ProviderError``.
"""

from __future__ import annotations

import email.utils
import json
import math
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar, cast

import anyio
import httpx2  # openai's HTTP client: its request hook, and errors raised while reading a stream
import openai
import pydantic
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from fanout.errors import ProviderError
from fanout.models import Agent, Completion, Endpoint, Message, Usage
from fanout.params import header_variables, request_fields, resolved_headers, token_field
from fanout.tracing import CURRENT_TRACEPARENT
from fanout.untrusted import KeyScrubber, ScrubbedStream

_T = TypeVar("_T")

# The current attempt's ``on_sent``, for the HTTP client's request hook (hooks are per client,
# attempts are per task: a context variable joins the two).
_ON_SENT: ContextVar[Callable[[], None] | None] = ContextVar("_ON_SENT", default=None)
# Key-shaped strings are hidden even when they are not one of ours (a proxy echoing a header).
_KEY_PATTERN = re.compile(r"(sk-[A-Za-z0-9_\-]{6,}|Bearer\s+[A-Za-z0-9_\-.=]{6,})")
_KEYLESS = "no-key"  # loopback servers ignore the key, but the client insists on one


class OpenAIProvider:
    """Chat completions through the official ``openai`` async client.

    Whatever the server sends is untrusted: answers are read from the raw JSON (not openai's
    models, which either pass bad values through or reject a whole healthy answer for one bad
    field), token counts are finite non-negative integers or unknown, and a stream counts only
    when it reached its end.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ
        self._clients: dict[Endpoint, openai.AsyncOpenAI] = {}
        self._cannot_stream: set[Endpoint] = set()
        self._cannot_structure: set[Endpoint] = set()  # refused ``response_format`` once
        # The name a model's answer bound goes under, where the server refused the other one.
        self._bound_as: dict[tuple[Endpoint, str], str] = {}
        self._secrets: set[str] = set()  # extra_headers values sent: masked like keys
        # Models that refused an image (-f): told once, then not sent images again; those
        # that took one; and the first request with images to a model, under way.
        self._no_images: dict[tuple[Endpoint, str], ProviderError] = {}
        self._takes_images: set[tuple[Endpoint, str]] = set()
        self._probes: dict[tuple[Endpoint, str], anyio.Event] = {}

    async def complete(
        self,
        agent: Agent,
        messages: Sequence[Message],
        *,
        timeout_s: float,
        on_delta: Callable[[str], None] | None = None,
        on_sent: Callable[[], None] | None = None,
        response_format: Mapping[str, object] | None = None,
        tools: Sequence[Mapping[str, object]] | None = None,
    ) -> Completion:
        """One attempt. ``response_format`` asks for structured output where the endpoint can
        give it; an endpoint that refuses it is asked again without (and from then on).
        ``tools`` are offered to the model; its calls come back in ``tool_calls``.

        What the server says passes here first: the keys fanout sends are hidden in it (a
        server may echo one inside an answer or a function call), before anything shows or
        stores it."""
        self._client(agent.endpoint)  # its key is one to hide from here on,
        self._headers(agent)  # and so are its headers' values
        scrubber = self._key_scrubber()
        shown = ScrubbedStream(scrubber, on_delta) if on_delta is not None and scrubber else None
        completion = await self._complete(
            agent, messages, timeout_s, shown or on_delta, on_sent, response_format, tools
        )
        if shown is not None:
            shown.flush()
        return _scrubbed(completion, scrubber) if scrubber else completion

    async def _complete(
        self,
        agent: Agent,
        messages: Sequence[Message],
        timeout_s: float,
        on_delta: Callable[[str], None] | None,
        on_sent: Callable[[], None] | None,
        response_format: Mapping[str, object] | None,
        tools: Sequence[Mapping[str, object]] | None,
    ) -> Completion:
        announce = _ON_SENT.set(on_sent)
        images = _has_images(messages)
        probe = await self._image_probe(agent) if images else None
        try:
            with self._translated(timeout_s):
                self._check_images(agent, images)
                while True:  # at most four requests: each refusal drops one option for good
                    stream = on_delta is not None and agent.endpoint not in self._cannot_stream
                    structured = agent.endpoint not in self._cannot_structure
                    shape = response_format if structured else None
                    body = self._body(agent, shape)
                    try:
                        if stream and on_delta is not None:
                            completion = await self._streamed(
                                agent, messages, timeout_s, on_delta, body, tools
                            )
                        else:
                            completion = await self._whole(agent, messages, timeout_s, body, tools)
                            if on_delta is not None and completion.text:
                                on_delta(completion.text)
                    except openai.APIStatusError as exc:
                        if images and _refuses_images(exc):
                            raise self._no_images_for(agent, exc) from None
                        if not self._learn(exc, agent, shape, stream):
                            raise
                        continue
                    if images:
                        self._takes_images.add((agent.endpoint, agent.model))
                    return completion
        finally:
            _ON_SENT.reset(announce)
            if probe is not None:  # the others may go now: they know what this one learned
                del self._probes[(agent.endpoint, agent.model)]
                probe.set()

    async def _image_probe(self, agent: Agent) -> anyio.Event | None:
        """The first request with images to a model goes alone: until it is answered, others
        to that model wait, so a model that takes no images refuses one request, not all of
        a panel's (or a batch's). The event of the probe this request is, if it is one."""
        key = (agent.endpoint, agent.model)
        while key not in self._takes_images and key not in self._no_images:
            waiting = self._probes.get(key)
            if waiting is None:
                probe = self._probes[key] = anyio.Event()
                return probe
            await waiting.wait()
        return None

    def _body(
        self, agent: Agent, response_format: Mapping[str, object] | None
    ) -> dict[str, object]:
        """The request's fields beyond model, messages, tools and streaming."""
        bound_as = self._bound_as.get((agent.endpoint, agent.model)) or token_field(agent)
        return request_fields(agent, response_format, bound_as)

    def _headers(self, agent: Agent) -> dict[str, str] | None:
        """The persona's ``extra_headers``, their ``${VAR}`` read now; their values are
        masked in every error from then on."""
        if not agent.extra_headers:
            return None
        headers = resolved_headers(agent.extra_headers, self._environ)
        named = (self._environ.get(v, "") for v in header_variables(agent.extra_headers))
        self._secrets.update(v for v in [*headers.values(), *named] if len(v) >= 4)
        return headers

    def _check_images(self, agent: Agent, images: bool) -> None:
        """A model that refused an image is not sent another: its error, at once."""
        refused = self._no_images.get((agent.endpoint, agent.model)) if images else None
        if refused is not None:
            raise ProviderError(refused.message, kind=refused.kind, status_code=refused.status_code)

    def _no_images_for(self, agent: Agent, exc: openai.APIStatusError) -> ProviderError:
        """The endpoint's 400 about image input, said as what it means, and remembered."""
        error = self._status_error(exc)
        refused = ProviderError(
            f"{error.message} ({agent.model} on {agent.endpoint.host} takes no images: its "
            "other calls with images are not sent)",
            kind="no_images",
            status_code=error.status_code,
        )
        self._no_images[(agent.endpoint, agent.model)] = refused
        return refused

    def _learn(
        self,
        exc: openai.APIStatusError,
        agent: Agent,
        shape: Mapping[str, object] | None,
        stream: bool,
    ) -> bool:
        """Whether a refusal names an option this endpoint does without from now on (then the
        request is made again without it)."""
        bound_as = self._bound_as.get((agent.endpoint, agent.model)) or token_field(agent)
        if shape is not None and _refuses(exc, "response_format"):
            # The server can't do structured output: a plain answer beats none.
            self._cannot_structure.add(agent.endpoint)
        elif stream and _refuses(exc, "stream"):
            # A server that rejects streaming (or stream_options) gets whole answers.
            self._cannot_stream.add(agent.endpoint)
        elif (
            agent.max_tokens is not None
            and agent.token_field is None  # the file named the field: its word stands
            and (agent.endpoint, agent.model) not in self._bound_as
            and _refuses_name(exc, bound_as)
        ):
            other = "max_tokens" if bound_as != "max_tokens" else "max_completion_tokens"
            self._bound_as[(agent.endpoint, agent.model)] = other
        else:
            return False
        return True

    async def _whole(
        self,
        agent: Agent,
        messages: Sequence[Message],
        timeout_s: float,
        body: Mapping[str, object],
        tools: Sequence[Mapping[str, object]] | None = None,
    ) -> Completion:
        client = self._client(agent.endpoint)
        raw = await client.chat.completions.with_raw_response.create(
            model=agent.model,
            messages=[],  # sent in extra_body: see _as_built
            timeout=timeout_s,
            extra_body=_as_built(messages, tools, body),
            extra_headers=self._headers(agent),
        )
        content = await raw.http_response.aread()  # read already; this only hands it over
        whole = _completion_of_body(content, raw.headers.get("content-type", ""))
        return replace(whole, headers=_rate_headers(raw.headers))

    async def _streamed(
        self,
        agent: Agent,
        messages: Sequence[Message],
        timeout_s: float,
        on_delta: Callable[[str], None],
        body: Mapping[str, object],
        tools: Sequence[Mapping[str, object]] | None = None,
    ) -> Completion:
        client = self._client(agent.endpoint)
        raw = await client.chat.completions.with_raw_response.create(
            model=agent.model,
            messages=_wire(messages),
            timeout=timeout_s,
            tools=_given(_tools(tools)),
            stream=True,
            stream_options={"include_usage": True},
            extra_body=dict(body),
            extra_headers=self._headers(agent),
        )
        headers = _rate_headers(raw.headers)
        response = raw.http_response
        try:
            content_type = raw.headers.get("content-type", "")
            if "text/event-stream" not in content_type:
                # The server ignored stream=True and sent the whole answer as one body.
                whole = _completion_of_body(await response.aread(), content_type)
                if whole.text:
                    on_delta(whole.text)
                return replace(whole, headers=headers)
            streamed = await self._read_stream(response, timeout_s, on_delta)
            return replace(streamed, headers=headers)
        finally:
            # Shielded: a cancelled attempt still hands its connection back.
            with anyio.CancelScope(shield=True):
                await response.aclose()

    async def _read_stream(
        self, response: httpx2.Response, timeout_s: float, on_delta: Callable[[str], None]
    ) -> Completion:
        """The answer of a server-sent event stream, which must reach its end (a
        ``finish_reason`` or ``[DONE]``); what arrived before a failure goes with the error."""
        answer = _StreamedAnswer()
        events = _EventReader()
        lines = response.aiter_lines()
        ended = False
        try:
            async for line in lines:
                data = events.feed(line)
                if data is None:
                    continue
                if data.startswith("[DONE]"):
                    ended = True
                    break
                piece = answer.add(_json_of(data))
                if piece:
                    on_delta(piece)
            else:
                last = events.flush()  # an event the body ended without its blank line
                if last is not None and last.startswith("[DONE]"):
                    ended = True
                elif last is not None and (piece := answer.add(_json_of(last))):
                    on_delta(piece)
            if not ended and answer.finish_reason is None:
                raise ProviderError(
                    "the stream ended before the answer did (no finish_reason, no [DONE])",
                    kind="incomplete_stream",
                    retryable=True,  # like a connection reset: the next attempt may get it all
                    usage=answer.usage,
                )
        except Exception as exc:
            error = exc if isinstance(exc, ProviderError) else self._translate(exc, timeout_s)
            if error is None:
                raise
            error.partial_text = answer.text
            raise error from None
        if ended:
            await _drain(lines)
        if not answer.chose:
            raise ProviderError(
                "the server returned no choices", kind="bad_response", usage=answer.usage
            )
        return Completion(
            answer.text,
            answer.usage,
            finish_reason=answer.finish_reason,
            tool_calls=answer.tool_calls(),
            model=answer.model,
        )

    async def list_models(self, endpoint: Endpoint, timeout_s: float = 10.0) -> list[str]:
        """What ``endpoint`` serves (``GET /models``): the model ids, as it lists them."""
        client = self._client(endpoint)
        ids: list[str] = []
        try:
            with anyio.fail_after(timeout_s), self._translated(timeout_s):
                async for model in client.models.list(timeout=timeout_s):
                    if isinstance(model.id, str) and model.id:
                        ids.append(model.id[:200])
        except TimeoutError:  # the whole listing, however many pages
            raise ProviderError.timeout(timeout_s) from None
        return ids

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
        return self._key_scrubber().scrub_bytes(content.content)  # answers and errors alike

    @staticmethod
    def batch_answer(status_code: int, body: object) -> Completion:
        """One line of a batch's results, as ``complete`` would have returned it (or raised)."""
        if status_code != 200:
            inner = body.get("error", body) if isinstance(body, dict) else {}
            detail = inner.get("message") if isinstance(inner, dict) else None
            kind, retryable = _classify(status_code, inner.get("code") if inner else None)
            message = f"HTTP {status_code}: {_scrub(str(detail or 'failed in the batch'))}"
            raise ProviderError(message, kind=kind, status_code=status_code, retryable=retryable)
        return _completion_of(body)

    @contextmanager
    def _translated(self, timeout_s: float) -> Iterator[None]:
        """openai's errors, as the ``ProviderError`` the rest of fanout knows."""
        try:
            yield
        except ProviderError as exc:
            # Every error text leaving here is redacted, whoever wrote it (a server's message
            # may echo the key it was sent).
            exc.message = self._redact(exc.message)
            exc.args = (exc.message,)
            if exc.partial_text:
                exc.partial_text = self._key_scrubber().scrub(exc.partial_text)
            raise
        except Exception as exc:
            error = self._translate(exc, timeout_s)
            if error is None:
                raise
            raise error from None

    def _translate(self, exc: Exception, timeout_s: float) -> ProviderError | None:
        """``exc`` as a ``ProviderError``; ``None`` for what is not the server's doing."""
        if isinstance(exc, openai.APIStatusError):
            return self._status_error(exc)
        if isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException):
            return ProviderError.timeout(timeout_s)
        if isinstance(exc, openai.APIConnectionError | httpx2.TransportError):
            cause = exc.__cause__ or exc.__context__ or exc
            detail = f": {self._redact(str(cause))}" if str(cause) else ""
            return ProviderError(f"connection failed{detail}", kind="connection", retryable=True)
        if isinstance(exc, RecursionError):
            return _malformed("JSON nested too deeply")
        if isinstance(exc, pydantic.ValidationError):
            return _malformed(self._redact(_plain_validation(exc)))
        broken = openai.APIError | httpx2.HTTPError | httpx2.StreamError | ValueError | TypeError
        if isinstance(exc, broken | AttributeError):
            # Whatever shape a broken server sends, one line says so.
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return _malformed(self._redact(first)[:200])
        return None

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
            http = openai.DefaultAsyncHttpxClient(event_hooks={"request": [_on_request]})
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
        body: object = exc.body
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

    def _key_scrubber(self) -> KeyScrubber:
        """The keys of every endpoint spoken to so far (each sent to its server), and the
        header values sent (``extra_headers``)."""
        keys = (self._environ.get(endpoint.api_key_env) for endpoint in self._clients)
        return KeyScrubber([*(key for key in keys if key), *self._secrets])

    def _redact(self, text: str) -> str:
        """An error's text: our keys and header values hidden, and anything else shaped
        like a key."""
        return _KEY_PATTERN.sub("***", self._key_scrubber().scrub(text))


async def _on_request(request: httpx2.Request) -> None:
    """Every request: the attempt's ``traceparent``, and ``on_sent`` when it leaves."""
    parent = CURRENT_TRACEPARENT.get()
    if parent is not None:
        request.headers["traceparent"] = parent
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


def request_line(custom_id: str, agent: Agent, messages: Sequence[Message]) -> dict[str, object]:
    """One line of a Batch API input file: the chat request ``complete`` would send."""
    body: dict[str, object] = {"model": agent.model, "messages": list(messages)}
    body.update(request_fields(agent, None, token_field(agent)))
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def _as_built(
    messages: Sequence[Message],
    tools: Sequence[Mapping[str, object]] | None,
    body: Mapping[str, object],
) -> dict[str, object]:
    """The messages and tools as fanout built them (plain JSON already), for ``extra_body``,
    which the client sends as it is. Passed as typed parameters, they would go through the
    client's transform, which walks every message against its TypedDicts on every request to
    change nothing here: 1.3 of 3.7 ms of CPU per call of a batch (measured by eval's speed
    work, issue 26)."""
    built: dict[str, object] = {"messages": list(messages)}
    if tools:
        built["tools"] = list(tools)
    built.update(body)
    return built


def _wire(messages: Sequence[Message]) -> list[ChatCompletionMessageParam]:
    return cast("list[ChatCompletionMessageParam]", list(messages))


def _given(value: _T | None) -> _T | openai.Omit:
    """A parameter the persona sets is sent; otherwise the server's default stands."""
    return openai.omit if value is None else value


def _rate_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items() if k.lower().startswith("x-rate")}


# The largest count a JSON number holds exactly (and a float converts without overflow).
_MAX_COUNT = 2**53 - 1
_DRAIN_S = 0.1  # after [DONE]: read the body's end, so HTTP/1.1 can reuse the connection


def _refuses(exc: openai.APIStatusError, option: str) -> bool:
    """Whether a 400/422 says the server does not take ``option`` (``stream``,
    ``response_format``). A schema the server finds invalid is our error, not its limit."""
    if exc.status_code not in (400, 422):
        return False
    body = exc.body.get("error", exc.body) if isinstance(exc.body, dict) else None
    if isinstance(body, dict) and body.get("code") == "invalid_json_schema":
        return False
    return option in str(exc).lower()


_REFUSAL_WORDS = (
    "unsupported",
    "not supported",
    "unrecognized",
    "unknown",
    "extra",
    "not permitted",
)


def _refuses_name(exc: openai.APIStatusError, name: str) -> bool:
    """Whether a 400/422 refuses the field ``name`` itself (``Unsupported parameter:
    'max_tokens' ... Use 'max_completion_tokens' instead``), not a value given under it."""
    if exc.status_code not in (400, 422):
        return False
    text = str(exc).lower()
    return name in text and any(word in text for word in _REFUSAL_WORDS)


_IMAGE_WORDS = ("image", "vision", "multimodal", "multi-modal")


def _refuses_images(exc: openai.APIStatusError) -> bool:
    """Whether a 400/422 to a request with images says the model takes none (OpenAI's
    ``image_url is only supported by certain models``, vLLM's ``not a multimodal model``)."""
    return exc.status_code in (400, 422) and any(w in str(exc).lower() for w in _IMAGE_WORDS)


def _has_images(messages: Sequence[Message]) -> bool:
    return any(
        isinstance(part, dict) and part.get("type") == "image_url"
        for message in messages
        if isinstance(message.get("content"), list)
        for part in message["content"]
    )


def _tools(tools: Sequence[Mapping[str, object]] | None) -> list[ChatCompletionToolParam] | None:
    return cast("list[ChatCompletionToolParam]", list(tools)) if tools else None


def _tool_calls(raw: object) -> tuple[dict[str, str], ...]:
    """A message's function calls, as ``{id, name, arguments}``; what is not one is left out
    (the shape answers a call it cannot read with an error, not the whole turn)."""
    calls: list[dict[str, str]] = []
    for item in raw if isinstance(raw, list) else []:
        function = item.get("function") if isinstance(item, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            arguments = function.get("arguments")
            calls.append(
                {
                    "id": str(item.get("id") or f"call_{len(calls)}"),
                    "name": function["name"],
                    "arguments": arguments if isinstance(arguments, str) else "{}",
                }
            )
    return tuple(calls)


def _scrubbed(completion: Completion, scrubber: KeyScrubber) -> Completion:
    """``completion`` with the keys hidden in its text and its function calls."""
    calls = tuple({k: scrubber.scrub(v) for k, v in call.items()} for call in completion.tool_calls)
    return replace(completion, text=scrubber.scrub(completion.text), tool_calls=calls)


def _malformed(detail: str) -> ProviderError:
    return ProviderError(f"malformed response: {detail}", kind="bad_response")


def _scrub(text: str) -> str:
    """Key-shaped strings hidden, where the provider's own keys are not at hand."""
    return _KEY_PATTERN.sub("***", text)


def _kind_of(value: object) -> str:
    """What a JSON value is, in words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    return "a list" if isinstance(value, list) else "an object"


# What a pydantic error type expected, in words (its own ``msg`` is pydantic's jargon).
_EXPECTED = {
    "string_type": "text",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true/false",
    "list_type": "a list",
    "dict_type": "an object",
    "model_type": "an object",
    "literal_error": "one of the values the API allows",
}


def _plain_validation(exc: pydantic.ValidationError) -> str:
    """pydantic's report as one line in plain words, saying where and what
    (``choices[0].message.content is a number, not text``): never its ``[type=...]`` codes
    or errors.pydantic.dev links."""
    first = exc.errors()[0]
    where = ""
    for part in first.get("loc", ()):
        where += f"[{part}]" if isinstance(part, int) else f".{part}" if where else str(part)
    where = where or "the reply"
    kind = first.get("type", "")
    if kind == "missing":
        return f"{where} is missing"
    got = _kind_of(first.get("input"))
    expected = _EXPECTED.get(kind)
    return f"{where} is {got}, not {expected}" if expected else f"{where} is {got}: not valid here"


def _json_of(text: str | bytes) -> object:
    """Parsed JSON; a ``bad_response`` for what is not JSON or nests beyond Python's stack."""
    try:
        return json.loads(text)
    except RecursionError:
        raise _malformed("JSON nested too deeply") from None
    except ValueError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _malformed(f"not JSON ({first[:100]})") from None


def _completion_of_body(body: bytes, content_type: str) -> Completion:
    """A whole answer from its raw body."""
    media = content_type.split(";")[0].strip().lower()
    if "json" not in media:
        # Some servers label JSON as text; only a body that is not JSON is refused for it.
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            shown = _scrub(media)[:60] or "no content type"
            raise ProviderError(
                f"not a JSON chat answer (got {shown})", kind="bad_response"
            ) from None
    else:
        data = _json_of(body)
    return _completion_of(data)


def _completion_of(data: object) -> Completion:
    """A whole chat.completion, checked field by field (``choices[0].message.content``)."""
    if not isinstance(data, dict):
        raise ProviderError(f"not a JSON chat answer (got {_kind_of(data)})", kind="bad_response")
    usage = _usage_of(data.get("usage"))
    choices = data.get("choices")
    error = data.get("error")
    if choices is None and isinstance(error, dict):
        detail = _scrub(" ".join(str(error.get("message") or "no message").split()))[:300]
        raise ProviderError(f"the server answered with an error: {detail}", kind="bad_response")
    if choices is None:
        raise _malformed("the server's reply has no choices")
    if not isinstance(choices, list):
        raise _malformed(f"choices is {_kind_of(choices)}, not a list")
    if not choices:
        raise ProviderError("the server returned no choices", kind="bad_response", usage=usage)
    choice = choices[0]
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        raise _malformed(f"choices[0].message is {_kind_of(message)}, not an object")
    # content null and no refusal: an empty answer (a model may say nothing), not an error.
    text = _text(message.get("content"), "choices[0].message.content") or _text(
        message.get("refusal"), "choices[0].message.refusal"
    )
    return Completion(
        text=text,
        usage=usage,
        finish_reason=_reason(choice),
        tool_calls=_tool_calls(message.get("tool_calls")),
        model=_model(data),
    )


class _StreamedAnswer:
    """The pieces of a streamed answer as they arrive, checked like a whole one."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.model: str | None = None
        self.chose = False
        self._tools: dict[int, dict[str, object]] = {}  # function calls by index, as they grow

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def add(self, chunk: object) -> str:
        """Take one chunk; the text it adds."""
        if not isinstance(chunk, dict):
            raise _malformed(f"a stream chunk is {_kind_of(chunk)}, not an object")
        error = chunk.get("error")
        if error:
            detail = error.get("message") if isinstance(error, dict) else error
            detail = " ".join(_scrub(str(detail or "no message")).split())[:300]
            raise ProviderError(f"the server failed mid-stream: {detail}", kind="bad_response")
        self.model = self.model or _model(chunk)
        if chunk.get("usage") is not None:
            self.usage = _usage_of(chunk["usage"])
        choices = chunk.get("choices")
        if choices is None or choices == []:  # the usage chunk has no choices
            return ""
        if not isinstance(choices, list):
            raise _malformed(f"choices in a stream chunk is {_kind_of(choices)}, not a list")
        if not isinstance(choices[0], dict):
            raise _malformed(
                f"choices[0] in a stream chunk is {_kind_of(choices[0])}, not an object"
            )
        self.chose = True
        choice = choices[0]
        self.finish_reason = _reason(choice) or self.finish_reason
        delta = choice.get("delta")
        if delta is None:
            return ""
        if not isinstance(delta, dict):
            raise _malformed(f"choices[0].delta is {_kind_of(delta)}, not an object")
        self._add_tool_calls(delta.get("tool_calls"))
        piece = _text(delta.get("content"), "choices[0].delta.content") or _text(
            delta.get("refusal"), "choices[0].delta.refusal"
        )
        if piece:
            self.parts.append(piece)
        return piece

    def _add_tool_calls(self, pieces: object) -> None:
        """Function calls arrive in pieces: an id and name first, then the arguments' text."""
        for piece in pieces if isinstance(pieces, list) else []:
            if not isinstance(piece, dict):
                continue
            index = piece.get("index")
            call = self._tools.setdefault(index if isinstance(index, int) else 0, {})
            if isinstance(piece.get("id"), str):
                call["id"] = piece["id"]
            function = piece.get("function")
            if isinstance(function, dict):
                if isinstance(function.get("name"), str):
                    call["name"] = call.get("name", "") + function["name"]
                if isinstance(function.get("arguments"), str):
                    call["arguments"] = call.get("arguments", "") + function["arguments"]

    def tool_calls(self) -> tuple[dict[str, str], ...]:
        whole = [
            {"id": c.get("id"), "type": "function", "function": c}
            for _, c in sorted(self._tools.items())
        ]
        return _tool_calls(whole)


class _EventReader:
    """Server-sent events, line by line: each event's data once its blank line arrives."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> str | None:
        if not line:
            return self.flush()
        name, _, value = line.partition(":")
        if name == "data":  # comments (":...") and other fields (event:, id:) carry no text
            self._data.append(value.removeprefix(" "))
        return None

    def flush(self) -> str | None:
        if not self._data:
            return None
        data, self._data = "\n".join(self._data), []
        return data


async def _drain(lines: AsyncIterator[str]) -> None:
    """Read what follows ``[DONE]`` (the body's end), briefly: a server that keeps talking
    only costs its connection, never a wait."""
    with anyio.move_on_after(_DRAIN_S), suppress(httpx2.HTTPError, httpx2.StreamError):
        async for _ in lines:
            pass


def _model(data: Mapping[str, object]) -> str | None:
    """The model the server says answered (telemetry's ``gen_ai.response.model``)."""
    model = data.get("model")
    return model[:200] if isinstance(model, str) and model else None


def _reason(choice: Mapping[str, object]) -> str | None:
    reason = choice.get("finish_reason")
    return reason if isinstance(reason, str) and reason else None


def _count(value: object) -> int | None:
    """A token count: a finite non-negative integer (``12.0`` too), else unknown."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and 0 <= value <= _MAX_COUNT:
        return value
    return None


def _usage_of(raw: object) -> Usage | None:
    """Usage as the server reported it, or ``None`` (unknown: the runner estimates it) when
    any count is not a count: a string, a list, a negative, ``1e400`` (inf), NaN, a bool."""
    if not isinstance(raw, dict):
        return None
    fields = ("prompt_tokens", "completion_tokens", "total_tokens")
    counts: list[int | None] = []
    for name in fields:
        value = raw.get(name)
        count = _count(value)
        if value is not None and count is None:
            return None
        counts.append(count)
    prompt, completion, total = counts
    if prompt is None and completion is None and total is None:
        return None
    prompt, completion = prompt or 0, completion or 0
    reasoning = _reasoning_tokens(raw)
    if reasoning and total == prompt + completion + reasoning:
        # Counted beside the answer's tokens, not inside them (Gemini's OpenAI endpoint):
        # they are output all the same.
        completion += reasoning
    if total is None:
        total = prompt + completion
    return Usage(prompt, completion, total, min(reasoning, completion))


def _reasoning_tokens(usage: Mapping[str, object]) -> int:
    """``usage.completion_tokens_details.reasoning_tokens``, or 0 (none, or not a count)."""
    details = usage.get("completion_tokens_details")
    value = details.get("reasoning_tokens") if isinstance(details, dict) else None
    return _count(value) or 0


def _text(content: object, where: str) -> str:
    """A message's text as a valid string: text parts joined, broken surrogates (an emoji cut
    in half at max_tokens) replaced; anything else is a malformed answer."""
    if content is None:
        return ""
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict)]
        if all(isinstance(p, str) for p in parts) and parts:
            content = "".join(p for p in parts if isinstance(p, str))
    if not isinstance(content, str):
        raise _malformed(f"{where} is {_kind_of(content)}, not text")
    return content.encode("utf-8", "replace").decode("utf-8")


def _classify(status: int, code: object) -> tuple[str, bool]:
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
