"""Run the app under uvicorn on a socket we bind ourselves, so the URL printed is the one
listened on (``--port 0`` picks a free port)."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from fanout.config import Panel
from fanout.errors import ConfigError

TOKEN_ENV = "FANOUT_SERVE_TOKEN"
GRACE_S = 5  # on Ctrl-C, open streams get this long before they are cut


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``; ``ConfigError`` if the address cannot be had."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(2048)
        sock.set_inheritable(True)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def serve(
    panel: Panel,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    token: str | None = None,
    cors: str | None = None,
    max_runs: int = 16,
    say: Callable[[str], None] | None = None,
    flows: Path | None = None,
) -> None:
    """Serve until Ctrl-C or SIGTERM (runs in flight are stopped and recorded interrupted,
    with their answers). Any address but loopback needs a token."""
    if not is_loopback(host) and not token:
        raise ConfigError(
            f"--host {host}: other machines could reach it; set --token or {TOKEN_ENV} "
            "(clients then send Authorization: Bearer <token>)"
        )
    if token is not None and len(token) < 8:
        raise ConfigError("--token: use at least 8 characters")
    import uvicorn

    import fanout.provider  # noqa: F401 - the openai client loads now, not after the URL shows
    from fanout.serve.app import create_app

    sock = bind(host, port)
    app = create_app(panel, token=token, cors=cors, max_runs=max_runs, flows=flows)
    config = uvicorn.Config(
        app,
        lifespan="on",
        # The access log would show query strings; ours carry nothing secret, but a log
        # line per poll is noise: errors only.
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=GRACE_S,
    )
    (say or _stdout)(f"fanout serve: {url_of(sock)} (Ctrl-C to stop)")
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    # uvicorn hands Ctrl-C back as KeyboardInterrupt once it has shut down cleanly.
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(config).run(sockets=[sock])


def _stdout(message: str) -> None:
    sys.stdout.write(message + "\n")
    sys.stdout.flush()
