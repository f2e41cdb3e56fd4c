"""Everything the user sees in a terminal (but the live board, in ``live.py``): with
``live.py``, the only module that imports Rich.

stdout carries the answers (table or JSON); progress, retries and errors go to stderr.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, is_dataclass, replace
from datetime import datetime
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

from rich.box import SIMPLE
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.markup import escape
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.status import Status
from rich.table import Table
from rich.text import Text

from fanout.event import (
    CallFinished,
    CallRetrying,
    Event,
)
from fanout.markdown import demote_headings
from fanout.models import Agent, CallResult, CallTiming, RunReport, StageResult
from fanout.summary import JsonObject, Rows, Summary, Verdict
from fanout.timing import PHASE_KINDS, PHASE_NAMES, PhaseKind, axis_end, phases

if TYPE_CHECKING:  # annotations only: `fanout agents` should not load the engine to start
    from fanout.batch import BatchTally
    from fanout.cost import PlannedCall
    from fanout.evalreport import Change, LeaderRow, PairTally, ScoreRow
    from fanout.history import RunSummary
    from fanout.runstats import StatsRow

_STATUS_STYLE = {"ok": "green", "error": "red", "cancelled": "yellow", "skipped": "yellow"}


# C0 controls but newline and tab, DEL, the C1 block (0x9b is a one-byte CSI) and the bidi
# overrides: what an answer could use to move the cursor, set the title or reorder the line.
_UNPRINTABLE = {c: chr(0x2400 + c) for c in range(0x20) if c not in (0x09, 0x0A)}
_UNPRINTABLE[0x7F] = "\u2421"
_UNPRINTABLE.update({c: f"\\x{c:02x}" for c in range(0x80, 0xA0)})
_UNPRINTABLE.update({c: f"\\u{c:04x}" for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))})


def printable(text: str) -> str:
    """``text`` safe to draw on a terminal: an escape sequence or a control character in an
    answer is shown as a visible symbol (``␛]0;title␇``), never acted on. Only for the
    screen: JSON, JSONL and the history keep the answer as the server sent it."""
    return text.replace("\r\n", "\n").translate(_UNPRINTABLE)


def printable_report(report: RunReport) -> RunReport:
    """A copy of ``report`` to draw on a terminal: every string a server could have written
    (answers, error messages, models, verdicts and details, keys included) passed through
    ``printable``. The report itself is left as it came, for JSON and the history."""
    return replace(
        report,
        prompt=printable(report.prompt),
        stages=[
            replace(
                stage,
                calls=[_printable_call(result) for result in stage.calls],
                verdict=_Printable(stage.verdict) if stage.verdict is not None else None,
            )
            for stage in report.stages
        ],
    )


def _printable_call(result: CallResult) -> CallResult:
    error = result.error
    return replace(
        result,
        name=printable(result.name),
        model=printable(result.model),
        answer=printable(result.answer) if result.answer is not None else None,
        error=replace(error, message=printable(error.message)) if error is not None else None,
        response_model=_printable_value(result.response_model),
        finish_reason=_printable_value(result.finish_reason),
        details=_printable_value(result.details),
    )


@dataclass(frozen=True)
class _Printable(Verdict):
    """A verdict whose summary is drawn on a terminal: every string in it made printable."""

    shown: Verdict

    def summary(self) -> Summary:
        summary: Summary = _printable_value(self.shown.summary())
        return summary

    def to_dict(self) -> JsonObject:
        return self.shown.to_dict()


def _printable_value(value: Any) -> Any:
    """``value`` with every string in it (dict keys too, however deep) made printable."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {_printable_value(k): _printable_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_printable_value(v) for v in value)
    if is_dataclass(value) and not isinstance(value, type):
        changed = {f.name: _printable_value(getattr(value, f.name)) for f in fields(value)}
        return replace(value, **changed)
    return value


def make_console(file: IO[str] | None = None, *, stderr: bool = False) -> Console:
    return Console(file=file, stderr=stderr, highlight=False, soft_wrap=False)


def print_error(console: Console, message: str) -> None:
    """The one-line error every failure ends in (it may quote a server: made printable)."""
    console.print(f"[bold red]fanout: error:[/] {escape(printable(message))}", soft_wrap=True)


def print_warning(console: Console, message: str, *, style: str = "yellow") -> None:
    """A line of chatter on stderr (a warning, a note), whatever characters it holds."""
    console.print(Text(printable(message), style=style), soft_wrap=True, highlight=False)


REFUSED_KEY = (401, 403)  # as the engine has it: said once (the host, the key's variable)


def _refused(result: CallResult) -> bool:
    return result.error is not None and result.error.status_code in REFUSED_KEY


def refused_keys(report: RunReport) -> dict[str, int]:
    """Each refused key's error (it names the host and the variable holding the key) and
    how many calls failed on it: said once above the answers, not once per call."""
    counts: dict[str, int] = {}
    for result in report.calls:
        if _refused(result) and result.error is not None:
            counts[result.error.message] = counts.get(result.error.message, 0) + 1
    return counts


def _refused_lines(report: RunReport) -> list[str]:
    return [
        f"✗ {message}: {count} call{'s' if count != 1 else ''} failed on it"
        for message, count in refused_keys(report).items()
    ]


