"""Everything the user sees in a terminal (but the live board, in ``live.py``): with
``live.py``, the only module that imports Rich.

stdout carries the answers (table or JSON); progress, retries and errors go to stderr.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import replace
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
                verdict=_printable_value(stage.verdict),
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


def _printable_value(value: Any) -> Any:
    """``value`` with every string in it (dict keys too, however deep) made printable."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {_printable_value(k): _printable_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_printable_value(v) for v in value)
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
    """One row per persona, in panel order: who, which model, the answer, time and tokens."""
    table = Table(show_lines=True, expand=True, title_justify="left", caption_justify="left")
    table.add_column("Persona", style="bold", no_wrap=True, max_width=24)
    table.add_column("Answer", ratio=1, overflow="fold")
    table.add_column("Latency", justify="right", no_wrap=True)
    table.add_column("Tokens", justify="right", no_wrap=True)
    for result in _answers(report):
        table.add_row(*_row(result))
    return table


def call_panel(stage: StageResult, result: CallResult) -> Panel:
    """A call of a later stage (a synthesis, a judge's verdict...), titled with its stage, name
    and model, and whether what it worked from was partial."""
    title = f"{stage.kind.replace('_', ' ').capitalize()} · {result.name} · {result.model}"
    border = "cyan"
    missing = result.details.get("missing")
    if result.details.get("partial") and result.status == "ok" and isinstance(missing, list):
        title += f" · partial (no answer from {', '.join(map(str, missing))})"
        border = "yellow"
    if result.status != "ok":
        border = "red"
    agreement = result.details.get("map")
    body = _map_sections(agreement, result) if isinstance(agreement, dict) else _answer_cell(result)
    return Panel(body, title=escape(title), title_align="left", border_style=border)


def _map_sections(agreement: dict[str, Any], result: CallResult) -> RenderableType:
    """An agreement map: consensus, contradictions with each stance, points only one persona
    made, then the merged answer."""
    parts: list[RenderableType] = [Text("Consensus", style="bold green")]
    parts.extend(Text(f"• {p}") for p in agreement.get("consensus") or [])
    parts.append(Text("Contradictions", style="bold yellow"))
    for item in agreement.get("contradictions") or []:
        parts.append(Text(f"• {item.get('topic', '')}"))
        stances = item.get("stances") or {}
        parts.extend(Text(f"    {name}: {stance}", style="dim") for name, stance in stances.items())
    parts.append(Text("Only one persona said", style="bold cyan"))
    for name, points in (agreement.get("unique") or {}).items():
        parts.extend(Text(f"• {name}: {point}") for point in points)
    parts.extend([Text("Answer", style="bold"), _answer_cell(result)])
    return Group(*parts)


def synthesis_panel(report: RunReport) -> Panel | None:
    """The merged answer, if the run has one."""
    for stage in report.stages[1:]:
        if stage.kind == "synthesis" and stage.calls:
            return call_panel(stage, stage.calls[0])
    return None


VIEWS = ("table", "columns", "md", "text")
MIN_ANSWER_WIDTH = 40  # narrower than this, a Markdown answer is mostly wrapping: stack them


def render_report(
    console: Console, report: RunReport, view: str = "table", *, recorded: bool = True
) -> None:
    """The full human-readable result: what the run decided (each stage's verdict, what
    degraded it, each later call such as a synthesis) above the answers, then the summary
    line. ``view``: ``table`` (one row per persona) or ``columns`` (answers side by side
    when the console is wide enough, stacked otherwise). ``recorded``: whether the run is in
    the history, so its id is worth printing."""
    parts: list[RenderableType] = [Text(line, style="bold red") for line in _refused_lines(report)]
    parts += [*verdict_views(report), *_later_calls(report)]
    if view == "columns":
        if _answers(report) or not _own_answers(report):
            parts.append(answer_columns(report, console.width))
    else:
        parts.append(results_table(report))
    parts.append(_SummaryLine(report, recorded))
    console.print(Group(*parts))


def _later_calls(report: RunReport) -> list[RenderableType]:
    """The calls of the stages after the answers. A stage whose verdict has a view of its
    own is summed up by it rather than shown call by call (but its failures are shown)."""
    parts: list[RenderableType] = []
    for stage in report.stages:
        if _holds_answers(report, stage):
            continue
        if stage.key in VERDICT_VIEWS and isinstance(stage.verdict, dict):
            parts.extend(call_panel(stage, r) for r in stage.calls if r.status == "error")
            continue
        parts.extend(call_panel(stage, result) for result in stage.calls)
    return parts


