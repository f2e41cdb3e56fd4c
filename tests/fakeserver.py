"""A scriptable, OpenAI-compatible HTTP server for tests and benchmarks (stdlib only).

Usage::

    with FakeOpenAI() as server:
        server.script("model-a", Fault(429, headers={"retry-after": "0.05"}), Reply(text="hi"))
        server.default = Reply(latency=0.2)  # used once a model's script is exhausted
        client = openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)
        ...
        assert server.count("model-a") == 2 and server.max_in_flight == 1

The server listens on 127.0.0.1 (OS-assigned port) and serves ``POST /v1/chat/completions``
(``/chat/completions`` too). Each request's ``model`` picks the next step of that model's
script, falling back to ``server.default`` (``Reply()`` unless set). Steps:

* ``Reply``        -- a normal chat.completion, or an SSE stream when ``"stream": true``.
* ``Fault``        -- an HTTP error with an OpenAI-style error body.
* ``Reset``        -- read the request, then abort the TCP connection (RST), no response.
* ``Hang``         -- read the request and never answer.
* ``Trickle``      -- 200 + headers, then one byte of whitespace per ``interval``, forever.
* ``Malformed``    -- a 200 ``application/json`` response whose body is not JSON (or any body
                      under any content type: an HTML page, a raw event stream).
* ``EmptyChoices`` -- a 200 chat.completion with ``"choices": []``.
* ``BadLine``      -- in a Batch API output file, this request's line is not JSON (cut short
  after its ``custom_id``, or garbage without one); a chat request gets a ``Malformed`` body.

Every step waits ``latency`` seconds first. Waits never block other requests, and end early
when the client disconnects or the server stops, so ``stop()`` releases hung handlers promptly.
Accepted chat requests are recorded in ``server.requests``; ``server.max_in_flight`` is the
peak number of chat requests being handled at once (counted from "body read" until "response
complete or connection dropped"). ``/v1/files`` and ``/v1/batches`` hold a Batch API
(``server.script(UPLOADS, Fault(400))`` fails the next upload, ``Hang()`` hangs it;
``server.uploads`` counts them). Other paths get a 404, bodies that are not a JSON object
with a string ``model`` get a 400; neither is recorded.
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import itertools
import json
import os
import re
import selectors
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

__all__ = ["BadLine", "EmptyChoices", "FakeOpenAI", "Fault", "Hang", "Malformed", "RecordedRequest"]
__all__ += ["UPLOADS", "Reply", "Reset", "Step", "Trickle"]

CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")
UPLOADS = "/v1/files"  # server.script(UPLOADS, Fault(400)): how the next upload is answered
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


@dataclass(frozen=True)
class Reply:
    """A successful completion; ``text=None`` means ``f"{model} says: {last user message}"``.

    ``gate=N`` holds the reply until ``max_in_flight`` reaches N (a deterministic concurrency
    check); if that takes over ``gate_timeout`` seconds the request gets a 400 instead.
    Streaming: ``hold`` stops a stream before its last piece until the event is set (a test's
    way to look at a half-streamed answer); ``stream_usage=False`` leaves out the usage chunk;
    ``can_stream=False`` answers ``"stream": true`` with a plain JSON body, like servers that
    do not stream; ``cut_after=N`` sends N pieces and then ends the body cleanly, with no
    ``finish_reason``, no usage and no ``[DONE]`` (a stream that lost its end); ``send_done=False``
    leaves out ``data: [DONE]`` (some servers do).

    ``finish_reason`` is what the answer (or the stream's last piece) says (``None``: null).
    ``raw_usage`` is spliced verbatim into the JSON as the usage object, for what ``json.dumps``
    cannot write (``{"completion_tokens": 1e400}``). ``refuse_response_format`` answers a request
    carrying ``response_format`` with a 400 naming it, like a server without structured output.
    ``tool_calls`` answers with function calls (``finish_reason`` ``tool_calls``).
    """

    text: str | None = None
    latency: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    usage: dict[str, Any] | None = None
    chunk_delay: float = 0.0
    gate: int = 0
    gate_timeout: float = 10.0
    hold: threading.Event | None = None
    stream_usage: bool = True
    can_stream: bool = True
    finish_reason: str | None = "stop"
    cut_after: int | None = None
    send_done: bool = True
    raw_usage: str | None = None
    refuse_response_format: bool = False
    # Function calls instead of text: [{"name": "ask_x", "arguments": {...}}, ...] ("id"
    # optional). Sent whole, or streamed in pieces (name first, then the arguments' text).
    tool_calls: list[dict[str, Any]] | None = None
    # The answer computed from the request's body (a grader that reads what it grades);
    # wins over ``text``. Called on the server's thread.
    respond: Callable[[dict[str, Any]], str] | None = None


@dataclass(frozen=True)
class Fault:
    """An HTTP error. ``body=None`` gives the OpenAI error shape (with ``code`` if given)."""

    status: int = 500
    body: dict[str, Any] | str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    latency: float = 0.0
    code: str | None = None


@dataclass(frozen=True)
class Reset:
    """Abort the connection with a TCP RST instead of answering."""

    latency: float = 0.0


@dataclass(frozen=True)
class Hang:
    """Never answer (until the client disconnects or the server stops)."""

    latency: float = 0.0


@dataclass(frozen=True)
class Trickle:
    """Send 200 + headers, then one whitespace byte every ``interval`` seconds, never finishing."""

    interval: float = 0.05
    latency: float = 0.0


@dataclass(frozen=True)
class Malformed:
    """Answer ``status`` with ``body`` as it is, labelled ``content_type`` (by default a body
    that is not JSON, labelled application/json)."""

    body: str = "{not json"
    status: int = 200
    latency: float = 0.0
    content_type: str = "application/json"


@dataclass(frozen=True)
class EmptyChoices:
    """A 200 chat.completion (or stream chunk) with ``"choices": []``."""

    latency: float = 0.0


@dataclass(frozen=True)
class BadLine:
    """A Batch API result line that is not JSON: the real line cut in half (its ``custom_id``
    can still be read), or with ``keep_id=False`` a line with no trace of the request."""

    keep_id: bool = True
    latency: float = 0.0


Step = Reply | Fault | Reset | Hang | Trickle | Malformed | EmptyChoices | BadLine


@dataclass
class RecordedRequest:
    """One accepted chat request. ``finished`` is set once it is answered or dropped."""

    model: str
    body: dict[str, Any]
    headers: dict[str, str]
    path: str
    started: float
    finished: float | None = None


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _words(text: str) -> int:
    return len(text.split())


class FakeOpenAI:
    """The fake server. Use as a context manager, or call ``start()`` / ``stop()``."""

    def __init__(self) -> None:
        self.default: Step = Reply()
        self._cond = threading.Condition()
        self._scripts: dict[str, deque[Step]] = {}
        self._requests: list[RecordedRequest] = []
        self._live: dict[int, RecordedRequest] = {}  # in flight, recorded since the last reset
        self._files: dict[str, bytes] = {}
        self._batches: dict[str, dict[str, Any]] = {}
        self.uploads = 0  # /v1/files uploads received (answered or not)
        self._max_in_flight = 0
        self._conns: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> FakeOpenAI:
        if self._httpd is not None:
            raise RuntimeError("FakeOpenAI already started")
        self._stopping.clear()
        self._httpd = _Server(self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, drop every open connection and wait (bounded) for handlers."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.server_close()
        with self._cond:
            self._cond.notify_all()  # wake gated replies
            for conn in self._conns:
                _shutdown(conn)
            self._cond.wait_for(lambda: not self._conns, timeout)
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("FakeOpenAI is not running")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- scripting and inspection ----------------------------------------------------------
    def script(self, model: str, *steps: Step) -> None:
        """Append steps to ``model``'s script; each request for that model consumes one."""
        with self._cond:
            self._scripts.setdefault(model, deque()).extend(steps)

    def reset(self) -> None:
        """Forget scripts, default, recorded requests and max_in_flight."""
        with self._cond:
            self._scripts.clear()
            self.default = Reply()
            self._requests.clear()
            self._live.clear()  # stragglers from before the reset no longer count
            self._max_in_flight = 0
            self._files.clear()
            self._batches.clear()
            self.uploads = 0

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._cond:
            return list(self._requests)

    def count(self, model: str | None = None) -> int:
        with self._cond:
            return sum(1 for r in self._requests if model is None or r.model == model)

    @property
    def max_in_flight(self) -> int:
        with self._cond:
            return self._max_in_flight

    def wait_for_uploads(self, n: int, timeout: float = 10.0) -> None:
        """Block until at least ``n`` /v1/files uploads were received; else TimeoutError."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.uploads >= n, timeout):
                raise TimeoutError(f"got {self.uploads} uploads, wanted {n}")

    def _upload_step(self) -> Step | None:
        """The next step of the ``UPLOADS`` script, if any (an upload is otherwise stored)."""
        with self._cond:
            self.uploads += 1
            self._cond.notify_all()
            queue = self._scripts.get(UPLOADS)
            return queue.popleft() if queue else None

    def wait_for_requests(self, n: int, timeout: float = 10.0) -> None:
        """Block until at least ``n`` chat requests were received; else raise TimeoutError."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._requests) >= n, timeout):
                raise TimeoutError(f"got {len(self._requests)} requests, wanted {n}")

    # -- the Batch API: each line is answered as a chat request would be -------------------
    @property
    def files(self) -> dict[str, bytes]:
        return self._files

    @property
    def batches(self) -> dict[str, dict[str, Any]]:
        return self._batches

    def _store_file(self, content: bytes) -> str:
        with self._cond:
            file_id = f"file-{len(self._files) + 1}"
            self._files[file_id] = content
            return file_id

    def _file_object(self, file_id: str) -> dict[str, Any]:
        content = self._files[file_id]
        return {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": f"{file_id}.jsonl",
            "purpose": "batch",
            "status": "processed",
        }

    def _create_batch(self, input_file_id: str, metadata: dict[str, Any]) -> dict[str, Any]:
        """Run every line through the scripts now; report in_progress once, then completed."""
        out: list[dict[str, Any] | str] = []
        errors: list[dict[str, Any]] = []
        for line in self._files[input_file_id].decode().splitlines():
            item = json.loads(line)
            body = item["body"]
            rec = RecordedRequest(body["model"], body, {}, "batch", time.monotonic())
            step = self._begin(rec)
            self._end(rec)
            if isinstance(step, Fault):
                fault = _error(step.status, code=step.code) if step.body is None else step.body
                response = {"status_code": step.status, "body": fault}
            elif isinstance(step, Malformed):  # a result line whose body is not a chat answer
                try:
                    odd: Any = json.loads(step.body)
                except ValueError:
                    odd = step.body
                response = {"status_code": step.status, "body": odd}
            else:
                text = (
                    step.respond(body)
                    if isinstance(step, Reply) and step.respond is not None
                    else step.text
                    if isinstance(step, Reply) and step.text is not None
                    else (f"{body['model']} says: {body['messages'][-1]['content']}")
                )
                choice = {"index": 0, "message": {"role": "assistant", "content": text}}
                choice["finish_reason"] = step.finish_reason if isinstance(step, Reply) else "stop"
                response = {
                    "status_code": 200,
                    "body": _completion(body["model"], [choice], _usage(body, text)),
                }
            result = {"id": f"req-{len(out)}", "custom_id": item["custom_id"]}
            entry = {**result, "response": response, "error": None}
            if isinstance(step, BadLine):
                whole = json.dumps(entry)
                out.append(whole[: len(whole) // 2] if step.keep_id else "\x00{garbage")
            else:
                (out if response["status_code"] == 200 else errors).append(entry)
        with self._cond:
            batch_id = f"batch-{len(self._batches) + 1}"
            output = "".join(
                (r if isinstance(r, str) else json.dumps(r)) + "\n" for r in out
            ).encode()
            error = "".join(json.dumps(r) + "\n" for r in errors).encode()
            self._batches[batch_id] = {
                "id": batch_id,
                "object": "batch",
                "endpoint": "/v1/chat/completions",
                "input_file_id": input_file_id,
                "completion_window": "24h",
                "created_at": int(time.time()),
                "status": "validating",
                "metadata": metadata,
                "output_file_id": None,
                "error_file_id": None,
                "_files": (output, error),
                "request_counts": {
                    "total": len(out) + len(errors),
                    "completed": len(out),
                    "failed": len(errors),
                },
            }
            return self._batch_status(batch_id, advance=False)

    def _batch_status(self, batch_id: str, advance: bool = True) -> dict[str, Any]:
        with self._cond:
            batch = self._batches[batch_id]
            if advance and batch["status"] == "validating":
                batch["status"] = "in_progress"
            elif advance and batch["status"] == "in_progress":
                output, error = batch["_files"]
                batch["status"] = "completed"
                batch["output_file_id"] = self._store_file(output) if output else None
                batch["error_file_id"] = self._store_file(error) if error else None
            return {k: v for k, v in batch.items() if not k.startswith("_")}

    # -- called by handler threads ---------------------------------------------------------
    def _begin(self, rec: RecordedRequest) -> Step:
        with self._cond:
            queue = self._scripts.get(rec.model)
            step = queue.popleft() if queue else self.default
            self._requests.append(rec)
            self._live[id(rec)] = rec
            self._max_in_flight = max(self._max_in_flight, len(self._live))
            self._cond.notify_all()
            return step

    def _wait_gate(self, n: int, timeout: float) -> bool:
        def done() -> bool:
            return self._max_in_flight >= n or self._stopping.is_set()

        with self._cond:
            self._cond.wait_for(done, timeout)
            return self._max_in_flight >= n

    def _end(self, rec: RecordedRequest) -> None:
        with self._cond:
            self._live.pop(id(rec), None)
            rec.finished = time.monotonic()

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._cond:
            if add:
                self._conns.add(conn)
                if self._stopping.is_set():
                    _shutdown(conn)
            else:
                self._conns.discard(conn)
                self._cond.notify_all()


def _shutdown(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, fake: FakeOpenAI) -> None:
        self.fake = fake
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # dropped connections are expected
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server: _Server
    _rec: RecordedRequest | None = None  # the chat request being answered, until _done()

    def setup(self) -> None:
        super().setup()
        self.server.fake._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            with contextlib.suppress(OSError):
                super().finish()
        finally:
            self.server.fake._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- routing ---------------------------------------------------------------------------
    def do_POST(self) -> None:
        self.close_connection |= "transfer-encoding" in self.headers  # unsupported: hang up
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        path = urlsplit(self.path).path.rstrip("/")
        if path in ("/v1/files", "/v1/batches"):
            return self._batch_api_post(path, raw)
        if path not in CHAT_PATHS:
            return self._not_found()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return self._send_json(400, _error(400, "body must be a JSON object with a model"))
        headers = {k.lower(): v for k, v in self.headers.items()}
        self._rec = RecordedRequest(body["model"], body, headers, path, time.monotonic())
        fake = self.server.fake
        step = fake._begin(self._rec)
        if isinstance(step, Reply) and not fake._wait_gate(step.gate, step.gate_timeout):
            message = f"fake gate: {step.gate} requests were never in flight together"
            step = Fault(400, body=_error(400, message))
        try:
            if self._idle(step.latency):
                self._run(step, body)
            else:
                self.close_connection = True
        except OSError:  # client went away mid-response
            self.close_connection = True
        finally:
            self._done()

    def _done(self) -> None:
        """End the in-flight accounting. Called *before* the final write of a response, so a
        client that has its whole answer can rely on ``finished`` being set."""
        if self._rec is not None:
            self.server.fake._end(self._rec)
            self._rec = None

    def _not_found(self) -> None:
        if self.command != "POST" and int(self.headers.get("content-length") or 0) > 0:
            self.rfile.read(int(self.headers["content-length"]))
        self._send_json(404, _error(404, f"no route for {self.command} {self.path}"))

    def do_GET(self) -> None:
        path = urlsplit(self.path).path.rstrip("/")
        fake = self.server.fake
        parts = path.split("/")
        if len(parts) == 4 and parts[2] == "batches" and parts[3] in fake.batches:
            return self._send_json(200, fake._batch_status(parts[3]))
        if path == "/v1/batches":
            listed = [fake._batch_status(b, advance=False) for b in list(fake.batches)]
            return self._send_json(200, {"object": "list", "data": listed, "has_more": False})
        if len(parts) == 5 and parts[2] == "files" and parts[4] == "content":
            content = fake.files.get(parts[3])
            if content is not None:
                return self._send(200, content, "application/octet-stream", {})
        self._not_found()

    do_PUT = do_PATCH = do_DELETE = _not_found

    # -- the Files and Batch APIs (just enough for /v1/chat/completions batches) -------------
    def _batch_api_post(self, path: str, raw: bytes) -> None:
        fake = self.server.fake
        if path == "/v1/files":
            step = fake._upload_step()
            if isinstance(step, Fault):
                fault_body = _error(step.status) if step.body is None else step.body
                return self._send_json(step.status, fault_body, step.headers)
            if isinstance(step, Hang):
                self._idle(None)
                self.close_connection = True
                return None
            message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                b"content-type: " + self.headers["content-type"].encode() + b"\r\n\r\n" + raw
            )
            for part in message.iter_parts():
                if part.get_param("name", header="content-disposition") == "file":
                    payload = part.get_payload(decode=True)
                    file_id = fake._store_file(payload if isinstance(payload, bytes) else b"")
                    return self._send_json(200, fake._file_object(file_id))
            return self._send_json(400, _error(400, "no file in the upload"))
        body = json.loads(raw)
        if body.get("input_file_id") not in fake.files:
            return self._send_json(404, _error(404, "no such input file"))
        return self._send_json(
            200, fake._create_batch(body["input_file_id"], body.get("metadata") or {})
        )

    # -- steps -----------------------------------------------------------------------------
    def _run(self, step: Step, body: dict[str, Any]) -> None:
        model: str = body["model"]
        if isinstance(step, Reply):
            text = step.respond(body) if step.respond is not None else step.text
            if text is None:
                messages = body.get("messages") or []
                users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
                last = _content_text(users[-1].get("content")) if users else ""
                text = f"{model} says: {last}"
            if step.refuse_response_format and "response_format" in body:
                refusal = _error(400, "response_format is not supported by this server")
                return self._send_json(400, refusal, step.headers)
            usage: dict[str, Any] = _usage(body, text) if step.usage is None else step.usage
            if step.raw_usage is not None:
                usage = _RAW_USAGE
            if step.tool_calls is not None:
                return self._tool_calls(body, step, usage)
            if body.get("stream") and step.can_stream:
                self._stream(body, re.findall(r"\S+\s*|\s+", text), usage, step)
            else:
                message = {"role": "assistant", "content": text}
                choice = {"index": 0, "message": message, "finish_reason": step.finish_reason}
                data = _spliced(json.dumps(_completion(model, [choice], usage)), step.raw_usage)
                self._send(200, data, "application/json", step.headers)
        elif isinstance(step, EmptyChoices):
            if body.get("stream"):
                self._start_chunked(200, "text/event-stream", {})
                self._write_chunk(_sse(_completion(model, [], None, f"chatcmpl-fake{next(_ids)}")))
                self._end_stream()
            else:
                self._send_json(200, _completion(model, [], _usage(body, "")))
        elif isinstance(step, Fault):
            fault_body = _error(step.status, code=step.code) if step.body is None else step.body
            self._send_json(step.status, fault_body, step.headers)
        elif isinstance(step, Malformed):
            self._send(step.status, step.body.encode(), step.content_type, {})
        elif isinstance(step, BadLine):
            self._send(200, b"{not json", "application/json", {})
        elif isinstance(step, Reset):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self._done()
            os.close(self.connection.detach())  # linger 0: the kernel answers with an RST
        elif isinstance(step, Hang):
            self._idle(None)
            self.close_connection = True
        elif isinstance(step, Trickle):
            self._start_chunked(200, "application/json", {})
            while True:
                self._write_chunk(b" ")
                if not self._idle(step.interval):
                    break
            self.close_connection = True

    def _stream(
        self, body: dict[str, Any], pieces: list[str], usage: dict[str, Any], step: Reply
    ) -> None:
        model: str = body["model"]
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        extra = {"usage": None} if include_usage else {}
        deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
        deltas += [{"content": p} for p in pieces]
        chunk_id = f"chatcmpl-fake{next(_ids)}"
        self._start_chunked(200, "text/event-stream", step.headers)
        for i, delta in enumerate(deltas):
            if step.cut_after is not None and i > step.cut_after:
                # The body ends cleanly (a zero-length chunk), but the answer has no end.
                self._done()
                self.wfile.write(b"0\r\n\r\n")
                return
            if i and not self._idle(step.chunk_delay):
                self.close_connection = True
                return
            if i == len(deltas) - 1 and step.hold is not None and not self._hold(step.hold):
                self.close_connection = True
                return
            done = step.finish_reason if i == len(deltas) - 1 else None
            choice = {"index": 0, "delta": delta, "finish_reason": done}
            self._write_chunk(_sse(_completion(model, [choice], None, chunk_id) | extra))
        if include_usage and step.stream_usage:
            chunk = json.dumps(_completion(model, [], usage, chunk_id))
            self._write_chunk(b"data: " + _spliced(chunk, step.raw_usage) + b"\n\n")
        self._end_stream(step.send_done)

    def _tool_calls(self, body: dict[str, Any], step: Reply, usage: dict[str, Any]) -> None:
        model: str = body["model"]
        calls = [
            {
                "id": str(c.get("id") or f"call_{next(_ids)}"),
                "type": "function",
                "function": {
                    "name": c["name"],
                    "arguments": c["arguments"]
                    if isinstance(c.get("arguments"), str)
                    else json.dumps(c.get("arguments") or {}),
                },
            }
            for c in step.tool_calls or []
        ]
        if not (body.get("stream") and step.can_stream):
            message = {"role": "assistant", "content": None, "tool_calls": calls}
            choice = {"index": 0, "message": message, "finish_reason": "tool_calls"}
            self._send_json(200, _completion(model, [choice], usage), step.headers)
            return
        chunk_id = f"chatcmpl-fake{next(_ids)}"
        deltas: list[dict[str, Any]] = [{"role": "assistant", "content": None}]
        for index, call in enumerate(calls):
            named = {"name": call["function"]["name"], "arguments": ""}
            deltas.append(
                {
                    "tool_calls": [
                        {"index": index, "id": call["id"], "type": "function", "function": named}
                    ]
                }
            )
            deltas.append(
                {
                    "tool_calls": [
                        {"index": index, "function": {"arguments": call["function"]["arguments"]}}
                    ]
                }
            )
        self._start_chunked(200, "text/event-stream", step.headers)
        for i, delta in enumerate(deltas):
            done = "tool_calls" if i == len(deltas) - 1 else None
            choice = {"index": 0, "delta": delta, "finish_reason": done}
            self._write_chunk(_sse(_completion(model, [choice], None, chunk_id)))
        if (body.get("stream_options") or {}).get("include_usage"):
            self._write_chunk(_sse(_completion(model, [], usage, chunk_id)))
        self._end_stream()

    def _hold(self, event: threading.Event, limit: float = 30.0) -> bool:
        """Wait for ``event`` (at most ``limit`` s); False if the client left or we stop."""
        deadline = time.monotonic() + limit
        while not event.wait(0.05):
            if time.monotonic() > deadline or not self._idle(0.001):
                return False
        return True

    # -- low-level I/O ---------------------------------------------------------------------
    def _idle(self, seconds: float | None) -> bool:
        """Wait ``seconds`` (None: forever). False if the client left or the server stops."""
        stopping = self.server.fake._stopping
        if seconds is not None and seconds <= 0:
            return not stopping.is_set()
        deadline = None if seconds is None else time.monotonic() + seconds
        with selectors.DefaultSelector() as sel:
            sel.register(self.connection, selectors.EVENT_READ)
            while not stopping.is_set():
                left = 0.25 if deadline is None else min(0.25, deadline - time.monotonic())
                if left <= 0:
                    return True
                if sel.select(left):  # readable while waiting: EOF/reset, or stray bytes
                    try:
                        peek = self.connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                    except BlockingIOError:
                        continue
                    except OSError:
                        return False
                    if not peek:
                        return False
                    stopping.wait(left)  # pipelined data: don't spin on it
        return False

    def _send(self, status: int, data: bytes, ctype: str, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self._done()
        self.end_headers()
        self.wfile.write(data)

    def _send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        data = obj.encode() if isinstance(obj, str) else json.dumps(obj).encode()
        self._send(status, data, "application/json", headers or {})

    def _start_chunked(self, status: int, ctype: str, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("transfer-encoding", "chunked")
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _end_stream(self, send_done: bool = True) -> None:
        self._done()
        self.wfile.write(b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n" if send_done else b"0\r\n\r\n")


# Stands in for ``Reply.raw_usage`` until the JSON is written, then is replaced by it verbatim.
_RAW_USAGE = {"fake-raw-usage": True}


def _spliced(data: str, raw_usage: str | None) -> bytes:
    if raw_usage is not None:
        data = data.replace(json.dumps(_RAW_USAGE), raw_usage)
    return data.encode()


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _usage(body: dict[str, Any], text: str) -> dict[str, int]:
    messages = body.get("messages") or []
    prompt = sum(_words(_content_text(m.get("content"))) for m in messages if isinstance(m, dict))
    completion = _words(text)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


_ids = itertools.count(1)


def _completion(
    model: str, choices: list[Any], usage: dict[str, Any] | None, chunk_id: str | None = None
) -> dict[str, Any]:
    """A chat.completion, or a chat.completion.chunk when ``chunk_id`` is given."""
    chunk = chunk_id is not None
    out: dict[str, Any] = {
        "id": chunk_id or f"chatcmpl-fake{next(_ids)}",
        "object": "chat.completion.chunk" if chunk else "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }
    if usage is not None or not chunk:
        out["usage"] = usage
    return out


def _error(status: int, message: str | None = None, code: str | None = None) -> dict[str, Any]:
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "api_error")
    if code == "insufficient_quota":
        kind = code
    error = {"message": message or f"fake {status} error", "type": kind, "param": None}
    return {"error": error | {"code": code}}
