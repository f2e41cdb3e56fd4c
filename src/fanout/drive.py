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
from typing import TYPE_CHECKING, Any, TextIO

import anyio

from fanout.engine import Engine, Execution
from fanout.errors import FanoutError, StdoutClosed
from fanout.event import Broadcast, Event, Observer
from fanout.export import JsonlWriter, dumps, report_document
from fanout.files import write_whole
from fanout.history import History, HistoryRecorder, history_path
from fanout.interrupt import forget_hard_exit, interruptibly, on_hard_exit
from fanout.live import LiveBoard
from fanout.models import Agent, RunReport
from fanout.output import (
    EXIT_INTERRUPTED,
    EXIT_PIPE,
    Output,
    exit_for,
    silence_stdout,
    write_stdout,
)
from fanout.render import (
    ProgressDisplay,
    make_console,
    print_warning,
    printable_report,
    render_report,
    report_text,
    timeline,
)
from fanout.tracing import telemetry_wanted

if TYPE_CHECKING:
    from fanout.api import Plan
    from fanout.telemetry import Telemetry


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
    out, err = make_console(), make_console(stderr=True)
    display: AbstractContextManager[Any]
    shown: Observer
    closed = anyio.Event() if output.mode == "jsonl" else None
    if output.mode == "jsonl":
        shown = PipedJsonl(sys.stdout, deltas=output.deltas, on_closed=lambda: _closed(closed))
        display = nullcontext()
    elif output.mode == "table" and out.is_terminal and not out.is_dumb_terminal:
        board = LiveBoard(out, asked if guess_panes else ())
        on_hard_exit(board.restore)  # a second Ctrl-C must still give the terminal back
        shown = display = board
    else:
        shown = display = ProgressDisplay(err, len(asked))
    telemetry = open_telemetry()
    observer = Broadcast(
        shown,
        *([recorder] if recorder is not None else []),
        *([telemetry.observer()] if telemetry is not None else []),
    )
    execution = make(observer)

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
        if isinstance(display, LiveBoard):
            forget_hard_exit(display.restore)  # restored by now
        if recorder is not None:
            recorder.close()
        if telemetry is not None:
            telemetry.shutdown()
    if closed is not None and closed.is_set():
        raise StdoutClosed
    return report, execution.interrupted


def guess_panes(plan: Plan) -> bool:
    """The live board may draw the personas' panes before the run starts only where they
    will be the first stage's, ``panel/<name>``."""
    return bool(plan.stages) and plan.stages[0].id == "panel"


def open_telemetry() -> Telemetry | None:
    """OpenTelemetry export, when the environment asks for it and fanout[otel] is installed
    (only then is OpenTelemetry imported)."""
    if not telemetry_wanted(os.environ):
        return None
    try:
        from fanout.telemetry import Telemetry
    except ImportError as exc:
        print_warning(
            make_console(stderr=True),
            f"warning: OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is missing ({exc}):"
            " pip install 'fanout[otel]' to export spans",
        )
        return None
    return Telemetry()


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
    err = make_console(stderr=True)
    if output.mode == "json":
        write_stdout(dumps(document))
    elif output.mode == "table":
        try:
            show_report(report, output.view, recorded=recorder is not None)
            if output.timeline:
                make_console().print(timeline(report))
        except BrokenPipeError:
            silence_stdout()
            raise StdoutClosed from None
    if output.timeline and output.mode != "table":
        err.print(timeline(report))
    if output.file is not None:
        try:
            write_whole(output.file, dumps(document))
        except OSError as exc:
            raise FanoutError(
                f"--output: cannot write {str(output.file)!r}: {exc.strerror}"
            ) from None
    if recorder is not None and recorder.error is not None:
        print_warning(err, f"warning: the run was not fully recorded: {recorder.error}")
    if interrupted:
        print_warning(err, "interrupted: unfinished personas are marked cancelled")
        return EXIT_INTERRUPTED
    return exit_for(report.status, report.decided)


def show_report(report: RunReport, view: str | None, *, recorded: bool = True) -> None:
    """The final view on stdout: ``view`` as ``--format`` named it, else answers in columns
    on a terminal and plain Markdown anywhere else."""
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
            write_stdout(dumps(line).replace("\n", " ").rstrip() + "\n")
    except StdoutClosed:
        return EXIT_PIPE
    print_warning(make_console(stderr=True), "interrupted before the run started")
    return EXIT_INTERRUPTED


class _NoProvider:
    async def complete(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover
        raise AssertionError("nothing is asked")

    async def aclose(self) -> None:  # pragma: no cover
        pass


def open_history() -> History:
    """The history the environment names (``$FANOUT_HOME``, else the user data dir)."""
    return History(history_path(os.environ))


def warn(warnings: list[str]) -> None:
    """Say each warning once on stderr (the list is emptied)."""
    err = make_console(stderr=True)
    for warning in warnings:
        print_warning(err, f"warning: {warning}")
    warnings.clear()


def say_aside(message: str) -> None:
    """A note on stderr that is no warning (the local model being prepared)."""
    print_warning(make_console(stderr=True), message, style="dim")
