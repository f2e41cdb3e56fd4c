"""The drive loop every command that runs something shares: the display (panes on a terminal,
JSON lines, or a spinner on stderr), the history recorder and OpenTelemetry listening, the
event loop, Ctrl-C and a closed stdout; then the result where ``Output`` says and the exit code.

The per-command drivers (``session`` for ``ask`` and ``flow run``, ``carry`` for ``runs
retry``/``runs synth``, ``batchrun`` for ``batch``) build a plan and hand it here.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from types import TracebackType
from typing import TYPE_CHECKING, NoReturn, TextIO

import anyio

from fanout.collector import settle
from fanout.engine import Engine, Execution
from fanout.errors import FanoutError, StdoutClosed
from fanout.event import Broadcast, CallFinished, CallRetrying, Event, Observer
from fanout.export import JsonlWriter, dumps, json_line, report_document
from fanout.files import write_whole
from fanout.history import History, HistoryRecorder, history_path
from fanout.interrupt import forget_hard_exit, interruptibly, on_hard_exit
from fanout.models import Agent, RunReport
from fanout.output import (
    EXIT_INTERRUPTED,
    EXIT_PIPE,
    Output,
    exit_for,
    silence_stdout,
    write_stdout,
)
from fanout.tracing import telemetry_wanted

if TYPE_CHECKING:
    from fanout.api import Plan
    from fanout.render import ProgressDisplay
    from fanout.telemetry import Telemetry

# Rich (render.py, live.py) loads only for what a terminal shows: a run whose result is JSON
# starts without it, unless it has something to say on stderr.
Display = AbstractContextManager[object]


def drive(
    make: Callable[[Observer], Execution],
    output: Output,
    recorder: HistoryRecorder | None,
    asked: Sequence[Agent],
    *,
    previous: RunReport | None = None,
    guess_panes: bool = True,
) -> tuple[RunReport, bool]:
    """Run with the right display (panes on a terminal, JSON lines, or a spinner on stderr)
    and the history recorder listening; return the report and whether it was interrupted.
    A reader that closes our stdout ends the run, quietly."""
    closed = anyio.Event() if output.mode == "jsonl" else None
    shown, display, restore = _display(output, asked if guess_panes else (), len(asked), closed)
    telemetry = open_telemetry()
    observer = Broadcast(
        shown,
        *([recorder] if recorder is not None else []),
        *([telemetry.observer()] if telemetry is not None else []),
    )
    execution = make(observer)
    settle()  # the client is ready and the requests are next: start-up is over

    async def main() -> RunReport:
        if recorder is not None and previous is None:
            recorder.start(execution.report())
        provider = execution.engine.provider
        execution.interrupted = await interruptibly(
            execution.execute, cleanup=provider.aclose, stop=closed
        )
        return execution.conclude()

    try:
        with display:
            report = anyio.run(main)
        if previous is not None:
            report = carried_on(previous, report)
            if recorder is not None:
                recorder.finish(report)
    finally:
        if restore is not None:
            forget_hard_exit(restore)  # restored by now
        if recorder is not None:
            recorder.close()
        if telemetry is not None:
            telemetry.shutdown()
    if closed is not None and closed.is_set():
        raise StdoutClosed
    return report, execution.interrupted


def _display(
    output: Output, panes: Sequence[Agent], asked: int, closed: anyio.Event | None
) -> tuple[Observer, Display, Callable[[], None] | None]:
    """What shows the run: JSON lines on stdout, the live board on a terminal, else a spinner
    and notices on stderr. Also how to give the terminal back, if a board has it."""
    if output.mode == "jsonl":
        lines = PipedJsonl(sys.stdout, deltas=output.deltas, on_closed=lambda: _closed(closed))
        return lines, nullcontext(), None
    if output.mode == "table":
        from fanout.render import make_console

        out = make_console()
        if out.is_terminal and not out.is_dumb_terminal:
            from fanout.live import LiveBoard

            board = LiveBoard(out, panes)
            on_hard_exit(board.restore)  # a second Ctrl-C must still give the terminal back
            return board, board, board.restore
    if sys.stderr.isatty():
        progress = _progress(asked)
        return progress, progress, None
    notices = _NoticesOnly(asked)
    return notices, notices, None


def _progress(asked: int) -> ProgressDisplay:
    from fanout.render import ProgressDisplay, make_console

    return ProgressDisplay(make_console(stderr=True), asked)


class _NoticesOnly:
    """The spinner's notices (a retry, a failure) on a stderr that is no terminal: Rich loads
    with the first of them, not before."""

    def __init__(self, asked: int) -> None:
        self._asked = asked
        self._progress: ProgressDisplay | None = None

    def __enter__(self) -> _NoticesOnly:
        return self

    def handle(self, event: Event) -> None:
        if self._progress is None:
            if not isinstance(event, CallRetrying | CallFinished):
                return
            if isinstance(event, CallFinished) and event.result.status != "error":
                return
            self._progress = _progress(self._asked).__enter__()
        self._progress.handle(event)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.__exit__(exc_type, exc, tb)


def guess_panes(plan: Plan) -> bool:
    """The live board may draw the personas' panes before the run starts only where they
    will be the first stage's, ``panel/<name>``: a panel stage's, each persona asked."""
    from fanout.shapes.panel import PANEL_STAGE, PanelStage

    first = plan.stages[0] if plan.stages else None
    return isinstance(first, PanelStage) and first.id == PANEL_STAGE


def open_telemetry() -> Telemetry | None:
    """OpenTelemetry export, when the environment asks for it and fanout[otel] is installed
    (only then is OpenTelemetry imported)."""
    if not telemetry_wanted(os.environ):
        return None
    try:
        from fanout.telemetry import Telemetry
    except ImportError as exc:
        say(
            f"warning: OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is missing ({exc}):"
            " pip install 'fanout[otel]' to export spans"
        )
        return None
    telemetry = Telemetry()
    warn(telemetry.warnings)
    return telemetry


class PipedJsonl(JsonlWriter):
    """``--jsonl`` on a stdout that its reader may close: then the run stops."""

    def __init__(self, out: TextIO, *, deltas: bool, on_closed: Callable[[], None]) -> None:
        super().__init__(out, deltas=deltas)
        self._on_closed = on_closed

    def handle(self, event: Event) -> None:
        try:
            super().handle(event)
        except BrokenPipeError:
            silence_stdout()
            self._on_closed()
            raise


def _closed(flag: anyio.Event | None) -> None:
    if flag is not None:
        flag.set()


def carried_on(before: RunReport, after: RunReport) -> RunReport:
    """A retried or re-synthesized run keeps its start, its span and the span it continued,
    and adds the new work's duration."""
    return replace(
        after,
        started_at=before.started_at,
        duration_s=round(before.duration_s + after.duration_s, 3),
        span_id=before.span_id or after.span_id,
        parent_span_id=before.parent_span_id if before.span_id else after.parent_span_id,
    )