class RefusedKeyNotice:
    """Says a refused key once on stderr, however many calls fail on it (a panel's six, a
    batch's thousands): the first such failure is told, the others are not."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._said: set[str] = set()

    def tell(self, result: CallResult) -> bool:
        """Whether ``result`` failed on a refused key (then it has been said)."""
        if not _refused(result) or result.error is None:
            return False
        message = result.error.message
        if message not in self._said:
            self._said.add(message)
            print_warning(
                self._console,
                f"{message}: no more calls are sent to it",
                style="red",
            )
        return True


def results_table(report: RunReport) -> Table:
    """One row per answer, in the order asked: who, which model, the answer, time and
    tokens; a run whose answers come in several stages (a flow) has a row naming each."""
    table = Table(show_lines=True, expand=True, title_justify="left", caption_justify="left")
    table.add_column("Persona", style="bold", no_wrap=True, max_width=24)
    table.add_column("Answer", ratio=1, overflow="fold")
    table.add_column("Latency", justify="right", no_wrap=True)
    table.add_column("Tokens", justify="right", no_wrap=True)
    stages = _answer_stages(report)
    for stage in stages:
        if len(stages) > 1:
            table.add_row(Text(stage.id, style="bold cyan"), "", "", "")
        for result in stage.calls:
            table.add_row(*_row(result))
    return table


def call_panel(stage: StageResult, result: CallResult) -> Panel:
    """A call of a later stage that decided nothing of its own, titled with its stage, name
    and model, and whether what it worked from was partial."""
    title = f"{stage.id} · {result.name} · {result.model}"
    border = "cyan"
    missing = result.details.get("missing")
    if result.details.get("partial") and result.status == "ok" and isinstance(missing, list):
        title += f" · partial (no answer from {', '.join(map(str, missing))})"
        border = "yellow"
    if result.status != "ok":
        border = "red"
    return Panel(_answer_cell(result), title=escape(title), title_align="left", border_style=border)


VIEWS = ("table", "columns", "md", "text")
MIN_ANSWER_WIDTH = 40  # narrower than this, a Markdown answer is mostly wrapping: stack them


def render_report(
    console: Console, report: RunReport, view: str = "table", *, recorded: bool = True
) -> None:
    """The full human-readable result: what the run decided (each stage's summary, what
    degraded it, each later call that decided nothing) above the answers, then the summary
    line. ``view``: ``table`` (one row per persona) or ``columns`` (answers side by side
    when the console is wide enough, stacked otherwise). ``recorded``: whether the run is in
    the history, so its id is worth printing."""
    parts: list[RenderableType] = [Text(line, style="bold red") for line in _refused_lines(report)]
    parts += [*summary_views(report), *_later_calls(report)]
    if view == "columns":
        if _answers(report) or not _summaries(report):
            parts.append(answer_columns(report, console.width))
    else:
        parts.append(results_table(report))
    parts.append(_SummaryLine(report, recorded))
    console.print(Group(*parts))


def _later_calls(report: RunReport) -> list[RenderableType]:
    """The calls of the stages that are not the answers. A stage that drew a verdict is
    summed up by its summary rather than shown call by call (but its failures are shown)."""
    parts: list[RenderableType] = []
    for stage in report.stages:
        if stage in _answer_stages(report):
            continue
        shown = [r for r in stage.calls if stage.verdict is None or r.status == "error"]
        parts.extend(call_panel(stage, result) for result in shown)
    return parts


def answer_columns(report: RunReport, width: int) -> RenderableType:
    """The answers side by side, as many columns as leave each ``MIN_ANSWER_WIDTH``
    (balanced, as the live board is), one under the other when not even two fit; under the
    id of their stage when they come in several."""
    stages = [s for s in _answer_stages(report) if s.calls]
    if not stages:
        return Text("no answers", style="dim")
    if len(stages) == 1:
        return _answer_grid(stages[0].calls, width)
    parts: list[RenderableType] = []
    for stage in stages:
        parts += [Text(stage.id, style="bold cyan"), _answer_grid(stage.calls, width)]
    return Group(*parts)


def _answer_grid(answers: Sequence[CallResult], width: int) -> RenderableType:
    fit = max(1, min(len(answers), width // MIN_ANSWER_WIDTH))
    rows = math.ceil(len(answers) / fit)
    columns = math.ceil(len(answers) / rows)
    grid = Table.grid(expand=True)
    for _ in range(columns):
        grid.add_column(ratio=1)
    cells = [answer_panel(result) for result in answers]
    for start in range(0, len(cells), columns):
        row: list[RenderableType] = list(cells[start : start + columns])
        grid.add_row(*row, *[""] * (columns - len(row)))
    return grid


def answer_panel(result: CallResult) -> Panel:
    """One persona's answer in a box: its name and model above, its figures below."""
    figures = [f"{result.latency_s:.2f} s" if result.latency_s is not None else ""]
    if result.usage.total_tokens:
        figures += [f"{result.usage.total_tokens:,} tok", usd(result.cost_usd)]
    if result.attempts > 1:
        figures.append(f"{result.attempts} attempts")
    border = {"ok": "green", "error": "red"}.get(result.status, "yellow")
    return Panel(
        _answer_cell(result),
        title=f"[bold]{escape(result.name)}[/] · {escape(result.model)}",
        title_align="left",
        subtitle=escape(" · ".join(f for f in figures if f)),
        subtitle_align="right",
        border_style=border,
    )


def report_text(report: RunReport, view: str = "md", *, recorded: bool = True) -> str:
    """The result as plain text for a pipe or a file: ``md`` (``## physicist`` then the
    answer as written) or ``text`` (a ``physicist (model)`` line then the answer). What each
    stage decided and later calls come first, the summary line last. No escape codes, no
    wrapping."""
    markdown = view == "md"

    def heading(title: str) -> str:
        return f"## {title}" if markdown else title

    blocks: list[str] = ["\n".join(_refused_lines(report))] if refused_keys(report) else []
    for stage, summary in _summaries(report):
        blocks.append(summary_text(stage, summary, markdown=markdown))

    def body(text: str) -> str:  # an answer's own headings go below the ones above it
        return demote_headings(text) if markdown else text

    for stage in report.stages:
        if stage in _answer_stages(report):
            continue
        for result in (r for r in stage.calls if stage.verdict is None or r.status == "error"):
            title = f"{stage.id}: {result.name}{_retried(result)}"
            blocks.append(f"{heading(title)}\n{body(_plain_answer(result))}")
    stages = _answer_stages(report)
    for stage in stages:
        for result in stage.calls:
            name = f"{stage.id} · {result.name}" if len(stages) > 1 else result.name
            title = name if markdown else f"{name} ({result.model})"
            asked = _question(result)
            asked_line = (
                f"_asked {asked}_\n\n"
                if asked and markdown
                else f"asked {asked}\n\n"
                if asked
                else ""
            )
            blocks.append(
                f"{heading(title + _retried(result))}\n{asked_line}{body(_plain_answer(result))}"
            )
    line = _summary(report, recorded)
    blocks.append(f"_{line}_" if markdown else line)
    return "\n\n".join(blocks) + "\n"


