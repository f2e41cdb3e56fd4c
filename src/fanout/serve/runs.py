"""Runs started over HTTP: what a request may ask for, the runs in flight, and how a run
looks to a poller (the durable-orchestration status shape).

A ``RunManager`` starts each run as a task of its own, through the same API as the CLI
(``resolve`` -> ``prepare`` -> ``execute`` -> ``conclude``), with two observers: the run's event
log (the ``--jsonl`` lines, kept for SSE replay) and the history recorder, so ``fanout runs
list`` shows server runs too. Runs this process started are answered from memory; any other
run (an older one, the CLI's, one a killed server left behind) from the history.
"""

from __future__ import annotations

import io
import logging
import math
import os
import sqlite3
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import NotRequired, TypedDict, TypeVar

import anyio
import anyio.abc

from fanout.api import Plan, RunRequest, prepare, resolve
from fanout.config import Panel, check_credentials
from fanout.conversation import named_conversation, wants_stored_turns, with_stored_turns
from fanout.engine import Execution, Provider, RunSettings
from fanout.errors import ConfigError, FanoutError
from fanout.event import (
    Broadcast,
    CallDelta,
    CallFinished,
    CallRetrying,
    CallStarted,
    CallWaiting,
    Event,
    RunFinished,
    StageStarted,
)
from fanout.export import SCHEMA_VERSION, JsonlWriter, json_objects, report_document
from fanout.history import History, HistoryRecorder, HistoryWriter, history_path, recorder_for
from fanout.models import Attachment, RunReport
from fanout.retry import RetryPolicy
from fanout.serve.admissions import Admissions
from fanout.serve.body import BadBody, shaped
from fanout.serve.events import EventLog
from fanout.serve.store import SharedState, written
from fanout.shapes import SHAPES, verdict_from_dict
from fanout.summary import Summary, final_summary
from fanout.tracing import TraceParent, parse_traceparent

# The options of POST /api/runs beside the shapes' own names (``vote``, ``judge``...).
RUN_OPTIONS = ("prompt", "agents", "model", "synthesize", "max_cost", "timeout", "retries",
               "concurrency", "shape", "options", "personas", "files",
               "conversation_id")  # fmt: skip
# Finished runs are answered from memory (their events with the deltas) while their lines take
# no more than this many bytes in all, and there are no more than FINISHED_KEPT of them; older
# ones are read from the history (events without the deltas).
REPLAY_BYTES = 64 * 1024 * 1024
# A gateway's defaults: runs executing at once, and runs accepted meanwhile that wait (Pending)
# for a slot; past both, a 429 with Retry-After.
MAX_RUNS = 64
MAX_QUEUED = 1024
SHARED_POLL_S = 0.2  # how often a worker looks at what the others were asked
FINISHED_KEPT = 1024
MAX_PROMPT_CHARS = 200_000
_N = TypeVar("_N", int, float)  # what a numeric option is read as
_D = TypeVar("_D")  # its default
_log = logging.getLogger("fanout.serve")

RUNTIME_STATUS = {
    "running": "Running",
    "completed": "Completed",
    "partial": "Completed",  # the run ended; some personas failing is in customStatus
    "failed": "Failed",
    "cancelled": "Terminated",
    "interrupted": "Failed",  # the server stopped under it: customStatus.interrupted
}


def caller_trace(headers: Mapping[str, str]) -> TraceParent | None:
    """The W3C ``traceparent`` a request came with (None: none, or not a valid one, which
    tracing ignores), so the run it starts is a span of the caller's trace."""
    return parse_traceparent(headers.get("traceparent", ""))


class BadRequest(Exception):
    """What a client asked for cannot run: a 400 with this one-line message."""


class TooBusy(Exception):
    """``--max-runs`` runs are in flight already: a 429."""


class NotFound(Exception):
    """No such run: a 404."""


class Unavailable(Exception):
    """The server cannot take a run now (its history cannot record it, it is stopping): a
    503."""


def shape_names() -> list[str]:
    """The shapes a request may name as a field of their own (``"vote": true``), as the
    registry holds them: every one but the plain panel that runs from a prompt alone."""
    return [name for name, shape in SHAPES.items() if shape.flag and shape.standalone]


