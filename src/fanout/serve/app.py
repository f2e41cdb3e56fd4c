"""The routes: runs API, the durable-orchestration samples' routes, the OpenAI-compatible face
and the dashboard, behind the guard (``guard.py``: host, origin, token, body) and, when asked,
CORS.

Every error a client can cause is a 4xx with one line of JSON, ``{"error": "..."}`` (the
``/v1`` routes use OpenAI's ``{"error": {"message", "type", "param", "code"}}``: ``errors.py``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import anyio
import anyio.lowlevel
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from fanout.config import Panel
from fanout.engine import Provider
from fanout.errors import ConfigError, FanoutError
from fanout.serve import chat
from fanout.serve.errors import Json, error
from fanout.serve.events import Followable
from fanout.serve.follow import StoredRun
from fanout.serve.guard import Guard, HostPolicy, check_cors, check_token
from fanout.serve.limits import Connections, Limits
from fanout.serve.runs import (
    MAX_QUEUED,
    MAX_RUNS,
    BadRequest,
    LiveRun,
    NotFound,
    RunManager,
    StatusDocument,
    TooBusy,
    Unavailable,
    caller_trace,
    is_finished,
    shape_names,
    status_document,
)
from fanout.untrusted import load_json

RETRY_AFTER_S = 1  # how soon a poller should ask again
WAIT_DEFAULT_S = 60.0  # x-ms-wait-for-response: true
WAIT_MAX_S = 600.0
KEEPALIVE_S = 15.0  # an SSE comment this often, so proxies keep an idle stream open
SSE_BATCH = 64 * 1024  # characters of event frames sent at once
JSON_TYPES = ("application/json",)


class BadMediaType(Exception):
    """The body is not in a type this route reads: a 415 with this one-line message."""


async def read_body(request: Request) -> bytes:
    return await request.body()  # the Guard has read it already, within its limits


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def is_json(kind: str) -> bool:
    # A type no form or no-cors fetch can send: a browser must ask (CORS) before sending it.
    return kind in JSON_TYPES or (kind.startswith("application/") and kind.endswith("+json"))


async def read_json(request: Request) -> dict[str, object]:
    """The body as a JSON object; ``BadMediaType`` unless it says it is JSON, ``BadRequest``
    for anything but an object."""
    if not is_json(media_type(request)):
        raise BadMediaType("send the body as JSON, with Content-Type: application/json")
    return parse_json(await read_body(request))


def parse_json(raw: bytes) -> dict[str, object]:
    try:
        value = load_json(raw, max_chars=None)  # the Guard bounds its size
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("malformed JSON: nested too deeply") from None
    if not isinstance(value, dict):
        raise BadRequest("the body must be a JSON object")
    return value


async def read_prompt_or_json(request: Request) -> dict[str, object]:
    """``POST /api/runs``: a JSON object, or the prompt itself as ``text/plain``."""
    kind = media_type(request)
    if kind == "text/plain":
        return {"prompt": _text(await read_body(request))}
    if not is_json(kind):
        raise BadMediaType(
            "send a JSON object with Content-Type: application/json, or the prompt itself "
            "with Content-Type: text/plain"
        )
    return parse_json(await read_body(request))


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BadRequest("the body is not UTF-8 text") from None


def base_url(request: Request) -> str:
    """This server's URL as the client named it: the ``Host`` the guard let through (one of
    this server's names), else the address it listens on."""
    host = request.headers.get("host")
    if not host:
        server = request.scope.get("server") or ("127.0.0.1", 80)
        host = f"[{server[0]}]:{server[1]}" if ":" in str(server[0]) else f"{server[0]}:{server[1]}"
    return f"{request.url.scheme}://{host}{request.scope.get('root_path', '')}"


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
    wait = _wait_seconds(request)
    run = await manager.start(body, trace=caller_trace(request.headers), waited=wait > 0)
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


def live_status(run: LiveRun) -> StatusDocument:
    return status_document(
        run.document(),
        created=run.created,
        updated=run.updated,
        calls=run.calls if not run.over else None,
        pending=not run.started and not run.over,
        input=run.input,
    )


async def stored_document(request: Request, run_id: str) -> dict[str, object]:
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
    rows: dict[str, dict[str, object]] = {}
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
        if manager.shared is None:
            return error(409, f"run {run_id} is not running in this server")
        # Another worker runs it: it will hear of this within SHARED_POLL_S.
        await anyio.to_thread.run_sync(manager.shared.ask, run_id, "terminate")
    elif run.over:
        return error(410, f"run {run_id} has already finished")
    else:
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
    if manager.shared is not None:  # another worker may hold it in memory
        await anyio.to_thread.run_sync(manager.shared.ask, run_id, "forget")
    if not deleted and run is None:
        raise NotFound(run_id)
    return Json({"instancesDeleted": 1})


