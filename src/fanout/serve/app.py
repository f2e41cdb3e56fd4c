"""The routes: runs API, the durable-orchestration samples' routes, the OpenAI-compatible face
and the dashboard, behind a guard (token, body limit) and, when asked, CORS.

Every error a client can cause is a 4xx with one line of JSON, ``{"error": "..."}`` (the
``/v1`` routes use OpenAI's ``{"error": {"message", "type", "code"}}``, which its clients read).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fanout.config import Panel
from fanout.engine import Provider
from fanout.errors import ConfigError, FanoutError
from fanout.export import json_line
from fanout.serve import chat
from fanout.serve.runs import (
    BadRequest,
    LiveRun,
    NotFound,
    RunManager,
    TooBusy,
    is_finished,
    replay_lines,
    shape_names,
    status_document,
)
from fanout.untrusted import load_json

MAX_BODY = 1024 * 1024  # bytes: a prompt, not an upload
RETRY_AFTER_S = 1  # how soon a poller should ask again
WAIT_DEFAULT_S = 60.0  # x-ms-wait-for-response: true
WAIT_MAX_S = 600.0
KEEPALIVE_S = 15.0  # an SSE comment this often, so proxies keep an idle stream open
OPEN_PATHS = ("/healthz", "/", "/static/")  # the dashboard's shell holds no data


class Json(Response):
    """Strict JSON (no NaN), one line."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json_line(content).encode("utf-8")


def error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Json:
    return Json({"error": _one_line(message)}, status_code=status, headers=headers)


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


class BodyTooLarge(Exception):
    pass


class Guard:
    """Token check (constant time) on every route but the open ones, and the body limit, for
    bodies that declare their length and for those that stream it (chunked)."""

    def __init__(self, app: ASGIApp, token: str | None, limit: int = MAX_BODY) -> None:
        self.app, self.token, self.limit = app, token, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        path = str(scope["path"])
        is_open = path == "/healthz" or path == "/" or path.startswith("/static/")
        if self.token is not None and not is_open and not self._authorized(headers):
            denied = error(401, "unauthorized: send Authorization: Bearer <token>")
            denied.headers["WWW-Authenticate"] = "Bearer"
            await denied(scope, receive, send)
            return
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await error(413, f"the request body is over {self.limit} bytes")(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge
            return message

        await self.app(scope, counted, send)

    def _authorized(self, headers: Headers) -> bool:
        assert self.token is not None
        scheme, _, given = headers.get("authorization", "").partition(" ")
        # compare_digest on bytes of any length: no early exit that times the token out.
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode("utf-8", "replace"), self.token.encode("utf-8")
        )


async def read_body(request: Request) -> bytes:
    return await request.body()  # the Guard counts it as it arrives


async def read_json(request: Request) -> dict[str, Any]:
    """The body as a JSON object; ``BadRequest`` for anything else."""
    raw = await read_body(request)
    try:
        value = load_json(raw, max_chars=None)  # the Guard bounds its size
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadRequest("the body must be a JSON object")
    return value