def run_request(
    body: Mapping[str, object], panel: Panel, *, run_id: str, flows: Path | None = None
) -> RunRequest:
    """A ``RunRequest`` from a JSON body; ``BadRequest`` naming the first thing wrong. The
    shape and its options (any shape the CLI has, a flow, personas for this run) are read by
    ``serve.body``."""
    shapes = [name for name, shape in SHAPES.items() if shape.flag]
    for key in body:
        if key not in RUN_OPTIONS and key not in shapes:
            known = ", ".join([*RUN_OPTIONS, *shapes])
            raise BadRequest(f"unknown option {key!r} (known: {known})")
    try:
        body_shape = shaped(body, panel, _agents(body.get("agents")), flows)
    except BadBody as exc:
        raise BadRequest(str(exc)) from None
    prompt = body_shape.prompt
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadRequest("the prompt is empty: give a non-empty string as prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise BadRequest(f"the prompt is longer than {MAX_PROMPT_CHARS} characters")
    settings = RunSettings(
        concurrency=_number(body, "concurrency", int, 1, RunSettings().concurrency),
        timeout=_number(body, "timeout", float, 0.001, RunSettings().timeout),
        retry=RetryPolicy(retries=_number(body, "retries", int, 0, RetryPolicy().retries)),
        max_cost=_number(body, "max_cost", float, 0.0, None),
        attachments=_files(body.get("files")),
    )
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise BadRequest("model: a model name")
    return RunRequest(
        prompt.strip(),
        body_shape.panel,
        agents=body_shape.agents,
        shape=body_shape.shape,
        options=body_shape.options,
        settings=settings,
        model=model,
        run_id=run_id,
        conversation=named_conversation(body.get("conversation_id")),
    )


def _files(value: object) -> tuple[Attachment, ...]:
    """``files``: attachments sent with the prompt, as ``fanout ask -f`` sends files
    (``[{"name": "chart.png", "content_base64": "..."}]``)."""
    if value is None:
        return ()
    from fanout.attachments import attachments_of_json

    try:
        return attachments_of_json(value)
    except ConfigError as exc:
        raise BadRequest(str(exc)) from None


def _agents(value: object) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [n.strip() for n in value.split(",") if n.strip()]
    if not isinstance(value, list) or not value or not all(isinstance(n, str) for n in value):
        raise BadRequest("agents: a non-empty list of persona names")
    return list(value)


def _number(
    body: Mapping[str, object], key: str, kind: type[_N], least: float, default: _D
) -> _N | _D:
    value = body.get(key)
    if value is None:
        return default
    what = "an integer" if kind is int else "a number"
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise BadRequest(f"{key}: {what} of at least {least:g}")
    try:
        ok = float(value).is_integer() if kind is int else True
        ok = ok and math.isfinite(value) and value >= least
    except OverflowError:  # an integer too big for a float
        raise BadRequest(f"{key}: {what} of at least {least:g}, not that big") from None
    if not ok:
        raise BadRequest(f"{key}: {what} of at least {least:g}")
    return kind(value)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(eq=False)
class LiveRun:
    """A run this server started: its plan, its event lines so far (``size``: their bytes),
    how each call stands."""

    id: str
    plan: Plan
    created: str
    lines: EventLog = field(default_factory=EventLog)
    calls: dict[str, str] = field(default_factory=dict)  # call name -> pending, running...
    updated: str = ""
    execution: Execution | None = None
    log: RunLog | None = None
    report: RunReport | None = None  # set when it is over
    started: bool = False
    yields: bool = False  # waits for the runs being accepted (a burst) before it starts
    terminated: bool = False
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    done: anyio.Event = field(default_factory=anyio.Event)  # over and recorded
    answered: anyio.Event = field(default_factory=anyio.Event)  # over (``report`` is set)
    _waiter: anyio.Event | None = None  # made when a reader waits for the next change
    _final: dict[str, object] | None = None  # the document once it is over (asked for often)

    @property
    def over(self) -> bool:
        """Over and recorded (``run_finished`` told)."""
        return self.done.is_set()

    @property
    def size(self) -> int:
        """Bytes of event lines held."""
        return self.lines.size

    def append(self, line: dict[str, object]) -> None:
        self.lines.append(line)
        self.updated = str(line.get("ts") or _now())
        self.touch()

    def touch(self) -> None:
        """Wake every reader waiting for a change (a line, a delta joining an unread line)."""
        if self._waiter is not None:
            self._waiter.set()
            self._waiter = None

    def concluded(self, report: RunReport) -> None:
        """The run is over (its record may still be on its way to the history)."""
        self.report = report
        self.answered.set()
        self.touch()

    def finish(self, report: RunReport, line: dict[str, object] | None) -> None:
        self.concluded(report)
        self.done.set()
        if line is not None:
            self.append(line)
        self.touch()

    async def changed(self, seconds: float) -> None:
        """Wait for a new line (or ``seconds``, for a keep-alive)."""
        if self._waiter is None:
            self._waiter = anyio.Event()
        event = self._waiter
        with anyio.move_on_after(seconds):
            await event.wait()

    def document(self) -> dict[str, object]:
        """The ``--json`` document as it stands (status ``running`` until the run is over)."""
        if self.report is not None:
            if self._final is None:
                self._final = report_document(self.report)
            return self._final
        if self.execution is None:
            return _pending_document(self)
        return report_document(replace(self.execution.report(), recorded_status="running"))

    @property
    def input(self) -> dict[str, object]:
        request = self.plan.request
        return {
            "prompt": request.prompt,
            "agents": [a.name for a in self.plan.agents],
            "shape": request.shape,
            "options": dict(request.options),
            "conversation_id": request.conversation.id if request.conversation else None,
        }


def _empty_report(run: LiveRun) -> RunReport:
    request = run.plan.request
    return RunReport(run.id, request.prompt, run.created, _now(), 0.0, [], shape=request.shape)


def _pending_document(run: LiveRun) -> dict[str, object]:
    request = run.plan.request
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": run.id,
        "shape": request.shape,
        "prompt": request.prompt,
        "status": "running",
        "started_at": run.created,
        "finished_at": None,
        "stages": [],
        "agents": [],
        "output": {},
        "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0},
    }