def _answer_stages(report: RunReport) -> list[StageResult]:
    """The stages whose calls are shown as the answers: those the run's shape marked (a
    panel's; every turn's tools of an orchestrator; each stage of a flow)."""
    return report.answer_stages


def _answers(report: RunReport) -> list[CallResult]:
    """The answers to show, in the order they were asked."""
    return [r for stage in _answer_stages(report) for r in stage.calls]


def _question(result: CallResult) -> str:
    """What a persona asked as a tool was asked (the orchestrator's question, and in which
    turn), if it was."""
    question = result.details.get("question")
    if not isinstance(question, str):
        return ""
    turn = result.stage.removeprefix("tools")
    return f"(turn {turn}) {question.strip()}" if turn.isdigit() else question.strip()


def _retried(result: CallResult) -> str:
    """`` · 3 attempts`` after the heading of an answer that took retries (a failure says
    it in its own line)."""
    return f" · {result.attempts} attempts" if result.status == "ok" and result.attempts > 1 else ""


def _plain_render(parts: Sequence[RenderableType], width: int = 100) -> str:
    """Renderables as plain text lines (no colour, no escape codes, no trailing blanks)."""
    if not parts:
        return ""
    console = Console(
        width=width, file=io.StringIO(), color_system=None, highlight=False, soft_wrap=False
    )
    console.print(Group(*parts))
    assert isinstance(console.file, io.StringIO)
    return "\n".join(line.rstrip() for line in console.file.getvalue().splitlines()).strip("\n")


def _plain_answer(result: CallResult) -> str:
    """An answer as written; a failure as one line (and what a cut-short call had)."""
    notes: list[str] = []
    missing = result.details.get("missing")
    if result.details.get("partial") and isinstance(missing, list):
        notes.append(f"(partial (no answer from {', '.join(map(str, missing))}))")
    if result.status == "ok":
        if result.truncated:
            notes.append("(truncated: the answer reached max_tokens)")
        return "\n\n".join([(result.answer or "").strip(), *notes])
    line = _failure(result) if result.error is not None else result.status
    if result.answer:
        return "\n\n".join([line, result.answer.strip(), "(cut short)", *notes])
    return "\n\n".join([line, *notes])


# -- what each stage decided: one renderer for every shape's summary -----------------------------

_BAR = 24
_HEADLINE = {True: "bold green", False: "bold yellow", None: "bold cyan"}


def _summaries(report: RunReport) -> list[tuple[StageResult, Summary]]:
    """Each stage's summary, in the order the stages ran."""
    return [(s, s.verdict.summary()) for s in report.stages if s.verdict is not None]


def stage_title(stage: StageResult, summary: Summary) -> str:
    """``Vote``; ``Judge · drafts-judge`` when the stage's id says more than its kind."""
    if stage.id in (stage.kind, summary.title.casefold()):
        return summary.title
    return f"{summary.title} · {stage.id}"


def summary_views(report: RunReport) -> list[RenderableType]:
    """Every stage's summary as its box, each with its warnings above it."""
    parts: list[RenderableType] = []
    for stage, summary in _summaries(report):
        parts.extend(Text(f"⚠ {w}", style="bold yellow") for w in summary.warnings)
        parts.append(summary_view(stage, summary))
    return parts


def _one_line(summary: Summary) -> bool:
    """A summary that is only its headline (an orchestrator's turn) is one line, not a box."""
    return not (summary.rows or summary.notes or _answer_shown(summary))


def summary_view(stage: StageResult, summary: Summary) -> RenderableType:
    """A stage's summary in a box: its headline, its rows (a tally as bars, a ranking as a
    table, points as a list), notes, then the decided answer as Markdown."""
    if _one_line(summary):
        line = f"{stage_title(stage, summary)}: {summary.headline}"
        return Text(line, style=_HEADLINE[summary.decided])
    headline = (
        [Text(summary.headline, style=_HEADLINE[summary.decided])] if summary.headline else []
    )
    parts: list[RenderableType] = list(headline)
    for rows in summary.rows:
        parts.extend(_rows_view(rows, decided=summary.decided is not False))
    parts.extend(Text(note, style="dim") for note in summary.notes)
    if _answer_shown(summary):
        from rich.markdown import Markdown

        parts += [Text("Answer", style="bold")] if summary.rows else []
        parts.append(Markdown(summary.answer or ""))
    border = "green" if summary.decided else "yellow" if summary.decided is False else "cyan"
    by = " · ".join(p for p in (summary.author, summary.model) if p)
    title = stage_title(stage, summary) + (f" · {by}" if by and summary.answer else "")
    return Panel(Group(*parts), title=escape(title), title_align="left", border_style=border)


def _answer_shown(summary: Summary) -> bool:
    """Whether a summary's answer is drawn under it: not when its headline says it all (a
    vote's winning word)."""
    return summary.answer is not None and summary.answer.strip() not in summary.headline


def _rows_view(rows: Rows, *, decided: bool) -> list[RenderableType]:
    """A block of a summary's rows, as it is drawn in a box."""
    head: list[RenderableType] = [Text(rows.title, style="bold")] if rows.title else []
    if rows.kind == "tally":
        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True, max_width=40, overflow="ellipsis")
        grid.add_column(no_wrap=True)
        for _ in range(max((len(r.cells) for r in rows.rows), default=0)):
            grid.add_column(justify="right", no_wrap=True)
        for row in rows.rows:
            filled = round(_BAR * (row.share or 0.0))
            mark = row.marked and decided
            bar = Text("█" * filled, style="green" if mark else "blue")
            bar += Text("░" * (_BAR - filled), style="dim")
            label = Text(("✓ " if mark else "  ") + row.label, style="bold" if mark else "")
            grid.add_row(label, bar, *row.cells)
        return [*head, grid]
    if rows.kind == "ranking":
        table = Table(title=rows.title or None, title_justify="left", expand=False)
        table.add_column("#", justify="right", no_wrap=True)
        table.add_column("", style="bold", no_wrap=True)
        for column in rows.columns:
            table.add_column(column, justify="right", no_wrap=True)
        for place, row in enumerate(rows.rows, 1):
            table.add_row(str(place), Text(row.label), *row.cells)
        return [table]
    lines = [
        Text(("  " * row.depth) + ("✓ " if row.marked and decided else "• ") + row.label)
        for row in rows.rows
    ]
    return [*head, *lines]