async def read_prompt_or_json(request: Request) -> dict[str, Any]:
    """``POST /api/runs``: a JSON object, or the prompt itself as ``text/plain``."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "text/plain":
        return {"prompt": _text(await read_body(request))}
    return await read_json(request)


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BadRequest("the body is not UTF-8 text") from None


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def run_links(request: Request, run_id: str) -> dict[str, str]:
    base = f"{base_url(request)}/api/runs/{run_id}"
    return {
        "id": run_id,
        "statusQueryGetUri": base,
        "terminatePostUri": f"{base}/terminate",
        "purgeHistoryDeleteUri": base,
        "eventsUri": f"{base}/events",
        "documentUri": f"{base}/document",
    }


def manager_of(request: Request) -> RunManager:
    manager: RunManager = request.app.state.manager
    return manager


# -- runs API -------------------------------------------------------------------------------------


async def start_run(request: Request) -> Response:
    manager = manager_of(request)
    body = await read_prompt_or_json(request)
    run = manager.start(body)
    wait = _wait_seconds(request)
    if wait > 0:
        with anyio.move_on_after(wait):
            await run.done.wait()
    if run.over:
        return Json(live_status(run), status_code=200)
    links = run_links(request, run.id)
    headers = {"Location": links["statusQueryGetUri"], "Retry-After": str(RETRY_AFTER_S)}
    return Json(links, status_code=202, headers=headers)


def _wait_seconds(request: Request) -> float:
    given = request.query_params.get("wait")
    if given is not None:
        try:
            seconds = float(given)
        except ValueError:
            raise BadRequest("wait: a number of seconds") from None
        if not 0 <= seconds <= WAIT_MAX_S:
            raise BadRequest(f"wait: between 0 and {WAIT_MAX_S:g} seconds")
        return seconds
    if request.headers.get("x-ms-wait-for-response", "").lower() == "true":
        return WAIT_DEFAULT_S
    return 0.0


def live_status(run: LiveRun) -> dict[str, Any]:
    return status_document(
        run.document(),
        created=run.created,
        updated=run.updated,
        calls=run.calls if not run.over else None,
        pending=not run.started,
        input=run.input,
    )


async def stored_document(request: Request, run_id: str) -> dict[str, Any]:
    """A run this server no longer holds (or never did), from the history."""
    manager = manager_of(request)
    try:
        stored = await anyio.to_thread.run_sync(manager.history.load, run_id)
    except ConfigError:
        raise NotFound(run_id) from None
    return stored.document


async def run_status(request: Request) -> Response:
    run_id = request.path_params["id"]
    run = manager_of(request).live(run_id)
    if run is not None:
        status, finished = live_status(run), run.over
    else:
        document = await stored_document(request, run_id)
        status, finished = status_document(document), is_finished(document)
    if finished:
        return Json(status)
    location = run_links(request, run_id)["statusQueryGetUri"]
    headers = {"Location": location, "Retry-After": str(RETRY_AFTER_S)}
    return Json(status, status_code=202, headers=headers)


async def run_document(request: Request) -> Response:
    run_id = request.path_params["id"]
    run = manager_of(request).live(run_id)
    document = run.document() if run is not None else await stored_document(request, run_id)
    return Json(document)


async def list_runs(request: Request) -> Response:
    manager = manager_of(request)
    try:
        limit = int(request.query_params.get("limit", "20"))
    except ValueError:
        raise BadRequest("limit: a whole number") from None
    if not 1 <= limit <= 1000:
        raise BadRequest("limit: between 1 and 1000")
    summaries = await anyio.to_thread.run_sync(manager.history.list_runs, limit)
    rows: dict[str, dict[str, Any]] = {}
    for s in summaries:
        rows[s.run_id] = {
            "instanceId": s.run_id,
            "runtimeStatus": status_document({"status": s.status})["runtimeStatus"],
            "status": s.status,
            "createdTime": s.started_at,
            "lastUpdatedTime": s.finished_at or s.started_at,
            "prompt": s.prompt,
            "agents": s.agents,
            "answered": s.answered,
            "cost_usd": s.cost_usd,
        }
    for run in manager.live_runs():  # this server's view of its own runs is the freshest
        status = live_status(run)
        document_agents = status["customStatus"]["calls"]
        rows[run.id] = {
            "instanceId": run.id,
            "runtimeStatus": status["runtimeStatus"],
            "status": status["customStatus"]["status"],
            "createdTime": run.created,
            "lastUpdatedTime": run.updated,
            "prompt": run.plan.request.prompt,
            "agents": len(run.plan.agents) or len(document_agents),
            "answered": len(status["output"]),
            "cost_usd": run.document().get("cost_usd"),
        }
    ordered = sorted(rows.values(), key=lambda r: str(r["createdTime"]), reverse=True)
    return Json({"runs": ordered[:limit]})


async def terminate_run(request: Request) -> Response:
    run_id = request.path_params["id"]
    manager = manager_of(request)
    run = manager.live(run_id)
    if run is None:
        document = await stored_document(request, run_id)
        if is_finished(document):
            return error(410, f"run {run_id} has already finished")
        return error(409, f"run {run_id} is not running in this server")
    if run.over:
        return error(410, f"run {run_id} has already finished")
    manager.terminate(run)
    return Json(
        {"id": run_id, "terminated": True, **run_links(request, run_id)},
        status_code=202,
        headers={"Location": run_links(request, run_id)["statusQueryGetUri"]},
    )


async def purge_run(request: Request) -> Response:
    run_id = request.path_params["id"]
    manager = manager_of(request)
    run = manager.live(run_id)
    if run is not None and not run.over:
        return error(409, f"run {run_id} is still running: terminate it first")
    if run is None:
        document = await stored_document(request, run_id)
        if not is_finished(document):
            return error(409, f"run {run_id} is still running")
    deleted = await anyio.to_thread.run_sync(manager.history.purge, run_id)
    manager.forget(run_id)
    if not deleted and run is None:
        raise NotFound(run_id)
    return Json({"instancesDeleted": 1})


async def run_events(request: Request) -> Response:
    """Server-Sent Events: the ``--jsonl`` lines (past ones replayed, then live), each with
    ``id:`` its index, so a reconnecting reader (``Last-Event-ID``) misses none."""
    run_id = request.path_params["id"]
    run = manager_of(request).live(run_id)
    past: list[dict[str, Any]] = []
    if run is None:
        past = replay_lines(await stored_document(request, run_id))
    deltas = request.query_params.get("deltas", "true").lower() not in ("0", "false", "no")
    try:
        start = int(request.headers.get("last-event-id", "-1")) + 1
    except ValueError:
        start = 0

    def frame(index: int, line: dict[str, Any]) -> str:
        return f"id: {index}\nevent: {line.get('type')}\ndata: {json_line(line)}\n\n"

    async def stream() -> AsyncIterator[str]:
        lines = run.lines if run is not None else past
        index = max(start, 0)
        yield "retry: 1000\n\n"
        while True:
            while index < len(lines):
                line = lines[index]
                if deltas or line.get("type") != "delta":
                    yield frame(index, line)
                index += 1
                if line.get("type") == "run_finished":
                    return
            if run is None or run.over:
                return
            await run.changed(KEEPALIVE_S)
            if index >= len(lines):
                yield ": keep-alive\n\n"

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


async def panel_info(request: Request) -> Response:
    """The personas (no endpoint secrets: names, models, hosts) and shapes, for the dashboard."""
    panel: Panel = manager_of(request).panel
    agents = [
        {"name": a.name, "model": a.model, "description": a.description} for a in panel.agents
    ]
    return Json({"agents": agents, "synthesizer": panel.synthesizer.name, "shapes": shape_names()})


# -- the durable-orchestration samples' routes, exactly -------------------------------------------


async def multiagent_run(request: Request) -> Response:
    prompt = _text(await read_body(request)).strip()
    if not prompt:
        return error(400, "Prompt is required")
    run = manager_of(request).start({"prompt": prompt})
    return Json(
        {
            "message": "Multi-agent concurrent orchestration started.",
            "prompt": prompt,
            "instanceId": run.id,
            "statusQueryGetUri": f"{base_url(request)}/api/multiagent/status/{run.id}",
        },
        status_code=202,
    )


async def multiagent_status(request: Request) -> Response:
    run_id = request.path_params["instanceId"]
    run = manager_of(request).live(run_id)
    if run is not None:
        status = live_status(run)
    else:
        try:
            status = status_document(await stored_document(request, run_id))
        except NotFound:
            return error(404, "Instance not found")
    payload: dict[str, Any] = {
        key: status[key]
        for key in ("instanceId", "runtimeStatus", "createdTime", "lastUpdatedTime")
    }
    payload["input"] = status["input"]["prompt"]
    if status["runtimeStatus"] not in ("Pending", "Running"):
        payload["output"] = status["output"]  # Durable has an output once it is over
    return Json(payload)


# -- dashboard -------------------------------------------------------------------------------------


async def dashboard(request: Request) -> Response:
    from importlib import resources

    page = resources.files("fanout.serve") / "static" / "index.html"
    with resources.as_file(page) as path:
        return FileResponse(path, media_type="text/html; charset=utf-8")


async def healthz(request: Request) -> Response:
    return Json({"status": "ok"})


# -- errors ---------------------------------------------------------------------------------------


async def _bad_request(request: Request, exc: Exception) -> Response:
    if request.url.path.startswith("/v1/"):
        return chat.openai_error(400, str(exc))
    return error(400, str(exc))


async def _not_found(request: Request, exc: Exception) -> Response:
    return error(404, f"no run {exc}")


async def _too_busy(request: Request, exc: Exception) -> Response:
    return error(429, str(exc), {"Retry-After": str(RETRY_AFTER_S)})


async def _too_large(request: Request, exc: Exception) -> Response:
    return error(413, f"the request body is over {MAX_BODY} bytes")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    return error(exc.status_code, str(exc.detail), headers)


async def _fanout_error(request: Request, exc: Exception) -> Response:
    return error(400, str(exc))


async def _internal(request: Request, exc: Exception) -> Response:
    # Whatever it was, the client gets one line and no traceback (nor anything it held).
    return error(500, f"internal error: {type(exc).__name__}")


def create_app(
    panel: Panel,
    *,
    token: str | None = None,
    cors: str | None = None,
    max_runs: int = 16,
    provider: Provider | None = None,
) -> Starlette:
    """The server's ASGI app: ``panel`` is who answers; ``token`` guards every data route."""
    manager = RunManager(panel, max_runs=max_runs, provider=provider)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with manager.running():
            yield

    routes = [
        Route("/healthz", healthz),
        Route("/", dashboard),
        Mount("/static", StaticFiles(packages=[("fanout.serve", "static")]), name="static"),
        Route("/api/agents", panel_info),
        Route("/api/runs", start_run, methods=["POST"]),
        Route("/api/runs", list_runs, methods=["GET"]),
        Route("/api/runs/{id}", run_status, methods=["GET"]),
        Route("/api/runs/{id}", purge_run, methods=["DELETE"]),
        Route("/api/runs/{id}/document", run_document),
        Route("/api/runs/{id}/events", run_events),
        Route("/api/runs/{id}/terminate", terminate_run, methods=["POST"]),
        Route("/api/multiagent/run", multiagent_run, methods=["POST"]),
        Route("/api/multiagent/status/{instanceId}", multiagent_status),
        Route("/v1/models", chat.list_models),
        Route("/v1/chat/completions", chat.chat_completions, methods=["POST"]),
    ]
    middleware = [Middleware(Guard, token=token)]
    if cors:  # outermost: a browser's preflight carries no token
        middleware.insert(
            0,
            Middleware(
                CORSMiddleware,
                allow_origins=[cors],
                allow_methods=["GET", "POST", "DELETE"],
                allow_headers=["authorization", "content-type", "last-event-id"],
                expose_headers=["location", "retry-after"],
            ),
        )
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={
            BadRequest: _bad_request,
            NotFound: _not_found,
            TooBusy: _too_busy,
            BodyTooLarge: _too_large,
            HTTPException: _http_error,
            FanoutError: _fanout_error,
            Exception: _internal,
        },
    )
    app.state.manager = manager
    app.state.started = time.time()
    return app