class RunLog(JsonlWriter):
    """The run's events as ``--jsonl`` lines (deltas included), kept on the ``LiveRun``."""

    wants_deltas = True

    def __init__(self, run: LiveRun, *, deltas: bool = True) -> None:
        super().__init__(io.StringIO(), deltas=deltas)
        self.run = run
        self.wants_deltas = deltas

    def handle(self, event: Event) -> None:
        self._track(event)
        if isinstance(event, CallDelta) and self.run.lines.extend_delta(
            event.call.call_id, event.text
        ):
            self.run.touch()
            return
        # The end is told by the manager once the run is recorded (``RunManager._drive``), so
        # whoever reads run_finished finds the run over everywhere.
        line = None if isinstance(event, RunFinished) else self.line(event)
        if line is not None:
            self.run.append(line)

    def _track(self, event: Event) -> None:
        calls = self.run.calls
        if isinstance(event, StageStarted):
            for call in event.calls:
                calls[call.name] = "pending"
        elif isinstance(event, CallStarted | CallDelta):
            calls[event.call.name] = "running"
        elif isinstance(event, CallWaiting | CallRetrying):
            calls[event.call.name] = "waiting"
        elif isinstance(event, CallFinished):
            calls[event.call.name] = event.result.status


class _UntilFinished:
    """Hands the recorder every event but the end: the manager records how the run ended
    (a server going down records ``interrupted``, not ``cancelled``)."""

    def __init__(self, recorder: HistoryRecorder) -> None:
        self.recorder = recorder

    def handle(self, event: Event) -> None:
        if not isinstance(event, RunFinished):
            self.recorder.handle(event)


