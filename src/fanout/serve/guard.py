"""What every request passes before a route sees it (``Guard``, an ASGI middleware).

* The ``Host`` it names must be this server's: loopback names and addresses, the address it is
  bound to (any address when bound to all of them) and the names given with
  ``--allowed-host``. A DNS-rebinding page reaches 127.0.0.1 under its own name, and is refused.
* A state-changing request (``POST``, ``DELETE``...) sent by a page of another origin is refused
  (its ``Origin``, else its ``Sec-Fetch-Site``), unless ``--cors`` allows that origin. curl and
  the openai client send neither header; the dashboard sends its own origin.
* The token (``Authorization: Bearer``, compared in constant time) on every route but the open
  ones (``/healthz`` and the dashboard's shell, which hold no data).
* The body: at most ``MAX_BODY`` bytes, whole within the body timeout (a client that stops
  sending gets a 408), read before the route runs.
* Every response says ``nosniff``, sends no referrer, may not be framed, and the dashboard
  comes with a Content-Security-Policy that allows only its own scripts and styles.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import anyio
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fanout.errors import ConfigError
from fanout.serve.errors import error
from fanout.serve.limits import Limits

MAX_BODY = 1024 * 1024  # bytes: a prompt, not an upload
LOOPBACK_NAMES = frozenset({"localhost"})
WILDCARDS = frozenset({"0.0.0.0", "::", ""})
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_LABEL = r"[a-z0-9_][a-z0-9_-]{0,62}"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")

PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
DATA_CSP = "default-src 'none'; frame-ancestors 'none'"
_COMMON_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
_PAGE_HEADERS = [*_COMMON_HEADERS, (b"content-security-policy", PAGE_CSP.encode())]
_DATA_HEADERS = [*_COMMON_HEADERS, (b"content-security-policy", DATA_CSP.encode())]


def check_token(token: str | None) -> None:
    """``ConfigError`` for a token no client could send back: it goes in an HTTP header, read
    as Latin-1, so it must be printable ASCII; spaces could never be matched."""
    if token is None:
        return
    if not token.strip():
        raise ConfigError("--token is blank: use at least 8 printable characters")
    if not all("!" <= ch <= "~" for ch in token):
        raise ConfigError(
            "--token: use printable ASCII without spaces (it travels in an HTTP header; "
            "e.g. openssl rand -hex 16)"
        )
    if len(token) < 8:
        raise ConfigError("--token: use at least 8 characters")


def check_cors(cors: str | None, token: str | None) -> None:
    """``--cors ORIGIN``: an origin (``https://app.example``), or ``*`` with a token only (any
    site could read every run otherwise)."""
    if cors is None:
        return
    if cors == "*":
        if token is None:
            raise ConfigError(
                "--cors '*' lets any web page read every run: set --token or "
                "FANOUT_SERVE_TOKEN too, or name one origin (--cors https://app.example)"
            )
        return
    parts = urlsplit(cors)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/"):
        raise ConfigError(f"--cors {cors!r}: an origin such as https://app.example, or '*'")


def host_name(value: str) -> str:
    """The host of a ``Host`` header or an address, lowercased, without port or brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    name, colon, port = value.rpartition(":")
    if colon and port.isdigit() and ":" not in name:
        value = name
    return value.removesuffix(".")


