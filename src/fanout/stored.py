"""The stored runs shown: ``runs list``, ``runs show``, ``runs delete``, ``runs export``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from fanout.drive import open_history, show_report, warn
from fanout.errors import ConfigError, FanoutError
from fanout.export import dumps, json_line, report_from_document
from fanout.files import write_whole
from fanout.history import RunFilter
from fanout.models import RunReport
from fanout.output import EXIT_OK, exit_for, write_stdout
from fanout.render import (
    make_console,
    print_warning,
    printable,
    run_header,
    runs_table,
    timeline,
)


def list_runs(limit: int, json_output: bool, where: RunFilter | None = None) -> None:
    """``fanout runs list`` (``where``: only the runs it keeps)."""
    with open_history() as history:
        if where is not None and where.conversation is not None:  # a prefix, or a run of it
            where = replace(where, conversation=history.conversation_of(where.conversation))
        summaries = history.list_runs(limit, where)
        warn(history.warnings)
    if json_output:
        write_stdout(dumps({"runs": [s.__dict__ for s in summaries]}))
    else:
        make_console().print(runs_table(summaries))


def show_run(
    run_id: str,
    json_output: bool,
    *,
    with_timeline: bool = False,
    view: str | None = None,
    agent: str | None = None,
    raw: bool = False,
    exit_status: bool = False,
) -> int:
    """``fanout runs show``: the run as ``ask`` showed it, under its prompt, time and
    settings (``--json``: the same document; ``--timeline``: its timeline after it, on stderr
    when stdout is JSON; ``agent`` with ``raw``: that persona's answer alone, as it was
    written). Exit 0 once shown, or with ``exit_status`` the code the run itself ended with."""
    from fanout.chat import turn_line

    with open_history() as history:
        warn(history.warnings)
        stored = history.load(history.resolve(run_id))
        turn = turn_line(history, stored.document)
    report = report_from_document(stored.document)
    on_terminal = make_console().is_terminal
    if raw:
        # As written when piped (the point of --raw); never acted on by a terminal.
        answer = _one_answer(report, agent)
        write_stdout(printable(answer) if on_terminal else answer)
    elif json_output:
        write_stdout(dumps(stored.document))
    else:
        header = run_header(report, stored.settings) + (f"\n{turn}" if turn else "")
        write_stdout((printable(header) if on_terminal else header) + "\n\n")
        show_report(report, view)
    if with_timeline:
        make_console(stderr=json_output or raw).print(timeline(report))
    if exit_status:
        return exit_for(str(stored.document.get("status", "")), report.decided)
    return EXIT_OK


def delete_run(run_id: str, *, force: bool = False) -> str:
    """``fanout runs delete``: the run and its calls gone from the history; its full id. A
    turn with later turns in its conversation is refused unless ``force``."""
    from fanout.chat import later_turns_note

    with open_history() as history:
        warn(history.warnings)
        full = history.resolve(run_id)
        document = history.load(full).document
        note = later_turns_note(history, document, "deleting it leaves them as they were asked")
        if note and not force:
            raise ConfigError(f"{note}; --force to delete it anyway")
        history.purge(full)
    if note:
        print_warning(make_console(stderr=True), f"warning: {note}")
    return full


def _one_answer(report: RunReport, name: str | None) -> str:
    """``runs show -a NAME --raw``: the answer as the persona wrote it."""
    if name is None:
        raise ConfigError("--raw goes with --agent NAME: whose answer?")
    names = [r.name for r in report.agents]
    found = [r for r in report.agents if r.name.casefold() == name.casefold()]
    if not found:
        raise ConfigError(
            f"--agent: no persona {name!r} in run {report.run_id} (it has {', '.join(names)})"
        )
    result = found[0]
    if result.answer is None:
        raise FanoutError(f"{result.name} gave no answer in run {report.run_id}")
    return result.answer if result.answer.endswith("\n") else result.answer + "\n"


EXPORT_FORMATS = ("perfetto", "html")


def export_run(run_id: str, fmt: str, output: Path | None) -> int:
    """``fanout runs export``: a stored run as a Perfetto trace or an HTML page, into
    ``output`` or on stdout."""
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"--format: {fmt!r} is not one of {', '.join(EXPORT_FORMATS)}")
    if fmt == "html" and output is None and make_console().is_terminal:
        # A page holds the servers' text as they sent it: a terminal would act on its escapes.
        raise ConfigError("--format html is a page for a browser: write it with -o FILE or a pipe")
    with open_history() as history:
        warn(history.warnings)
        stored = history.load(history.resolve(run_id))
    report = report_from_document(stored.document)
    if fmt == "perfetto":
        from fanout.perfetto import perfetto_trace

        text = json_line(perfetto_trace(report)) + "\n"
    else:
        from fanout.page import html_page

        text = html_page(report)
    if output is None:
        write_stdout(text)
        return EXIT_OK
    try:
        write_whole(output, text)
    except OSError as exc:
        raise FanoutError(f"--output: cannot write {str(output)!r}: {exc.strerror}") from None
    return EXIT_OK
