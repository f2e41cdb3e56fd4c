"""Run the app under uvicorn on a socket we bind ourselves, so the URL printed is the one
listened on (``--port 0`` picks a free port)."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import os
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fanout.collector import GEN0, collect_young_every, settle
from fanout.config import Panel
from fanout.errors import ConfigError
from fanout.history import History, history_path
from fanout.interrupt import hand_over
from fanout.serve.limits import (
    BACKLOG,
    Connections,
    Limits,
    Tracked,
    guarded_protocol,
    raise_open_file_limit,
)
from fanout.serve.runs import MAX_QUEUED, MAX_RUNS
from fanout.serve.workers import MAX_WORKERS, supervise

if TYPE_CHECKING:
    import uvicorn
    from starlette.applications import Starlette

TOKEN_ENV = "FANOUT_SERVE_TOKEN"
GRACE_S = 5  # on Ctrl-C, open streams get this long before they are cut
LISTEN_QUEUE = 2048  # connections the kernel holds until we accept them


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ListeningSocket(socket.socket):
    """A listening socket whose kernel queue stays long (a burst of clients waits there, not
    in SYN retries) while the event loop, which passes its accept batch to ``listen``, takes
    only ``BACKLOG`` connections a turn (so the connection cap is checked between batches)."""

    def listen(self, backlog: int = LISTEN_QUEUE, /) -> None:
        super().listen(max(backlog, LISTEN_QUEUE))


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``; ``ConfigError`` if the address cannot be had."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = ListeningSocket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(LISTEN_QUEUE)
        sock.set_inheritable(True)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def uvicorn_config(app: Starlette) -> uvicorn.Config:
    """How uvicorn runs the app: our protocol around its own (timeouts, the connection cap:
    ``limits.py``), a short accept batch, no access log (a line per poll is noise)."""
    import uvicorn
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    connections: Connections = app.state.connections
    limits = connections.limits
    # uvicorn's own proxy-header handling, applied inside the tracking of connections (which
    # needs the socket's address, not the one a proxy forwards).
    trusted = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
    # (uvicorn and Starlette type the same ASGI callables differently.)
    proxied = ProxyHeadersMiddleware(app, trusted_hosts=trusted)  # type: ignore[arg-type]
    served = Tracked(proxied, connections)  # type: ignore[arg-type]
    return uvicorn.Config(
        served,
        proxy_headers=False,
        http=guarded_protocol(connections),
        # asyncio's own loop even where uvloop is installed: the connection cap counts on
        # accepting a batch of BACKLOG at a time, which libuv does not do.
        loop="asyncio",
        lifespan="on",
        access_log=False,
        log_level="warning",
        backlog=BACKLOG,
        timeout_keep_alive=max(1, math.ceil(limits.keep_alive_s)),
        timeout_graceful_shutdown=GRACE_S,
    )


def serve(
    panel: Panel,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    token: str | None = None,
    cors: str | None = None,
    max_runs: int = MAX_RUNS,
    max_queued: int = MAX_QUEUED,
    allowed_hosts: Sequence[str] = (),
    limits: Limits | None = None,
    workers: int = 1,
    say: Callable[[str], None] | None = None,
    flows: Path | None = None,
) -> None:
    """Serve until Ctrl-C or SIGTERM (runs in flight are stopped and recorded interrupted,
    with their answers). Any address but loopback needs a token. Everything that can be wrong
    (the token, the history, the address) is said before the URL is."""
    if not is_loopback(host) and not token:
        raise ConfigError(
            f"--host {host}: other machines could reach it; set --token or {TOKEN_ENV} "
            "(clients then send Authorization: Bearer <token>)"
        )
    if not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(f"--workers: from 1 to {MAX_WORKERS}")
    import uvicorn

    import fanout.provider  # noqa: F401 - the openai client loads now, not after the URL shows
    from fanout.serve.app import create_app

    def app(worker: int | None) -> Starlette:
        return create_app(
            panel,
            token=token,
            cors=cors,
            max_runs=max_runs,
            max_queued=max_queued,
            host=host,
            allowed_hosts=allowed_hosts,
            limits=limits,
            worker=worker,
            flows=flows,
        )

    first = app(None if workers == 1 else 0)  # its checks (token, origin, hosts) now
    History(history_path(os.environ)).close()  # a history that cannot open: said now, once
    raise_open_file_limit()
    sock = bind(host, port)
    (say or _stdout)(f"fanout serve: {url_of(sock)} (Ctrl-C to stop)")

    def work(index: int) -> None:
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        config = uvicorn_config(first if index == 0 else app(index))
        # uvicorn hands Ctrl-C back as KeyboardInterrupt once it has shut down cleanly.
        with contextlib.suppress(KeyboardInterrupt):
            uvicorn.Server(config).run(sockets=[sock])

    with contextlib.suppress(KeyboardInterrupt):
        # Ctrl-C is uvicorn's (or the supervisor's) from here; one that came while the command
        # loaded ends it now.
        hand_over()
        settle()  # start-up is over; frozen before any fork, the workers share its pages
        collect_young_every(GEN0)
        if workers == 1:
            work(0)
        else:
            supervise(workers, work)


def _stdout(message: str) -> None:
    sys.stdout.write(message + "\n")
    sys.stdout.flush()