def summary_text(stage: StageResult, summary: Summary, *, markdown: bool) -> str:
    """A stage's summary as plain text: a heading, the headline, its rows (a tally or a
    ranking drawn as on a terminal, fenced in Markdown so it keeps its alignment; points as
    a list), notes, then the decided answer as written."""
    title = stage_title(stage, summary)
    by = " · ".join(p for p in (summary.author, summary.model) if p)
    title += f" · {by}" if by and summary.answer else ""
    warnings = [f"⚠ {w}" for w in summary.warnings]
    if _one_line(summary):
        return "\n".join([*warnings, f"{title}: {summary.headline}"])
    lines = [f"## {title}" if markdown else title, *warnings]
    lines += [summary.headline] if summary.headline else []
    decided = summary.decided is not False
    for rows in summary.rows:
        if rows.kind != "points":
            chart = _plain_render(_rows_view(rows, decided=decided))
            lines.append(f"```text\n{chart}\n```" if markdown else chart)
            continue
        lines += [f"{rows.title}:"] if rows.title else []
        bullet = "- " if markdown else "• "
        lines += [
            "  " * r.depth + bullet + ("✓ " if r.marked and decided else "") + r.label
            for r in rows.rows
        ]
    lines += summary.notes
    if _answer_shown(summary):
        answer = (summary.answer or "").strip()
        answer = demote_headings(answer) if markdown else answer  # below the heading above
        lines += ["", *(["Answer:"] if summary.rows else []), answer]
    return "\n".join(lines)


def plan_table(
    calls: Sequence[PlannedCall], settings_rpm: float | None, max_cost: float | None
) -> RenderableType:
    """``--dry-run``: every call the run would make, and what it could cost at most."""
    return _PlanTable(calls, settings_rpm, max_cost)


class _PlanTable:
    """The dry run's table laid out for the width it is given: a column each for the model,
    the endpoint (``host:port``, as ``fanout agents`` shows it) and the limits when they fit;
    otherwise the three (and the request fields) one under the other in one column, so that
    no column is squeezed to nothing."""

    def __init__(
        self, calls: Sequence[PlannedCall], settings_rpm: float | None, max_cost: float | None
    ) -> None:
        self.calls, self.settings_rpm, self.max_cost = calls, settings_rpm, max_cost

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.table(options.max_width)

    def table(self, width: int) -> Table:
        rows = [self._row(call) for call in self.calls]
        numbers = ("Prompt", "Max out", "Worst")
        columns = ["Persona", "Model", "Endpoint", "Limits", *numbers]
        if not any(row["Limits"] for row in rows):
            columns.remove("Limits")
        widths = {
            name: max([len(name), *(cell_len(line) for r in rows for line in r[name].split("\n"))])
            for name in columns
        }
        table = Table(
            title="Dry run: nothing was sent", title_justify="left", caption_justify="left"
        )
        if sum(widths.values()) + 3 * len(columns) + 1 > width:  # one column for the call
            columns = ["Persona", "Call", *numbers]
            for row in rows:
                where = " · ".join(
                    p for p in (row["Endpoint"], row["Limits"].replace("\n", " ")) if p
                )
                row["Call"] = "\n".join(p for p in (row["Model"], where) if p)
        for name in columns:
            if name in numbers:
                table.add_column(name, justify="right", no_wrap=True)
            elif name == "Persona":
                table.add_column(name, overflow="fold", min_width=min(widths[name], 10))
            else:
                table.add_column(name, overflow="fold", min_width=min(widths.get(name, 12), 12))
        for row in rows:
            table.add_row(*(Text(row[name]) for name in columns))
        table.caption = self._caption()
        return table

    def _row(self, call: PlannedCall) -> dict[str, str]:
        agent = call.agent
        params = " ".join(f"{k}={_param_text(v)}" for k, v in agent.request_params().items())
        return {
            "Persona": call.name or agent.name,
            "Model": agent.model + (f"\n{params}" if params else ""),
            "Endpoint": _address(agent.endpoint.base_url),
            "Limits": _limits(agent, self.settings_rpm).replace(" rpm ", " rpm\n"),
            "Prompt": f"~{call.prompt_tokens:,}",
            "Max out": f"{call.max_tokens:,}" if call.max_tokens else "unset",
            "Worst": usd(call.worst_case_usd),
        }

    def _caption(self) -> str:
        known = [c.worst_case_usd for c in self.calls]
        total = None if any(c is None for c in known) else sum(c or 0.0 for c in known)
        caption = f"{len(self.calls)} calls · worst case {usd(total)}"
        if self.max_cost is not None:
            caption += f" · --max-cost ${self.max_cost:g}"
        if any(c.max_tokens is None for c in self.calls):
            caption += " · an unset max_tokens counts as 1,024"
        return caption