def answer_columns(report: RunReport, width: int) -> RenderableType:
    """The answers side by side, as many columns as leave each ``MIN_ANSWER_WIDTH``
    (balanced, as the live board is), one under the other when not even two fit."""
    answers = _answers(report)
    if not answers:
        return Text("no answers", style="dim")
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
    answer as written) or ``text`` (a ``physicist (model)`` line then the answer). Verdicts
    and later calls come first, the summary line last. No escape codes, no wrapping."""
    markdown = view == "md"

    def heading(title: str) -> str:
        return f"## {title}" if markdown else title

    blocks: list[str] = ["\n".join(_refused_lines(report))] if refused_keys(report) else []
    verdicts = _plain_render(verdict_views(report, plain=True))
    if verdicts:
        # A tally or a ranking is a chart, not prose: drawn as on a terminal (without colour),
        # fenced so that Markdown keeps its alignment.
        blocks.append(f"{heading('Verdict')}\n```text\n{verdicts}\n```" if markdown else verdicts)

    def body(text: str) -> str:  # an answer's own headings go below the ones above it
        return demote_headings(text) if markdown else text

    for name, answer in _own_answers(report):
        blocks.append(f"{heading(f'Answer: {name}')}\n{body(answer.strip())}")
    for stage in report.stages:
        if _holds_answers(report, stage):
            continue
        shown = stage.calls
        if stage.key in VERDICT_VIEWS and isinstance(stage.verdict, dict):
            shown = [r for r in stage.calls if r.status == "error"]
        for result in shown:
            kind = stage.kind.replace("_", " ").capitalize()
            title = f"{kind}: {result.name}{_retried(result)}"
            blocks.append(f"{heading(title)}\n{body(_plain_answer(result))}")
    for result in _answers(report):
        title = result.name if markdown else f"{result.name} ({result.model})"
        asked = _question(result)
        asked_line = (
            f"_asked {asked}_\n\n" if asked and markdown else f"asked {asked}\n\n" if asked else ""
        )
        blocks.append(
            f"{heading(title + _retried(result))}\n{asked_line}{body(_plain_answer(result))}"
        )
    summary = _summary(report, recorded)
    blocks.append(f"_{summary}_" if markdown else summary)
    return "\n\n".join(blocks) + "\n"


def _holds_answers(report: RunReport, stage: StageResult) -> bool:
    """Whether ``stage`` is drawn as the answers (the panel's; every turn's tool calls of an
    orchestrator, which asks personas in several turns) rather than as a later stage."""
    if report.shape == "orchestrate":
        return stage.kind == "tools"
    return stage is report.answers


def _answers(report: RunReport) -> list[CallResult]:
    """The personas' answers to show side by side, in the order they were asked."""
    return [r for stage in report.stages if _holds_answers(report, stage) for r in stage.calls]


def _own_answers(report: RunReport) -> list[tuple[str, str]]:
    """The run's own answer (an orchestrator's ``output``), by who wrote it."""
    for stage in report.stages:
        if stage.key == "output" and isinstance(stage.verdict, dict):
            return [(n, t) for n, t in stage.verdict.items() if isinstance(t, str)]
    return []


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


def _plain_map(agreement: dict[str, Any]) -> str:
    """An agreement map as Markdown lists, ahead of its merged answer."""
    lines = ["Consensus:", *(f"- {p}" for p in agreement.get("consensus") or [])]
    lines.append("Contradictions:")
    for item in agreement.get("contradictions") or []:
        lines.append(f"- {item.get('topic', '')}")
        stances = item.get("stances") or {}
        lines.extend(f"  - {name}: {stance}" for name, stance in stances.items())
    lines.append("Only one persona said:")
    for name, points in (agreement.get("unique") or {}).items():
        lines.extend(f"- {name}: {point}" for point in points)
    lines.append("Answer:")
    return "\n".join(lines)


def _plain_answer(result: CallResult) -> str:
    """An answer as written; a failure as one line (and what a cut-short call had)."""
    notes: list[str] = []
    agreement = result.details.get("map")
    if isinstance(agreement, dict) and result.status == "ok":
        # A map stored by another version may not read: its merged answer still stands.
        with suppress(AttributeError, TypeError):
            notes.append(_plain_map(agreement))
    missing = result.details.get("missing")
    if result.details.get("partial") and isinstance(missing, list):
        notes.append(f"(partial (no answer from {', '.join(map(str, missing))}))")
    if result.status == "ok":
        if result.truncated:
            notes.append("(truncated: the answer reached max_tokens)")
        if agreement is not None and notes:
            return "\n".join([notes.pop(0), (result.answer or "").strip(), *notes])
        return "\n\n".join([(result.answer or "").strip(), *notes])
    line = _failure(result) if result.error is not None else result.status
    if result.answer:
        return "\n\n".join([line, result.answer.strip(), "(cut short)", *notes])
    return "\n\n".join([line, *notes])