class RunManager:
    """The runs of one server: started, watched, terminated, purged; ``max_runs`` executing
    at once, up to ``max_queued`` more accepted and waiting (``Pending``) for a slot."""

    def __init__(
        self,
        panel: Panel,
        *,
        max_runs: int = MAX_RUNS,
        max_queued: int = MAX_QUEUED,
        provider: Provider | None = None,
        shared: bool = False,
        flows: Path | None = None,
    ):
        self.panel = panel
        self.flows = flows  # fanout serve --flows DIR: the flow files a request may name
        self.max_runs = max_runs
        self.max_queued = max_queued
        self._provider = provider
        self._runs: OrderedDict[str, LiveRun] = OrderedDict()
        self.replay_bytes = REPLAY_BYTES
        self._unfinished = 0
        self._finished_ids: deque[str] = deque()  # oldest first
        self._finished_bytes = 0
        self._history: History | None = None
        self._writer = HistoryWriter()
        self._slots = anyio.CapacityLimiter(max_runs)
        self.admissions = Admissions()  # a burst's 202s first, then its runs
        self._tg: anyio.abc.TaskGroup | None = None
        self._closing = False
        self._sharing = shared  # one of several workers: see SharedState
        self.shared: SharedState | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[RunManager]:
        """Open the history and the provider; on the way out, stop every run (recorded as
        interrupted, with the answers it had) and close them."""
        if self._provider is None:
            from fanout.provider import OpenAIProvider

            self._provider = OpenAIProvider()
        self._history = await anyio.to_thread.run_sync(History, history_path(os.environ))
        self._writer = HistoryWriter(self._history)  # commits what is queued together
        if self._sharing:
            path = history_path(os.environ).with_name("serve.db")
            self.shared = await anyio.to_thread.run_sync(SharedState, path)
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                if self.shared is not None:
                    tg.start_soon(self._heed, self.shared, name="fanout workers' requests")
                try:
                    yield self
                finally:
                    self._closing = True
                    tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self._provider.aclose()
                await anyio.to_thread.run_sync(self._writer.close)
                await anyio.to_thread.run_sync(self._history.close)
                if self.shared is not None:
                    self.shared.close()

    @property
    def history(self) -> History:
        assert self._history is not None, "RunManager.running() first"
        return self._history

    @property
    def in_flight(self) -> int:
        """Runs accepted and not over: executing or waiting for a slot."""
        return self._unfinished

    async def start(
        self,
        body: Mapping[str, object] | RunRequest,
        *,
        durable: bool = True,
        deltas: bool = True,
        trace: TraceParent | None = None,
        waited: bool = False,
    ) -> LiveRun:
        """Check a request, record its run in the history and start it; ``BadRequest``,
        ``TooBusy``, ``Unavailable``. ``durable``: return once the record is committed (whoever
        is told the run's id will find it, even if this process dies next); without it (a
        client that waits for the answer itself), the record is written meanwhile.
        ``deltas``: keep the answers' text as it streams (else each answer whole at its end,
        which costs less). ``trace``: the caller's ``traceparent``, which the run continues.
        A durable run nobody is ``waited`` for on its connection lets the runs still being
        accepted go first (``admissions``), and counts as one of them until its 202."""
        yields = durable and not waited
        if not yields:
            return await self._start(body, durable, deltas, trace, yields)
        async with self.admissions.admitting():
            return await self._start(body, durable, deltas, trace, yields)

    async def _start(
        self,
        body: Mapping[str, object] | RunRequest,
        durable: bool,
        deltas: bool,
        trace: TraceParent | None,
        yields: bool,
    ) -> LiveRun:
        run = self._admit(body, trace)
        self._unfinished += 1
        started = False
        try:
            if wants_stored_turns(run.plan):  # a conversation named: its turns, off the loop
                # Every earlier turn in: a turn that just finished may still be in the writer's
                # queue (its answer already sent: /v1 answers before the record is written).
                await written(self._writer)
                try:
                    run.plan = await anyio.to_thread.run_sync(
                        with_stored_turns, self.history, run.plan
                    )
                except FanoutError as exc:  # the conversation's personas cannot run this shape
                    raise BadRequest(str(exc)) from None
            recorder = self._prepare(run, deltas)
            if durable:
                await written(self._writer)
            started = True
        finally:  # refused or cancelled on the way (a client gone): the slot is free again
            if not started:
                self._unfinished -= 1
                self._runs.pop(run.id, None)
        if recorder.error is not None:
            self._unfinished -= 1
            self._runs.pop(run.id, None)
            _log.error("run %s could not be recorded: %s", run.id, recorder.error)
            raise Unavailable(f"the run could not be recorded in the history: {recorder.error}")
        assert self._tg is not None, "RunManager.running() first"
        run.yields = yields
        self._tg.start_soon(self._drive, run, recorder, name=f"fanout run {run.id}")
        return run

    def _admit(self, body: Mapping[str, object] | RunRequest, trace: TraceParent | None) -> LiveRun:
        """The run a request stands for, if it can run and there is room for it."""
        run_id = uuid.uuid4().hex[:12]
        try:
            request = (
                body
                if isinstance(body, RunRequest)
                else run_request(body, self.panel, run_id=run_id, flows=self.flows)
            )
            if trace is not None:
                request = replace(request, trace_id=trace.trace_id, parent_span_id=trace.span_id)
            plan = resolve(replace(request, run_id=run_id))
            check_credentials(plan.callers, os.environ)
        except FanoutError as exc:
            raise BadRequest(str(exc)) from None
        if self._closing:
            raise Unavailable("the server is stopping")
        if self._unfinished >= self.max_runs + self.max_queued:
            raise TooBusy(
                f"{self.max_runs} runs are in flight and {self.max_queued} waiting already "
                "(--max-runs, --max-queued)"
            )
        run = LiveRun(run_id, plan, _now())
        run.updated = run.created
        self._runs[run_id] = run
        return run

    def _prepare(self, run: LiveRun, deltas: bool = True) -> HistoryRecorder:
        """The run's execution, observed by its event log and its recorder, and its start
        queued for the history."""
        plan = run.plan
        recorder = recorder_for(self.history, plan, writer=self._writer)  # as the CLI records
        run.log = RunLog(run, deltas=deltas)
        observer = Broadcast(run.log, _UntilFinished(recorder))
        run.execution = prepare(plan, [observer], provider=self._provider, check=False)
        recorder.start(run.execution.report())
        return recorder

    async def _drive(self, run: LiveRun, recorder: HistoryRecorder) -> None:
        """Wait for a slot, run, record how it ended: whatever happens (terminated while it
        waits, the server going down, a bug), the run ends recorded."""
        execution = run.execution
        assert execution is not None
        try:
            with run.scope:
                if run.yields:
                    await self.admissions.quiet()
                async with self._slots:
                    run.started = True
                    await execution.execute()
        except Exception:  # a bug in one run must not take the server (its task group) down
            _log.exception("run %s failed", run.id)
        finally:
            with anyio.CancelScope(shield=True):
                await self._conclude(run, recorder)

    async def _conclude(self, run: LiveRun, recorder: HistoryRecorder) -> None:
        """Record how the run ended, then say so (``run_finished``)."""
        execution = run.execution
        assert execution is not None and run.log is not None
        # Cut short by terminate or by the server going down: the answers that arrived, and
        # the text that was streaming, stay in the report.
        execution.interrupted = run.scope.cancel_called or self._closing
        try:
            report = execution.conclude()
        except Exception:
            _log.exception("run %s could not be concluded", run.id)
            report = _empty_report(run)
        if self._closing and not run.terminated:
            report = replace(report, recorded_status="interrupted")
        run.concluded(report)  # a client waiting for the answer has it now
        recorder.finish(report)
        await written(self._writer)
        self._finished(run, report, run.log.line(RunFinished(report)))

    def _finished(self, run: LiveRun, report: RunReport, line: dict[str, object] | None) -> None:
        run.finish(report, line)
        run.execution, run.log = None, None  # the report has what is kept of them
        self._unfinished -= 1
        self._finished_ids.append(run.id)
        self._finished_bytes += run.size
        self._forget_old()

    async def _heed(self, shared: SharedState) -> None:
        """Act on what the other workers were asked about this worker's runs."""
        last = await anyio.to_thread.run_sync(shared.last)
        while True:
            await anyio.sleep(SHARED_POLL_S)
            try:
                asked = await anyio.to_thread.run_sync(shared.since, last)
            except sqlite3.Error as exc:  # busy for longer than its timeout: next time
                _log.warning("the workers' shared state cannot be read: %s", exc)
                continue
            if asked:
                last = asked[-1][0]
            for _, run_id, action in asked:
                run = self._runs.get(run_id)
                if run is None:
                    continue
                if action == "terminate" and not run.over:
                    self.terminate(run)
                elif action == "forget" and run.over:
                    self.forget(run_id)

    def terminate(self, run: LiveRun) -> None:
        run.terminated = True
        run.scope.cancel()

    def live(self, run_id: str) -> LiveRun | None:
        return self._runs.get(run_id)

    def forget(self, run_id: str) -> None:
        run = self._runs.pop(run_id, None)
        if run is not None and run.over:
            self._finished_bytes -= run.size

    def live_runs(self) -> list[LiveRun]:
        return list(self._runs.values())

    def _forget_old(self) -> None:
        """The oldest finished runs past ``REPLAY_BYTES`` (or ``FINISHED_KEPT``) are read from
        the history from now on."""
        ids = self._finished_ids
        while ids and (self._finished_bytes > self.replay_bytes or len(ids) > FINISHED_KEPT):
            run = self._runs.get(ids.popleft())
            if run is not None and run.over:  # (not purged meanwhile)
                del self._runs[run.id]
                self._finished_bytes -= run.size