def _param_text(value: object) -> str:
    """A request field's value in a table cell: compact JSON, strings bare."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _limits(agent: Agent, settings_rpm: float | None) -> str:
    rpm, tpm = settings_rpm or agent.limits.rpm, agent.limits.tpm
    return " ".join(p for p in (f"{rpm:g} rpm" if rpm else "", f"{tpm:g} tpm" if tpm else "") if p)


def runs_table(runs: Sequence[RunSummary]) -> RenderableType:
    """``fanout runs list``: newest first, as wide as the console it is printed on."""
    return _RunsTable(runs)


class _RunsTable:
    """The runs table laid out for the width it is given: the run id and status are never
    cut; the prompt takes the room left (cut with an ellipsis), as ``gh run list`` does. When
    that leaves the prompt too little, the start time drops its year and zone, then cost,
    start time and answered count give way, in that order."""

    def __init__(self, runs: Sequence[RunSummary]) -> None:
        self.runs = runs

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.table(options.max_width)

    def table(self, width: int) -> Table:
        runs = self.runs
        styles = {"completed": "green", "partial": "yellow", "failed": "red"}
        cells: dict[str, list[Text]] = {
            "Run": [Text(r.run_id, style="bold") for r in runs],
            "Started": [Text(local_time(r.started_at)) for r in runs],
            "Status": [Text(r.status, style=styles.get(r.status, "yellow")) for r in runs],
            "Answered": [Text(f"{r.answered}/{r.agents}") for r in runs],
            "Cost": [Text(usd(r.cost_usd)) for r in runs],
        }
        prompts = [Text(printable(" ".join(r.prompt.split()))) for r in runs]
        longest = max([len("Prompt"), *(p.cell_len for p in prompts)])

        def room() -> int:  # a column takes its cells, its padding and one border
            widths = [max([len(k), *(c.cell_len for c in v)]) for k, v in cells.items()]
            return width - 1 - 3 * (len(cells) + 1) - sum(widths)

        for squeeze in ("time", "Cost", "Started", "Answered"):
            if room() >= min(longest, 12):
                break
            if squeeze == "time":
                cells["Started"] = [Text(local_time(r.started_at, short=True)) for r in runs]
            else:
                del cells[squeeze]
        table = Table(title="Recent runs", title_justify="left")
        for name, column in cells.items():
            numbers = name in ("Answered", "Cost")
            table.add_column(name, justify="right" if numbers else "left", no_wrap=True)
            table.columns[-1].min_width = max([len(name), *(c.cell_len for c in column)])
        prompt_width = max(min(longest, room()), 1)
        table.add_column("Prompt", no_wrap=True, overflow="ellipsis", width=prompt_width)
        for i, prompt in enumerate(prompts):
            table.add_row(*(column[i] for column in cells.values()), prompt)
        if not runs:
            table.caption = "no runs recorded yet"
        return table


def _address(base_url: str) -> str:
    """An endpoint as ``host:port`` (the port its scheme implies when the URL names none):
    what tells two servers on one machine apart."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(base_url)
        port = parts.port or {"https": 443, "http": 80}.get(parts.scheme)
    except ValueError:
        return base_url
    if not parts.hostname:
        return base_url  # "local": fanout's own server, started per run
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port}" if port else host


def local_time(stamp: str, *, short: bool = False) -> str:
    """An ISO time as this machine's local time, with its zone: ``2026-01-31 14:05 CET``
    (what the history stores is UTC, which few people read at a glance); ``short``:
    ``01-31 14:05``."""
    try:
        when = datetime.fromisoformat(stamp).astimezone()
    except (ValueError, TypeError):
        return stamp
    if short:
        return when.strftime("%m-%d %H:%M")
    return when.strftime("%Y-%m-%d %H:%M ") + (when.tzname() or when.strftime("%z"))


def run_header(report: RunReport, settings: dict[str, Any]) -> str:
    """What ``runs show`` says before the answers: the run, when (local), its shape and
    status, the settings it ran with and the prompt."""
    shown = {
        "concurrency": "concurrency {}",
        "timeout": "timeout {:g} s",
        "retries": "retries {}",
        "rpm": "{:g} rpm",
        "tpm": "{:g} tpm",
        "max_cost": "max cost ${:g}",
    }
    figures = [form.format(settings[k]) for k, form in shown.items() if settings.get(k) is not None]
    if settings.get("stream") is not None:
        figures.append("streamed" if settings["stream"] else "not streamed")
    options = settings.get("options") or {}
    extra = [f"{k} {v}" for k, v in options.items() if k != "seed" and v not in (None, False)]
    lines = [
        f"run {report.run_id} · {local_time(report.started_at)} · shape {report.shape}"
        f" · {report.status}",
        "settings: " + (" · ".join([*figures, *extra]) or "as recorded"),
        "prompt: " + report.prompt,
    ]
    return "\n".join(lines)


def agents_table(agents: Sequence[Agent], synthesizer: Agent, source: str) -> Table:
    """``fanout agents``: the panel at a glance."""
    table = Table(title=Text(f"Panel from {source}"), title_justify="left", expand=False)
    table.add_column("Name", style="bold", no_wrap=True)
    table.add_column("Model", no_wrap=True)
    table.add_column("Endpoint", no_wrap=True)
    table.add_column("Description")
    for agent in agents:
        cells = (agent.name, agent.model, _address(agent.endpoint.base_url), agent.description)
        table.add_row(*(Text(c) for c in cells))
    table.add_row(
        Text(synthesizer.name, style="dim"),
        Text(synthesizer.model, style="dim"),
        Text(_address(synthesizer.endpoint.base_url), style="dim"),
        Text("merges the answers with --synthesize", style="dim"),
    )
    return table


class _Display:
    """A display that lasts as long as its ``with`` block; ``_widget`` is the Rich piece
    (status or progress bar) to stop at the end."""

    _widget: Status | Progress | None = None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._widget is not None:
            self._widget.stop()


class ProgressDisplay(_Display):
    """A spinner and retry notices on stderr while the panel answers, for when there is no
    live view (stdout is a pipe or a file)."""

    def __init__(self, console: Console, total: int) -> None:
        self._console = console
        self._total = total
        self._done = 0
        self._status: Status | None = None
        self._refused = RefusedKeyNotice(console)

    def __enter__(self) -> ProgressDisplay:
        if self._console.is_terminal and not self._console.is_dumb_terminal:
            self._status = self._widget = self._console.status(self._message(), spinner="dots")
            self._status.start()
        return self

    def handle(self, event: Event) -> None:
        if isinstance(event, CallRetrying):
            self._console.print(retry_notice(event), soft_wrap=True, highlight=False)
        elif isinstance(event, CallFinished):
            result = event.result
            self._done += 1 if event.call.role == "persona" else 0
            if self._refused.tell(result):
                pass  # said once, not once per call
            elif result.status == "error" and result.error is not None:
                self._console.print(
                    f"[red]{escape(printable(result.name))}[/]: failed: "
                    f"{escape(printable(result.error.message))}",
                    soft_wrap=True,
                )
            if self._status is not None:
                self._status.update(self._message())

    def _message(self) -> str:
        return f"Asking {self._total} persona{'s' if self._total != 1 else ''}… {self._done} done"