def verdict_views(report: RunReport, *, plain: bool = False) -> list[RenderableType]:
    """Each stage's verdict as its view (keyed by the verdict's ``key``; a key without one
    gets its plain fields), with its warnings above it. ``plain``: for text, where the run's
    own answer (an orchestrator's) is written as prose, not drawn in a box."""
    parts: list[RenderableType] = []
    for stage in report.stages:
        verdict = stage.verdict
        if not isinstance(verdict, dict):
            continue
        for warning in verdict.get("warnings") or []:
            parts.append(Text(f"⚠ {warning}", style="bold yellow"))
        if "error" in verdict and len(verdict) == 1:
            parts.append(Text(f"⚠ {stage.kind}: no verdict: {verdict['error']}", style="red"))
            continue
        if stage.key is None:
            continue
        if plain and stage.key == "output":
            continue
        view = VERDICT_VIEWS.get(stage.key, _plain_verdict)
        try:
            drawn = view(stage, verdict)
        except (KeyError, TypeError, ValueError, AttributeError):
            drawn = _plain_verdict(stage, verdict)  # a verdict stored by another version
        if drawn is not None:
            parts.append(drawn)
    return parts


def _plain_verdict(stage: StageResult, verdict: dict[str, Any]) -> RenderableType:
    """A verdict nobody taught us to draw: its plain fields, one a line."""
    lines = [
        Text(f"{name}: {value}")
        for name, value in verdict.items()
        if name != "warnings" and isinstance(value, str | int | float | bool | None)
    ]
    title = escape(f"{(stage.key or stage.kind).capitalize()}")
    return Panel(Group(*lines), title=title, title_align="left", border_style="cyan")


def vote_view(stage: StageResult, verdict: dict[str, Any]) -> RenderableType:
    """The tally as a bar chart: each answer, its votes and share; the winner marked."""
    tally: dict[str, int] = verdict.get("tally") or {}
    cast = sum(tally.values())
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True, max_width=40, overflow="ellipsis")
    grid.add_column(no_wrap=True)
    grid.add_column(justify="right", no_wrap=True)
    grid.add_column(justify="right", no_wrap=True)
    winner = verdict.get("winner")
    for answer, count in tally.items():
        filled = round(_BAR * count / cast) if cast else 0
        style = "green" if answer == winner else "blue"
        bar = Text("█" * filled, style=style) + Text("░" * (_BAR - filled), style="dim")
        name = Text(
            ("✓ " if answer == winner else "  ") + answer, style="bold" * (answer == winner)
        )
        grid.add_row(name, bar, str(count), f"{count / cast:.0%}" if cast else "-")
    quorum = verdict.get("quorum")
    need = "more than half" if quorum == 0.5 else f"{quorum:.0%}" if quorum is not None else "?"
    if winner is not None and verdict.get("quorum_met"):
        head = Text(f"Winner: {winner} · {verdict.get('share', 0):.0%} · quorum ({need}) met")
        head.stylize("bold green")
    else:
        head = Text(f"No decision: no quorum ({need})", style="bold yellow")
    method = "choices" if verdict.get("method") == "choices" else "exact match"
    counted = Text(
        f"{cast} votes cast ({method}) · {len(verdict.get('abstained') or [])} abstained · "
        f"{len(verdict.get('failed') or [])} without an answer",
        style="dim",
    )
    return Panel(Group(head, grid, counted), title="Vote", title_align="left", border_style="cyan")


def judge_view(stage: StageResult, verdict: dict[str, Any]) -> RenderableType:
    """The judge's pick (or tie), the labels it saw and its reasoning."""
    labels: dict[str, str] = verdict.get("labels") or {}
    winner = verdict.get("winner")
    if winner is not None:
        label = next((k for k, v in labels.items() if v == winner), "?")
        head = Text(f"Judge's pick: {winner} (shown as {label})", style="bold green")
    elif verdict.get("tie"):
        why = " (the two orders disagreed)" if verdict.get("inconsistent") else ""
        head = Text(f"Judge: a tie{why}", style="bold yellow")
    else:
        head = Text("Judge: no decision", style="bold yellow")
    shown = Text(
        "Candidates, blind: " + ", ".join(f"{k} = {v}" for k, v in labels.items()), style="dim"
    )
    parts: list[RenderableType] = [head, shown]
    if verdict.get("reasoning"):
        parts.append(Text(str(verdict["reasoning"])))
    return Panel(Group(*parts), title="Judge", title_align="left", border_style="cyan")


