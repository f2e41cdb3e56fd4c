"""How the server says no: one line of JSON, in the shape the route's clients read.

The runs API and the samples' routes answer ``{"error": "..."}``; everything under ``/v1``
answers OpenAI's ``{"error": {"message", "type", "param", "code"}}``, which its clients turn
into their typed exceptions (``openai.RateLimitError``...), on every error status.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import Response

from fanout.export import json_line

# OpenAI's error types by status, as its API and the test server name them.
OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


class Json(Response):
    """Strict JSON (no NaN), one line."""

    media_type = "application/json"

    def render(self, content: object) -> bytes:
        assert isinstance(content, dict)
        return json_line(content).encode("utf-8")


def one_line(message: str) -> str:
    return " ".join(str(message).split())


def is_openai_path(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


def error_body(
    status: int, message: str, *, path: str = "", code: str | None = None
) -> dict[str, object]:
    """The body of an error response for ``path``."""
    if not is_openai_path(path):
        return {"error": one_line(message)}
    kind = "server_error" if status >= 500 else OPENAI_TYPES.get(status, "invalid_request_error")
    return {"error": {"message": one_line(message), "type": kind, "param": None, "code": code}}


def error(
    status: int,
    message: str,
    headers: Mapping[str, str] | None = None,
    *,
    path: str = "",
    code: str | None = None,
) -> Json:
    """An error response: ``status``, one line saying why, in the shape ``path``'s clients
    read."""
    body = error_body(status, message, path=path, code=code)
    return Json(body, status_code=status, headers=headers)