class BatchProgress(_Display):
    """``fanout batch``: a progress bar on stderr with done, failed, in flight, rate-limited,
    tokens, cost and the time left (only on a terminal; a pipe gets the summary line)."""

    def __init__(self, console: Console, tally: BatchTally) -> None:
        self._console = console
        self._tally = tally
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._refused = RefusedKeyNotice(console)

    def __enter__(self) -> BatchProgress:
        if self._console.is_terminal and not self._console.is_dumb_terminal:
            self._progress = Progress(
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.description}"),
                TimeRemainingColumn(),
                console=self._console,
                refresh_per_second=4,
                transient=True,
            )
            self._widget = self._progress
            self._progress.start()
            self._task = self._progress.add_task("", total=self._tally.total or None)
            self._refresh()
        return self

    def handle(self, event: Event) -> None:
        if isinstance(event, CallFinished):
            self._refused.tell(event.result)
        self._refresh()

    def _refresh(self) -> None:
        if self._progress is None or self._task is None:
            return
        tally = self._tally
        self._progress.update(
            self._task,
            completed=tally.done + tally.skipped,
            description=escape(batch_summary(tally, with_totals=False)),
        )


def batch_summary(tally: BatchTally, *, with_totals: bool = True) -> str:
    """``120/300 done · 2 failed · 8 in flight · 1 rate-limited · 9,876 tokens · $0.0123``"""
    parts = [f"{tally.done + tally.skipped}/{tally.total} done"] if with_totals else []
    if tally.skipped:
        parts.append(f"{tally.skipped} from an earlier run")
    parts.append(f"{tally.failed} failed")
    if tally.in_flight or tally.elapsed_s is None:
        parts.append(f"{tally.in_flight} in flight")
    if tally.waiting:
        parts.append(f"{tally.waiting} rate-limited")
    parts.append(f"{tally.tokens:,} tokens")
    parts.append(("≥ " if tally.unpriced else "") + usd(tally.cost_usd))
    if with_totals and tally.elapsed_s is not None:
        parts.append(f"{tally.elapsed_s:.1f} s")
    if with_totals and tally.output is not None:
        parts.append(f"→ {tally.output}")
    return " · ".join(parts)


def retry_notice(event: CallRetrying) -> str:
    """``physicist: 429, retrying in 1.2 s (attempt 2/4)``"""
    return (
        f"[yellow]{escape(printable(event.call.name))}[/]: {escape(printable(event.reason))}, "
        "retrying in "
        f"{event.wait_s:.1f} s (attempt {event.attempt + 1}/{event.max_attempts})"
    )


def _row(result: CallResult) -> tuple[RenderableType, ...]:
    persona = Text.assemble((result.name, "bold"), "\n", (result.model, "dim"))
    latency = Text(f"{result.latency_s:.2f} s" if result.latency_s is not None else "-")
    if result.attempts > 1:  # retries cost time: say how many it took
        latency.append(f"\n{result.attempts} attempts", style="yellow")
    tokens = Text(f"{result.usage.total_tokens:,}" if result.usage.total_tokens else "-")
    if result.usage.total_tokens:
        tokens.append("\n" + usd(result.cost_usd), style="dim")
    return persona, _answer_cell(result), latency, tokens


def usd(amount: float | None) -> str:
    """``$0.0012``; ``?`` for an unknown price."""
    if amount is None:
        return "$?"
    if amount == 0:
        return "$0"
    if amount < 0.01:
        return f"${amount:.6f}".rstrip("0")
    return f"${amount:.4f}" if amount < 1 else f"${amount:,.2f}"


def _answer_cell(result: CallResult) -> RenderableType:
    cell = _answer_body(result)
    if question := _question(result):  # a persona the orchestrator asked: what it was asked
        return Group(Text(f"asked {question}", style="dim italic"), cell)
    return cell


def _answer_body(result: CallResult) -> RenderableType:
    if result.status == "ok":
        from rich.markdown import Markdown  # 40 ms to import: only when there are answers

        answer = Markdown(result.answer or "")
        if result.truncated:
            note = Text("✂ truncated: the answer reached max_tokens", style="yellow")
            return Group(answer, note)
        return answer
    style = _STATUS_STYLE.get(result.status, "red")
    line = Text(_failure(result) if result.error is not None else result.status, style=style)
    if result.answer:  # the text a call cut short had, for what it is worth: as Markdown too
        from rich.markdown import Markdown

        cut = Markdown(result.answer, style="dim")
        return Group(line, cut, Text("✂ cut short", style=style))
    return line


def _failure(result: CallResult) -> str:
    """A failed call's line; a refused key's (told once above the answers) in short."""
    assert result.error is not None
    attempts = f" after {result.attempts} attempts" if result.attempts > 1 else ""
    if _refused(result):
        said = "key refused" if result.error.status_code == 401 else "denied"
        return f"✗ {result.error.type}{attempts}: HTTP {result.error.status_code}, {said}"
    return f"✗ {result.error.type}{attempts}: {result.error.message}"


def _summary(report: RunReport, recorded: bool = True, width: int | None = None) -> str:
    """One line: answered (stage by stage when there are several: ``research 3/4 · draft
    1/1``), time, tokens, cost, status (and when a verdict decided nothing, that it is
    undecided), and the run id when the history has it (an id ``runs show`` cannot find
    would only mislead). With ``width``, the longest of its forms that fits: the token
    counts lose their split into in and out, then words."""
    asked = _answered(report)
    usage = report.usage
    status = report.status + (", undecided" if report.decided is False else "")
    run = [f"run {report.run_id}"] if recorded else []
    split = f"({usage.input_tokens:,} in, {usage.output_tokens:,} out)"
    forms = [
        [f"{report.duration_s:.2f} s", f"{usage.total_tokens:,} tokens {split}", *run],
        [f"{report.duration_s:.2f} s", f"{usage.total_tokens:,} tokens", *run],
        [f"{report.duration_s:.1f} s", f"{usage.total_tokens:,} tok", *run],
    ]
    lines = [
        " · ".join([asked, duration, tokens, usd(report.cost_usd), status, *rest])
        for duration, tokens, *rest in forms
    ]
    return next((line for line in lines if width is None or len(line) <= width), lines[-1])