# -- how a run looks to a poller -----------------------------------------------------------------


class CustomStatus(TypedDict):
    """A run status's ``customStatus``: how its calls stand, and its answer once it has one."""

    status: str
    done: int
    total: int
    calls: dict[str, str]
    interrupted: bool
    conversation_id: object
    turn: object
    trace_id: object
    final: NotRequired[str]
    error: NotRequired[str]


class StatusDocument(TypedDict):
    """``GET /api/runs/{id}``, as Durable Functions' status query answers (its field names)."""

    instanceId: object
    name: object
    runtimeStatus: str
    createdTime: object
    lastUpdatedTime: object
    input: dict[str, object]
    customStatus: CustomStatus
    output: dict[str, object]


def status_document(
    document: Mapping[str, object],
    *,
    created: str | None = None,
    updated: str | None = None,
    calls: Mapping[str, str] | None = None,
    pending: bool = False,
    input: Mapping[str, object] | None = None,
) -> StatusDocument:
    """``GET /api/runs/{id}``: ``{instanceId, name, runtimeStatus, createdTime,
    lastUpdatedTime, input, customStatus: {done, total, calls, status}, output}``."""
    status = str(document.get("status"))
    runtime = "Pending" if pending else RUNTIME_STATUS.get(status, "Running")
    if calls is None:
        # A stored run still running (another worker's) has its calls not yet ended
        # recorded as cancelled: they are pending.
        unended = "pending" if status == "running" else "cancelled"
        calls = {
            str(c.get("name")): unended if c.get("status") == "cancelled" else str(c.get("status"))
            for s in _stages(document)
            for c in json_objects(s.get("calls"))
        }
    settled = ("ok", "error", "skipped", "cancelled")
    custom: CustomStatus = {
        "status": status,
        "done": sum(1 for s in calls.values() if s in settled),
        "total": len(calls),
        "calls": dict(calls),
        "interrupted": status == "interrupted",
        "conversation_id": document.get("conversation_id") or document.get("run_id"),
        "turn": document.get("turn") or 1,
        "trace_id": document.get("trace_id"),
    }
    final = final_answer(document)
    if final is not None:
        custom["final"] = final
    reason = failure_reason(document)
    if reason is not None:
        custom["error"] = reason
    return {
        "instanceId": document.get("run_id"),
        "name": document.get("shape") or "panel",
        "runtimeStatus": runtime,
        "createdTime": created or document.get("started_at"),
        "lastUpdatedTime": updated or document.get("finished_at") or document.get("started_at"),
        "input": dict(input) if input is not None else document_input(document),
        "customStatus": custom,
        "output": _object(document.get("output")),
    }