def emit(
    report: RunReport, output: Output, recorder: HistoryRecorder | None, interrupted: bool
) -> int:
    """The run's result where ``output`` says (stdout, ``-o``, the timeline), what went wrong
    recording it, and the exit code."""
    document = report_document(report)
    if output.mode == "json":
        write_stdout(dumps(document))
    elif output.mode == "table":
        try:
            show_report(report, output.view, recorded=recorder is not None)
            if output.timeline:
                _timeline(report, stderr=False)
        except BrokenPipeError:
            silence_stdout()
            raise StdoutClosed from None
    if output.timeline and output.mode != "table":  # stdout carries the document
        _timeline(report, stderr=True)
    if output.file is not None:
        try:
            write_whole(output.file, dumps(document))
        except OSError as exc:
            raise FanoutError(
                f"--output: cannot write {str(output.file)!r}: {exc.strerror}"
            ) from None
    if recorder is not None and recorder.error is not None:
        say(f"warning: the run was not fully recorded: {recorder.error}")
    if interrupted:
        say("interrupted: unfinished personas are marked cancelled")
        return EXIT_INTERRUPTED
    return exit_for(report.status, report.decided)


def _timeline(report: RunReport, *, stderr: bool) -> None:
    from fanout.render import make_console, timeline

    make_console(stderr=stderr).print(timeline(report))


def show_report(report: RunReport, view: str | None, *, recorded: bool = True) -> None:
    """The final view on stdout: ``view`` as ``--format`` named it, else answers in columns
    on a terminal and plain Markdown anywhere else."""
    from fanout.render import make_console, printable_report, render_report, report_text

    out = make_console()
    view = view or ("columns" if out.is_terminal else "md")
    if view in ("md", "text"):
        # Plain text piped on keeps the answers as written; a terminal must not act on them.
        shown = printable_report(report) if out.is_terminal else report
        write_stdout(report_text(shown, view, recorded=recorded))
    else:
        render_report(out, printable_report(report), view, recorded=recorded)


def cancelled_before_start(prompt: str, output: Output) -> int:
    """A signal before the run could start: the empty document of a cancelled run, in the
    output mode asked for, and exit 130."""
    from fanout.engine import RunContext

    execution = Execution(Engine(_NoProvider()), [], RunContext(prompt, [], {}, {}))
    execution.interrupted = True
    report = execution.report()
    try:
        if output.mode == "json":
            write_stdout(dumps(report_document(report)))
        elif output.mode == "jsonl":
            line = {"type": "run_finished", "document": report_document(report)}
            write_stdout(json_line(line) + "\n")
    except StdoutClosed:
        return EXIT_PIPE
    say("interrupted before the run started")
    return EXIT_INTERRUPTED


class _NoProvider:
    async def complete(self, *args: object, **kwargs: object) -> NoReturn:  # pragma: no cover
        raise AssertionError("nothing is asked")

    async def aclose(self) -> None:  # pragma: no cover
        pass


def open_history() -> History:
    """The history the environment names (``$FANOUT_HOME``, else the user data dir)."""
    return History(history_path(os.environ))


def warn(warnings: list[str]) -> None:
    """Say each warning once on stderr (the list is emptied)."""
    for warning in warnings:
        say(f"warning: {warning}")
    warnings.clear()


def say(message: str, *, style: str = "yellow") -> None:
    """A line of chatter on stderr (a warning, a note), whatever characters it holds."""
    from fanout.render import make_console, print_warning

    print_warning(make_console(stderr=True), message, style=style)


def say_aside(message: str) -> None:
    """A note on stderr that is no warning (the local model being prepared)."""
    say(message, style="dim")