class _SummaryLine:
    """The summary line, as long as the console it is printed on lets it be."""

    def __init__(self, report: RunReport, recorded: bool) -> None:
        self.report, self.recorded = report, recorded

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield Text(_summary(self.report, self.recorded, options.max_width))


def _answered(report: RunReport) -> str:
    """``3/3 answered``; every stage that made calls counted when there are several."""
    stages = [s for s in report.stages if s.calls]
    if len(stages) > 1:
        return " · ".join(
            f"{s.id} {sum(1 for c in s.calls if c.status == 'ok')}/{len(s.calls)}" for s in stages
        )
    answers = _answers(report)
    if not answers and _summaries(report):
        return "answered without asking a persona"
    return f"{sum(1 for r in answers if r.status == 'ok')}/{len(answers)} answered"


# -- the timeline -------------------------------------------------------------------------------

# Each phase has a glyph and a style; without colour (NO_COLOR, TERM=dumb, a pipe) the glyphs
# alone must tell the phases apart, so they are plain ASCII there.
_GLYPHS: dict[PhaseKind | str, tuple[str, str, str]] = {
    "waiting": ("░", ".", "dim"),
    "backoff": ("╌", "~", "yellow"),
    "first_token": ("▒", "-", "cyan"),
    "streaming": ("█", "=", "green"),
    "failed": ("✗", "x", "bold red"),
}
_FIGURES_WIDTH = 21  # " ttft   total tries", each right-aligned