def review_view(stage: StageResult, verdict: dict[str, Any]) -> RenderableType:
    """The council's ranking: persona, Borda score, mean position, how many ranked it; then
    each reviewer's ranking (or that it abstained)."""
    table = Table(title="Peer ranking (Borda count)", title_justify="left", expand=False)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("Persona", style="bold", no_wrap=True)
    table.add_column("Borda", justify="right", no_wrap=True)
    table.add_column("Mean position", justify="right", no_wrap=True)
    table.add_column("Votes", justify="right", no_wrap=True)
    for place, row in enumerate(verdict.get("aggregate") or [], 1):
        mean = row.get("mean_position")
        table.add_row(
            str(place),
            Text(str(row.get("name"))),
            str(row.get("borda")),
            f"{mean:.2f}" if isinstance(mean, int | float) else "-",
            str(row.get("votes")),
        )
    lines: list[RenderableType] = [table]
    for review in verdict.get("reviews") or []:
        if review.get("abstained"):
            lines.append(Text(f"{review.get('reviewer')}: abstained", style="yellow"))
        else:
            ranking = " > ".join(map(str, review.get("ranking") or []))
            lines.append(Text(f"{review.get('reviewer')}: {ranking}", style="dim"))
    return Group(*lines)


_BAR = 24


def orchestrator_view(stage: StageResult, verdict: dict[str, Any]) -> RenderableType:
    """One line per turn of an orchestrator: whom it asked, or that it answered."""
    asked = [str(name).removeprefix("ask_") for name in verdict.get("tool_calls") or []]
    turn = verdict.get("turn", "?")
    if asked:
        return Text(f"↳ turn {turn}: asked {', '.join(asked)}", style="cyan")
    if verdict.get("answered"):
        return Text(f"↳ turn {turn}: answered", style="cyan")
    failed = [r for r in stage.calls if r.status != "ok"]
    return Text(f"↳ turn {turn}: {'failed' if failed else 'no answer'}", style="yellow")


def output_view(stage: StageResult, verdict: dict[str, Any]) -> RenderableType | None:
    """The run's own answer (an orchestrator's), on top; a flow's output is its stages'
    answers, shown with them (nothing to add)."""
    answers = [(name, text) for name, text in verdict.items() if isinstance(text, str)]
    if not answers:
        return None
    from rich.markdown import Markdown

    return Group(
        *(
            Panel(
                Markdown(text),
                title=f"[bold]Answer[/] · {escape(name)}",
                title_align="left",
                border_style="green",
            )
            for name, text in answers
        )
    )


VerdictView = Callable[[StageResult, dict[str, Any]], RenderableType | None]
VERDICT_VIEWS: dict[str, VerdictView] = {
    "vote": vote_view,
    "judge": judge_view,
    "review": review_view,
    "orchestrator": orchestrator_view,
    "output": output_view,
}


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
    """One line: answered, time, tokens, cost, status, and the run id when the history has
    it (an id ``runs show`` cannot find would only mislead). With ``width``, the longest of
    its forms that fits: the token counts lose their split into in and out, then words."""
    answers = _answers(report)
    answered = sum(1 for r in answers if r.status == "ok")
    usage = report.usage
    asked = f"{answered}/{len(answers)} answered"
    if not answers and _own_answers(report):
        asked = "answered without asking a persona"
    run = [f"run {report.run_id}"] if recorded else []
    split = f"({usage.input_tokens:,} in, {usage.output_tokens:,} out)"
    forms = [
        [f"{report.duration_s:.2f} s", f"{usage.total_tokens:,} tokens {split}", *run],
        [f"{report.duration_s:.2f} s", f"{usage.total_tokens:,} tokens", *run],
        [f"{report.duration_s:.1f} s", f"{usage.total_tokens:,} tok", *run],
    ]
    lines = [
        " · ".join([asked, duration, tokens, usd(report.cost_usd), report.status, *rest])
        for duration, tokens, *rest in forms
    ]
    return next((line for line in lines if width is None or len(line) <= width), lines[-1])


class _SummaryLine:
    """The summary line, as long as the console it is printed on lets it be."""

    def __init__(self, report: RunReport, recorded: bool) -> None:
        self.report, self.recorded = report, recorded

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield Text(_summary(self.report, self.recorded, options.max_width))


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
        several = len(report.stages) > 1
        for stage in report.stages:
            if several:
                out.append(Text(f"{stage.kind.replace('_', ' ')}", style="bold dim"))
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