def _address(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


@dataclass(frozen=True)
class HostPolicy:
    """Which ``Host`` headers name this server (see the module docstring)."""

    names: frozenset[str]
    bound: str  # the address listened on ("0.0.0.0": all of them)

    @classmethod
    def of(cls, bound: str = "127.0.0.1", allowed: Iterable[str] = ()) -> HostPolicy:
        names = set(LOOPBACK_NAMES)
        for given in allowed:
            name = host_name(given)
            if not (_HOSTNAME.match(name) or _address(name)):
                raise ConfigError(f"--allowed-host {given!r}: a host name, such as fanout.lan")
            names.add(name)
        bound_name = host_name(bound)
        if _address(bound_name) is None and bound_name not in WILDCARDS:
            names.add(bound_name)  # --host my-machine.lan
        return cls(frozenset(names), bound_name)

    def allows(self, host: str) -> bool:
        name = host_name(host)
        if name in self.names:
            return True
        address = _address(name)
        if address is None:
            return False  # a name we were not told about: possibly a rebinding page
        return address.is_loopback or self.bound in WILDCARDS or address == _address(self.bound)


def cross_site(headers: Headers, scheme: str, host: str, cors: str | None) -> str | None:
    """Who sent a state-changing request, when it was a page of another origin; else None."""
    origin = headers.get("origin")
    if origin is not None:
        if cors is not None and (cors == "*" or origin.rstrip("/") == cors.rstrip("/")):
            return None
        return None if same_origin(origin, scheme, host) else f"a page on {origin}"
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return f"a {site} page"
    return None


def same_origin(origin: str, scheme: str, host: str) -> bool:
    parts = urlsplit(origin)
    try:
        port = parts.port
    except ValueError:
        return False
    defaults = {"http": 80, "https": 443}
    ours = urlsplit(f"{scheme}://{host}")
    try:
        our_port = ours.port
    except ValueError:
        return False
    return (
        parts.scheme == scheme
        and parts.hostname is not None
        and parts.hostname == ours.hostname
        and (port or defaults.get(parts.scheme)) == (our_port or defaults.get(scheme))
    )


def is_open_path(path: str) -> bool:
    return path in ("/healthz", "/") or path.startswith("/static/")


class Guard:
    """The checks of the module docstring, in that order, for every HTTP request."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str | None,
        hosts: HostPolicy,
        cors: str | None = None,
        limits: Limits | None = None,
        max_body: int = MAX_BODY,
        worker: int | None = None,
    ) -> None:
        self.app, self.hosts, self.cors = app, hosts, cors
        self.token = None if token is None else token.encode("ascii")
        self.limits = limits or Limits()
        self.max_body = max_body
        self.extra = [] if worker is None else [(b"fanout-worker", str(worker).encode())]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self._checked(scope, receive, self._headed(scope, send))

    async def _checked(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        path = str(scope["path"])
        host = headers.get("host")
        if host is not None and not self.hosts.allows(host):
            name = host_name(host)
            message = f"this server is not {name!r} (start it with --allowed-host {name})"
            await error(421, message, path=path, code="misdirected_request")(scope, receive, send)
            return
        if scope["method"] in STATE_CHANGING:
            who = cross_site(headers, str(scope.get("scheme", "http")), host or "", self.cors)
            if who is not None:
                message = f"refused: {who} may not send requests to this server (--cors ORIGIN)"
                await error(403, message, path=path, code="cross_site")(scope, receive, send)
                return
        if self.token is not None and not is_open_path(path) and not self._authorized(scope):
            denied = error(
                401,
                "unauthorized: send Authorization: Bearer <token>",
                {"WWW-Authenticate": "Bearer"},
                path=path,
                code="invalid_api_key",
            )
            await denied(scope, receive, send)
            return
        if scope["method"] in STATE_CHANGING:
            await self._with_body(scope, receive, send, headers)
            return
        await self.app(scope, receive, send)

    async def _with_body(
        self, scope: Scope, receive: Receive, send: Send, headers: Headers
    ) -> None:
        """Read the whole body (within the limits) before the route runs, then hand it over."""
        path = str(scope["path"])
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            too_large = f"the request body is over {self.max_body} bytes"
            await error(413, too_large, path=path, code="request_too_large")(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        with anyio.move_on_after(self.limits.body_timeout_s) as waited:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return  # the client left: nobody to answer
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_body:
                    too_large = f"the request body is over {self.max_body} bytes"
                    response = error(413, too_large, path=path, code="request_too_large")
                    await response(scope, receive, send)
                    return
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
        if waited.cancelled_caught:
            slow = f"the request body did not arrive within {self.limits.body_timeout_s:g} s"
            late = error(408, slow, {"Connection": "close"}, path=path, code="timeout")
            await late(scope, receive, send)
            return
        body = b"".join(chunks)
        given = False

        async def replay() -> Message:
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _headed(self, scope: Scope, send: Send) -> Send:
        """``send`` adding the security headers to the response's start."""
        extra = [*(_PAGE_HEADERS if scope["path"] == "/" else _DATA_HEADERS), *self.extra]

        async def headed(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        return headed

    def _authorized(self, scope: Scope) -> bool:
        assert self.token is not None
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                given = value
                break
        scheme, _, credential = given.partition(b" ")
        # compare_digest on bytes of any length: no early exit that times the token out.
        return scheme.lower() == b"bearer" and hmac.compare_digest(credential.strip(), self.token)