class Timeline:
    """One row per call of every stage on the run's time axis, its phases drawn in distinct
    glyphs and styles (waiting, retry back-off, until first token, streaming, a failed
    attempt's end), and its figures at the row's end: time to first token, total, attempts.
    Fits the console's width (or ``width``)."""

    def __init__(self, report: RunReport, width: int | None = None) -> None:
        self.report = report
        self.width = width

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = min(self.width or options.max_width, options.max_width)
        plain = console.no_color or console.is_dumb_terminal or console.color_system is None
        yield from self.lines(width, plain=plain)

    def lines(self, width: int, *, plain: bool) -> list[Text]:
        report = self.report
        end = axis_end(report)
        rows = [(stage, result) for stage in report.stages for result in stage.calls]
        names = [r.name for _, r in rows] or [""]
        label = min(max(len(n) for n in names), max(8, width // 5))
        bar = max(width - label - _FIGURES_WIDTH - 2, 10)
        out = [self._header(label, bar, end)]
        shown = [stage for stage in report.stages if stage.calls]
        for stage in shown:
            if len(shown) > 1:
                out.append(Text(stage.id, style="bold dim"))
            for result in stage.calls:
                out.append(self._row(result, label, bar, end, plain))
        for line in out:
            line.no_wrap = True
            line.truncate(width, overflow="crop")
        return [*out, *self._legend(plain, width)]

    def _header(self, label: int, bar: int, end: float) -> Text:
        right = f"{end:.2f}s"
        axis = "0s" + " " * max(bar - 2 - len(right), 1) + right
        figures = f"{'ttft':>6} {'total':>7} {'tries':>5}"
        return Text(f"{'':<{label}} {axis} {figures}", style="dim")

    def _row(self, result: CallResult, label: int, bar: int, end: float, plain: bool) -> Text:
        name = result.name if len(result.name) <= label else result.name[: label - 1] + "…"
        line = Text.assemble((f"{name:<{label}}", "bold"), " ")
        timing = result.timing
        if timing is None:
            # Skipped, cancelled before it began, or recorded by a fanout without timing.
            note = "no timing recorded" if result.status == "ok" else result.status
            line.append(f"{'(' + note + ')':<{bar}}", style="dim")
        else:
            line.append_text(self._bar(timing, bar, end, plain))
        ttft = f"{result.ttft_s:.2f}s" if result.ttft_s is not None else "-"
        total = f"{result.latency_s:.2f}s" if result.latency_s is not None else "-"
        # The attempts the bar draws: one refused before it was sent (a key another call
        # found refused, the budget) is a try that failed too.
        count = len(timing.attempts) if timing is not None else result.attempts
        tries = str(count) if count else "-"
        style = "red" if result.status == "error" else ""
        line.append(f" {ttft:>6} {total:>7} {tries:>5}", style=style)
        return line

    def _bar(self, timing: CallTiming, bar: int, end: float, plain: bool) -> Text:
        scale = bar / end if end > 0 else 0.0
        cells: list[str | None] = [None] * bar
        # Painted in this order, so where phases share a cell the later phase shows.
        for phase in sorted(phases(timing), key=lambda p: PHASE_KINDS.index(p.kind)):
            first = min(int(phase.start_s * scale), bar - 1)
            last = max(first + 1, min(round(phase.end_s * scale), bar))
            for i in range(first, last):
                cells[i] = phase.kind
        for attempt in timing.attempts:
            if attempt.error is not None and attempt.end_s is not None:
                cells[max(min(math.ceil(attempt.end_s * scale) - 1, bar - 1), 0)] = "failed"
        text = Text()
        for kind in cells:
            if kind is None:
                text.append(" ")
            else:
                fancy, ascii_, style = _GLYPHS[kind]
                text.append(ascii_ if plain else fancy, style=style)
        return text

    def _legend(self, plain: bool, width: int) -> list[Text]:
        """What each glyph means, as many entries a line as fit."""
        lines = [Text()]
        names: dict[str, str] = {**PHASE_NAMES, "failed": "failed attempt"}
        for kind, (fancy, ascii_, style) in _GLYPHS.items():
            entry = f" {names[kind]}"
            if lines[-1].cell_len and lines[-1].cell_len + 2 + 1 + len(entry) > width:
                lines.append(Text())
            elif lines[-1].cell_len:
                lines[-1].append("  ")
            lines[-1].append(ascii_ if plain else fancy, style=style)
            lines[-1].append(entry, style="dim")
        return lines


def timeline(report: RunReport, width: int | None = None) -> Timeline:
    """The run's timeline (see ``Timeline``), ``width`` columns at most."""
    return Timeline(report, width)


# -- fanout eval (the document is built in evalreport.py; this only draws it) -------------------

_BEST = " ★"


def scorecard_table(rows: Sequence[ScoreRow], noise: str) -> Table:
    """``fanout eval``: a row per persona, best first; ★ marks the best of each column and ≈
    a persona within the noise of the best (the caption says which test)."""
    table = Table(
        title="Scorecard", title_justify="left", caption_justify="left", box=SIMPLE,
        pad_edge=False, padding=(0, 1, 0, 0),
    )  # fmt: skip
    table.add_column("Persona", min_width=10)
    for name in ("Pass", "95 % CI", "Score", "Tokens", "Cost", "p50/p95 s", "Fail"):
        table.add_column(name, justify="right", no_wrap=True)
    for index, row in enumerate(rows):
        best = set(row["best"])

        def cell(text: str, *columns: str, best: set[str] = best) -> Text:
            marked = any(c in best for c in columns)
            return Text(text + (_BEST if marked else ""), style="bold green" if marked else "")

        persona = Text(printable(row["persona"]), style="bold")
        if index and row["within_noise"]:
            persona.append(" ≈", style="yellow")
        persona.append("\n" + printable(row["model"]), style="dim")
        table.add_row(
            persona,
            cell(f"{row['passed']}/{row['total']} {row['pass_rate']:.0%}", "pass_rate"),
            Text(f"{row['ci_low'] * 100:.0f}-{row['ci_high']:.0%}"),
            cell("-" if row["mean_score"] is None else f"{row['mean_score']:.2f}", "mean_score"),
            cell(f"{row['tokens']:,}", "tokens"),
            cell(usd(row["cost_usd"]), "cost_usd"),
            cell(f"{_seconds(row['p50_s'])}/{_seconds(row['p95_s'])}", "p50_s", "p95_s"),
            cell(str(row["failures"]), "failures"),
        )
    if len(rows) > 1:
        table.caption = f"★ best in its column · ≈ {noise}"
    return table


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def leaderboard_table(rows: Sequence[LeaderRow], pairs: PairTally) -> Table:
    """``fanout eval --pairwise``: Bradley-Terry ratings, best first, with their intervals."""
    table = Table(title="Pairwise leaderboard (Bradley-Terry)", title_justify="left",
                  caption_justify="left")  # fmt: skip
    for name in ("Persona", "Rating", "95 % CI", "Wins", "Games"):
        table.add_column(name, justify="left" if name == "Persona" else "right", no_wrap=True)
    for row in rows:
        table.add_row(
            Text(printable(row["persona"]), style="bold"),
            Text(f"{row['rating']:.0f}"),
            Text(f"{row['ci_low']:.0f} to {row['ci_high']:.0f}"),
            Text(f"{row['wins']:g}"),
            Text(str(row["games"])),
        )
    table.caption = (
        f"{pairs['compared']} pairs compared, each judged in both orders ({pairs['ties']} ties, "
        f"an inconsistent pair counts as one); {pairs['unjudged']} without a usable verdict · "
        "intervals: bootstrap over cases"
    )
    return table


def eval_plan_table(rows: Sequence[tuple[str, int, float | None]], max_cost: float | None) -> Table:
    """``fanout eval --dry-run``: the calls of each phase and their worst case."""
    table = Table(title="Dry run: nothing was sent", title_justify="left", caption_justify="left")
    table.add_column("Phase", no_wrap=True)
    table.add_column("Calls", justify="right", no_wrap=True)
    table.add_column("Worst case", justify="right", no_wrap=True)
    for phase, calls, worst in rows:
        table.add_row(Text(phase), Text(f"{calls:,}"), Text(usd(worst)))
    known = [w for _, _, w in rows]
    total = None if any(w is None for w in known) else sum(w or 0.0 for w in known)
    caption = f"{sum(c for _, c, _ in rows):,} calls at most · worst case {usd(total)}"
    if max_cost is not None:
        caption += f" · --max-cost ${max_cost:g}"
    table.caption = caption + " · an unset max_tokens counts as 1,024"
    return table


def eval_changes_text(worse: Sequence[Change], better: Sequence[Change]) -> str:
    """``fanout eval compare``: the cells that got worse, then those that got better."""
    lines = [f"{len(worse)} worse, {len(better)} better"]
    for title, changes in (("worse", worse), ("better", better)):
        for change in changes:
            lines.append(
                f"  {title}: case {printable(change['case'])} · {printable(change['persona'])}: "
                f"{printable(change['before'])} → {printable(change['after'])}"
            )
    return "\n".join(lines) + "\n"


def stats_table(rows: Sequence[StatsRow]) -> Table:
    """``fanout runs stats``: each persona's wins across the recorded decisions."""
    table = Table(
        title="Across the history", title_justify="left", caption_justify="left", box=SIMPLE,
        pad_edge=False, padding=(0, 1, 0, 0),
    )  # fmt: skip
    table.add_column("Persona")
    for name in ("Win rate", "95 % CI", "Judge", "Vote", "Council", "Cost", "Per win"):
        table.add_column(name, justify="right", no_wrap=True)
    for row in rows:
        table.add_row(
            Text(printable(row["persona"]), style="bold"),
            Text(f"{row['win_rate']:.0%} of {row['games']}"),
            Text(f"{row['ci_low'] * 100:.0f}-{row['ci_high']:.0%}"),
            Text(row["judge"]),
            Text(row["vote"]),
            Text(row["council"]),
            Text(usd(row["cost_usd"])),
            Text("-" if row["cost_per_win"] is None else usd(row["cost_per_win"])),
        )
    table.caption = (
        "wins/decisions: a judge's pick, the winning side of a vote, the top of a council's "
        "ranking (a tie shared) · cost: the persona's answers in those runs"
    )
    return table