async def run_events(request: Request) -> Response:
    """Server-Sent Events: the ``--jsonl`` lines (past ones replayed, then live), each with
    ``id:`` its index, so a reconnecting reader (``Last-Event-ID``) misses none."""
    run_id = request.path_params["id"]
    run: Followable | None = manager_of(request).live(run_id)
    if run is None:  # known from the history: followed there (another worker may run it)
        document = await stored_document(request, run_id)
        run = StoredRun(document, partial(stored_document, request, run_id))
    deltas = request.query_params.get("deltas", "true").lower() not in ("0", "false", "no")
    try:
        start = int(request.headers.get("last-event-id", "-1")) + 1
    except ValueError:
        start = 0
    return StreamingResponse(
        event_stream(run, max(start, 0), deltas),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def event_stream(run: Followable, index: int, deltas: bool) -> AsyncIterator[str]:
    """The frames of ``lines`` from ``index`` on, then the live ones as they come. Frames go
    out in batches, with a turn of the event loop between: a client that left is noticed at
    once (not after thousands of writes into a closed socket), and a long replay never holds
    up the other requests."""
    lines = run.lines
    yield "retry: 1000\n\n"
    while True:
        batch: list[str] = []
        size = 0
        while index < len(lines) and size < SSE_BATCH:
            line = lines[index]
            if deltas or line.kind != "delta":
                frame = f"id: {index}\nevent: {line.kind}\ndata: {line.json}\n\n"
                batch.append(frame)
                size += len(frame)
            index += 1
            if line.kind == "run_finished":
                yield "".join(batch)
                return
        if batch:
            yield "".join(batch)
            await anyio.lowlevel.checkpoint()
            continue
        if run.over:
            return
        await run.changed(KEEPALIVE_S)
        if index >= len(lines):
            yield ": keep-alive\n\n"


async def shapes_info(request: Request) -> Response:
    """Every shape and its options, as the registry describes them (the dashboard's form is
    drawn from it), and the flow files a request may name (``fanout serve --flows DIR``)."""
    from fanout.shapes import catalog
    from fanout.shapes.flow import flow_names

    return Json({"shapes": catalog(), "flows": flow_names(manager_of(request).flows)})


async def panel_info(request: Request) -> Response:
    """The personas (no endpoint secrets: names, models, hosts) and shapes, for the dashboard."""
    panel: Panel = manager_of(request).panel
    agents = [
        {"name": a.name, "model": a.model, "description": a.description} for a in panel.agents
    ]
    return Json({"agents": agents, "synthesizer": panel.synthesizer.name, "shapes": shape_names()})


# -- the durable-orchestration samples' routes, exactly -------------------------------------------


async def multiagent_run(request: Request) -> Response:
    """The prompt as ``text/plain``, or a JSON object: ``prompt``, the options of ``POST
    /api/runs`` (``agents``...) and ``wait_for_response`` (as the header is on
    ``/api/runs``: the status, 200, if the run ends in time)."""
    kind = media_type(request)
    if kind == "text/plain":
        body: dict[str, object] = {"prompt": _text(await read_body(request))}
    elif is_json(kind):
        body = parse_json(await read_body(request))
    else:
        raise BadMediaType(
            "send the prompt with Content-Type: text/plain, or a JSON object "
            '({"prompt": ..., "agents": [...]}) with Content-Type: application/json'
        )
    wait = _sample_wait(request, body.pop("wait_for_response", None))
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return error(400, "Prompt is required")
    body["prompt"] = prompt.strip()
    run = await manager_of(request).start(
        body, trace=caller_trace(request.headers), waited=wait > 0
    )
    if wait > 0:
        with anyio.move_on_after(wait):
            await run.done.wait()
        if run.over:
            return Json(sample_status(live_status(run)))
    return Json(
        {
            "message": "Multi-agent concurrent orchestration started.",
            "prompt": body["prompt"],
            "instanceId": run.id,
            "statusQueryGetUri": f"{base_url(request)}/api/multiagent/status/{run.id}",
        },
        status_code=202,
    )


def _sample_wait(request: Request, given: object) -> float:
    if given is None:
        return _wait_seconds(request)
    if isinstance(given, bool):
        return WAIT_DEFAULT_S if given else 0.0
    if isinstance(given, int | float) and 0 <= given <= WAIT_MAX_S:
        return float(given)
    raise BadRequest(f"wait_for_response: true, false or seconds up to {WAIT_MAX_S:g}")


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
    return Json(sample_status(status))


def sample_status(status: StatusDocument) -> dict[str, object]:
    """The samples' status shape, from ours; a run that failed or was stopped says why."""
    payload: dict[str, object] = {
        "instanceId": status["instanceId"],
        "runtimeStatus": status["runtimeStatus"],
        "createdTime": status["createdTime"],
        "lastUpdatedTime": status["lastUpdatedTime"],
    }
    payload["input"] = status["input"]["prompt"]
    if status["runtimeStatus"] not in ("Pending", "Running"):
        payload["output"] = status["output"]  # Durable has an output once it is over
    reason = status["customStatus"].get("error")
    if reason and status["runtimeStatus"] in ("Failed", "Terminated"):
        payload["error"] = reason
    return payload


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
    return error(400, str(exc), path=request.url.path)


async def _bad_media_type(request: Request, exc: Exception) -> Response:
    return error(415, str(exc), path=request.url.path, code="unsupported_media_type")


async def _not_found(request: Request, exc: Exception) -> Response:
    return error(404, f"no run {exc}", path=request.url.path)


async def _unavailable(request: Request, exc: Exception) -> Response:
    headers = {"Retry-After": str(RETRY_AFTER_S)}
    return error(503, str(exc), headers, path=request.url.path, code="unavailable")


async def _too_busy(request: Request, exc: Exception) -> Response:
    headers = {"Retry-After": str(RETRY_AFTER_S)}
    return error(429, str(exc), headers, path=request.url.path, code="rate_limit_exceeded")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    return error(exc.status_code, str(exc.detail), headers, path=request.url.path)


async def _fanout_error(request: Request, exc: Exception) -> Response:
    return error(400, str(exc), path=request.url.path)


async def _internal(request: Request, exc: Exception) -> Response:
    # Whatever it was, the client gets one line and no traceback (nor anything it held).
    return error(500, f"internal error: {type(exc).__name__}", path=request.url.path)


EXCEPTION_HANDLERS: dict[type[Exception], Callable[[Request, Exception], Awaitable[Response]]] = {
    BadRequest: _bad_request,
    BadMediaType: _bad_media_type,
    NotFound: _not_found,
    TooBusy: _too_busy,
    Unavailable: _unavailable,
    HTTPException: _http_error,
    FanoutError: _fanout_error,
    Exception: _internal,
}


def _middleware(
    token: str | None,
    hosts: HostPolicy,
    cors: str | None,
    limits: Limits,
    worker: int | None,
) -> list[Middleware]:
    guard = Middleware(
        Guard,
        token=token,
        hosts=hosts,
        cors=cors,
        limits=limits,
        worker=worker,
    )
    if not cors:
        return [guard]
    # CORS outermost: a browser's preflight carries no token.
    allowed = Middleware(
        CORSMiddleware,
        allow_origins=[cors],
        allow_methods=["GET", "POST", "DELETE"],
        allow_headers=["authorization", "content-type", "last-event-id", "traceparent"],
        expose_headers=["location", "retry-after"],
    )
    return [allowed, guard]


def create_app(
    panel: Panel,
    *,
    token: str | None = None,
    cors: str | None = None,
    max_runs: int = MAX_RUNS,
    max_queued: int = MAX_QUEUED,
    provider: Provider | None = None,
    host: str = "127.0.0.1",
    allowed_hosts: Sequence[str] = (),
    limits: Limits | None = None,
    worker: int | None = None,
    flows: Path | None = None,
) -> Starlette:
    """The server's ASGI app: ``panel`` is who answers; ``token`` guards every data route;
    ``host`` (the address listened on) and ``allowed_hosts`` are the names it answers to.
    ``worker``: this app is worker number ``worker`` of several (``--workers``), which tell
    each other what they are asked about each other's runs (and say who answered, in a
    ``Fanout-Worker`` header).
    ``flows``: the folder of flow files a request may name.
    ``ConfigError`` for a token, origin or host name that cannot work."""
    check_token(token)
    check_cors(cors, token)
    hosts = HostPolicy.of(host, allowed_hosts)
    limits = limits or Limits()
    connections = Connections(limits)
    manager = RunManager(
        panel,
        max_runs=max_runs,
        max_queued=max_queued,
        provider=provider,
        shared=worker is not None,
        flows=flows,
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with manager.running():
            yield

    routes = [
        Route("/healthz", healthz),
        Route("/", dashboard),
        Mount("/static", StaticFiles(packages=[("fanout.serve", "static")]), name="static"),
        Route("/api/agents", panel_info),
        Route("/api/shapes", shapes_info),
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
    app = Starlette(
        routes=routes,
        middleware=_middleware(token, hosts, cors, limits, worker),
        lifespan=lifespan,
        exception_handlers=EXCEPTION_HANDLERS,
    )
    app.state.manager = manager
    app.state.connections = connections
    app.state.started = time.time()
    return app