def failure_reason(document: Mapping[str, object]) -> str | None:
    """Why a run that did not complete ended, in one line (None for one that completed)."""
    status = document.get("status")
    if status == "interrupted":
        return "interrupted: the server stopped before the run ended"
    if status == "cancelled":
        return "terminated before the run ended"
    if status != "failed":
        return None
    failed = [
        f"{c.get('name')}: {_error_message(c)}"
        for s in _stages(document)
        for c in json_objects(s.get("calls"))
        if c.get("status") != "ok"
    ]
    shown = "; ".join(failed[:5]) + ("; ..." if len(failed) > 5 else "")
    return f"no call answered ({shown})" if failed else "no call answered"


def _error_message(call: Mapping[str, object]) -> str:
    error = call.get("error")
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    return str(call.get("status"))


def document_input(document: Mapping[str, object]) -> dict[str, object]:
    stages = _stages(document)
    first = json_objects(stages[0].get("calls")) if stages else []
    return {
        "prompt": document.get("prompt"),
        "agents": [c.get("name") for c in first],
        "shape": document.get("shape") or "panel",
        "conversation_id": document.get("conversation_id") or document.get("run_id"),
    }


def _stages(document: Mapping[str, object]) -> list[dict[str, object]]:
    return json_objects(document.get("stages"))


