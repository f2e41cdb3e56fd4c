"""How long a client may take and how many may be connected (``Limits``), enforced per
connection by ``guarded_protocol``, which wraps uvicorn's HTTP protocol.

* A connection must send a request's headers within ``header_timeout_s`` of connecting (or of
  its last response): a client that sends nothing, or a byte now and then, is closed.
* A body must arrive within ``body_timeout_s`` (``guard.Guard`` answers 408).
* A client that reads nothing while we write to it (an event stream nobody drains) is dropped
  after ``write_timeout_s`` of a full buffer.
* At most ``max_connections`` are open (by default about half the open-file limit, leaving the
  rest for the endpoints' connections and the history). Past the cap, the connection idle the
  longest is closed to make room; if every one is busy with a request, the newcomer gets a 503.
  The server never runs out of file descriptors, so it keeps answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, cast

from starlette.types import ASGIApp, Receive, Scope, Send

BACKLOG = 64  # connections accepted per turn of the event loop (and the listen queue)
DEFAULT_MAX_CONNECTIONS = 4096


def _raw_response(status: str, message: str, *headers: str) -> bytes:
    """A whole HTTP/1.1 response, for a connection closed before uvicorn has a request."""
    body = ('{"error": "' + message + '"}').encode()
    head = [f"HTTP/1.1 {status}", "content-type: application/json", "connection: close",
            f"content-length: {len(body)}", *headers]  # fmt: skip
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


_FULL = _raw_response("503 Service Unavailable", "too many connections: try again soon",
                      "retry-after: 1")  # fmt: skip
_LATE = _raw_response("408 Request Timeout", "no request within the header timeout")

Peer = tuple[str, int]


@dataclass(frozen=True)
class Limits:
    """Timeouts (seconds) and the connection cap of one server."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    write_timeout_s: float = 30.0
    keep_alive_s: float = 5.0
    max_connections: int | None = None  # None: from the open-file limit

    def connection_cap(self) -> int:
        if self.max_connections is not None:
            return self.max_connections
        return default_max_connections()


def default_max_connections() -> int:
    """About half the open-file limit (the other half: endpoints, the history, the batch
    of connections accepted at once), at most ``DEFAULT_MAX_CONNECTIONS``."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return DEFAULT_MAX_CONNECTIONS
    reserve = max(4 * BACKLOG + 256, soft // 4)
    return max(16, min(DEFAULT_MAX_CONNECTIONS, soft - reserve, soft // 2))


def raise_open_file_limit() -> None:
    """Take the open-file limit up to what the system allows (many start at 1,024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft != resource.RLIM_INFINITY and soft < wanted:
        # If it cannot be had, keep what we have: the cap is computed from it.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, 1 << 20), hard))


class Connections:
    """The open connections of one server, oldest idle first."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._open: dict[Peer, GuardedProtocol] = {}
        self._idle: OrderedDict[Peer, GuardedProtocol] = OrderedDict()  # no request in progress
        self._cap: int | None = None

    def __len__(self) -> int:
        return len(self._open)

    def opened(self, connection: GuardedProtocol) -> bool:
        """Count a new connection in; False if there is no room even after closing idle ones."""
        peer = connection.peer
        self._open[peer] = connection
        self._idle[peer] = connection
        if self._cap is None:  # from the open-file limit as it is once serving (raised by then)
            self._cap = self.limits.connection_cap()
        while len(self._open) > self._cap:
            oldest = next((p for p in self._idle if p != peer), None)
            if oldest is None:
                return False
            self._idle.pop(oldest).evict()
            self._open.pop(oldest, None)
        return True

    def closed(self, connection: GuardedProtocol) -> None:
        if self._open.get(connection.peer) is connection:
            del self._open[connection.peer]
        if self._idle.get(connection.peer) is connection:
            del self._idle[connection.peer]

    def busy(self, peer: object) -> None:
        """A request's headers are in (from the ASGI side, by the client's address)."""
        connection = self._open.get(_peer(peer))
        if connection is not None:
            self._idle.pop(connection.peer, None)
            connection.request_started()

    def idle(self, peer: object) -> None:
        """Its response is over: the connection may wait for the next request."""
        connection = self._open.get(_peer(peer))
        if connection is not None:
            self._idle[connection.peer] = connection
            self._idle.move_to_end(connection.peer)
            connection.request_finished()


def _peer(value: object) -> Peer:
    if isinstance(value, tuple | list) and len(value) >= 2:
        return (str(value[0]), int(value[1]))
    return ("", 0)


class GuardedProtocol(asyncio.Protocol):
    """uvicorn's HTTP protocol, with the timeouts and the cap of ``Limits`` around it."""

    inner_class: ClassVar[Callable[..., asyncio.Protocol]]
    connections: ClassVar[Connections]

    def __init__(self, **kwargs: object) -> None:
        self.inner = self.inner_class(**kwargs)
        self.transport: asyncio.Transport | None = None
        self.peer: Peer = ("", 0)
        self._deadline: asyncio.TimerHandle | None = None
        self._writing: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = writable = cast(asyncio.Transport, transport)  # (uvloop: no subclass)
        self.peer = _peer(self.transport.get_extra_info("peername"))
        self.inner.connection_made(transport)
        if not self.connections.opened(self):
            writable.write(_FULL)
            writable.close()
            return
        self._arm_header_timeout()

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        result: bool | None = self.inner.eof_received()
        return result

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        self.connections.closed(self)
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        loop = asyncio.get_running_loop()
        if self._writing is None:
            self._writing = loop.call_later(self.connections.limits.write_timeout_s, self._abort)
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self._writing is not None:
            self._writing.cancel()
            self._writing = None
        self.inner.resume_writing()

    # -- what Connections and the guard tell it ---------------------------------------------

    def request_started(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def request_finished(self) -> None:
        self._arm_header_timeout()

    def evict(self) -> None:
        """Closed to make room for a newer connection (this one was idle the longest)."""
        self._cancel()
        if self.transport is not None:
            self.transport.abort()

    # ---------------------------------------------------------------------------------------

    def _arm_header_timeout(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        loop = asyncio.get_running_loop()
        seconds = self.connections.limits.header_timeout_s
        self._deadline = loop.call_later(seconds, self._too_slow)

    def _too_slow(self) -> None:
        self._deadline = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_LATE)
            self.transport.close()

    def _abort(self) -> None:
        self._writing = None
        if self.transport is not None:
            self.transport.abort()  # nothing it was sent is being read: drop, do not flush

    def _cancel(self) -> None:
        for timer in (self._deadline, self._writing):
            if timer is not None:
                timer.cancel()
        self._deadline = self._writing = None


class Tracked:
    """The ASGI app as uvicorn calls it: tells ``connections`` when a request is in progress
    on a connection (known by the client's address, before any proxy header replaces it), so
    that no timeout meant for an idle connection cuts a long answer short."""

    def __init__(self, app: ASGIApp, connections: Connections) -> None:
        self.app, self.connections = app, connections

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        self.connections.busy(client)
        try:
            await self.app(scope, receive, send)
        finally:
            self.connections.idle(client)


def guarded_protocol(connections: Connections) -> type[GuardedProtocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` bound to one server's connections."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    return type(
        "FanoutHTTPProtocol",
        (GuardedProtocol,),
        {"inner_class": AutoHTTPProtocol, "connections": connections},
    )