def _object(value: object) -> dict[str, object]:
    """A stored JSON object, copied (an empty one for anything else)."""
    return dict(value) if isinstance(value, dict) else {}


def document_summaries(document: Mapping[str, object]) -> list[Summary]:
    """Each stage's summary, from the verdicts a result document stores."""
    verdicts = [
        verdict_from_dict(s.get("verdict"), s.get("key"), s.get("kind")) for s in _stages(document)
    ]
    return [v.summary() for v in verdicts if v is not None]


def final_answer(document: Mapping[str, object]) -> str | None:
    """The run's one answer, whatever its shape, in words: what it decided (the synthesis,
    the judge's pick, the vote's winner; or why nothing was decided), else, for a document
    of an earlier version, the answer of a later stage's single call, else None (a bare
    panel)."""
    final = final_summary(document_summaries(document))
    if final is not None:
        return final.answer if final.answer is not None else final.headline
    for stage in reversed(_stages(document)[1:]):
        if "verdict" in stage:
            continue
        calls = json_objects(stage.get("calls"))
        if len(calls) == 1 and calls[0].get("status") == "ok":
            answer = calls[0].get("answer")
            if isinstance(answer, str):
                return answer
    return None


def is_finished(document: Mapping[str, object]) -> bool:
    return RUNTIME_STATUS.get(str(document.get("status")), "Running") != "Running"


def replay_lines(document: Mapping[str, object]) -> list[dict[str, object]]:
    """The event lines of a run known only from the history: what ``--jsonl`` would have
    shown of it, without the deltas (``run_started``, each call's end, ``run_finished``)."""
    stamp = {
        "schema_version": SCHEMA_VERSION,
        "run_id": document.get("run_id"),
        "trace_id": document.get("trace_id"),
        "conversation_id": document.get("conversation_id") or document.get("run_id"),
    }
    stages = _stages(document)
    started = document.get("started_at")
    lines: list[dict[str, object]] = [
        {
            **stamp,
            "ts": started,
            "type": "run_started",
            "prompt": document.get("prompt"),
            "agents": document_input(document)["agents"],
            "shape": document.get("shape") or "panel",
            "stages": [{"id": s.get("id"), "kind": s.get("kind")} for s in stages],
            "replayed": True,
        }
    ]
    for stage in stages:
        calls = json_objects(stage.get("calls"))
        lines.append(
            {
                **stamp,
                "ts": started,
                "type": "stage_started",
                "stage": stage.get("id"),
                "kind": stage.get("kind"),
                "calls": [
                    {
                        "call_id": c.get("call_id"),
                        "agent": c.get("name"),
                        "role": c.get("role"),
                        "model": c.get("model"),
                    }
                    for c in calls
                ],
            }
        )
        for call in calls:
            kind = "synthesis_finished" if call.get("role") == "synthesizer" else "agent_finished"
            lines.append(
                {
                    **stamp,
                    "ts": document.get("finished_at") or started,
                    "type": kind,
                    "agent": call.get("name"),
                    "stage": call.get("stage"),
                    "call_id": call.get("call_id"),
                    "role": call.get("role"),
                    "result": call,
                }
            )
        verdict = verdict_from_dict(stage.get("verdict"), stage.get("key"), stage.get("kind"))
        if verdict is not None:
            lines.append(
                {
                    **stamp,
                    "ts": document.get("finished_at") or started,
                    "type": "stage_finished",
                    "stage": stage.get("id"),
                    "kind": stage.get("kind"),
                    "key": stage.get("key"),
                    "verdict": stage.get("verdict"),
                    "summary": verdict.summary().to_dict(),
                }
            )
    if is_finished(document):
        finished = document.get("finished_at") or started
        lines.append({**stamp, "ts": finished, "type": "run_finished", "document": dict(document)})
    return lines
