"""Everything the user sees in a terminal: the only module that imports Rich.

stdout carries the answers (table or JSON); progress, retries and errors go to stderr.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import IO

from rich.console import Console, Group, RenderableType
from rich.markdown import Markdown
from rich.markup import escape
from rich.panel import Panel
from rich.status import Status
from rich.table import Table
from rich.text import Text

from fanout.models import Agent, AgentResult, RunReport
from fanout.retry import RetryEvent

_STATUS_STYLE = {"ok": "green", "error": "red", "cancelled": "yellow", "skipped": "yellow"}


def make_console(file: IO[str] | None = None, *, stderr: bool = False) -> Console:
    return Console(file=file, stderr=stderr, highlight=False, soft_wrap=False)


def print_error(console: Console, message: str) -> None:
    """The one-line error every failure ends in."""
    console.print(f"[bold red]fanout: error:[/] {escape(message)}", soft_wrap=True)


def results_table(report: RunReport) -> Table:
    """One row per persona, in panel order: who, which model, the answer, time and tokens."""
    table = Table(show_lines=True, expand=True, title_justify="left", caption_justify="left")
    table.add_column("Persona", style="bold", no_wrap=True, max_width=24)
    table.add_column("Answer", ratio=1, overflow="fold")
    table.add_column("Latency", justify="right", no_wrap=True)
    table.add_column("Tokens", justify="right", no_wrap=True)
    for result in report.agents:
        table.add_row(*_row(result))
    table.caption = _summary(report)
    return table


def synthesis_panel(report: RunReport) -> Panel | None:
    """The merged answer, titled with its model and whether it is partial."""
    synthesis = report.synthesis
    if synthesis is None:
        return None
    title = f"Synthesis · {synthesis.name} · {synthesis.model}"
    border = "cyan"
    if synthesis.partial and synthesis.status == "ok":
        title += f" · partial (no answer from {', '.join(synthesis.missing)})"
        border = "yellow"
    body = _answer_cell(synthesis)
    if synthesis.status != "ok":
        border = "red"
    return Panel(body, title=title, title_align="left", border_style=border)


def render_report(console: Console, report: RunReport) -> None:
    """The full human-readable result: table, then synthesis."""
    parts: list[RenderableType] = [results_table(report)]
    panel = synthesis_panel(report)
    if panel is not None:
        parts.append(panel)
    console.print(Group(*parts))


def agents_table(agents: Sequence[Agent], synthesizer: Agent, source: str) -> Table:
    """``fanout agents``: the panel at a glance."""
    table = Table(title=f"Panel from {source}", title_justify="left", expand=False)
    table.add_column("Name", style="bold", no_wrap=True)
    table.add_column("Model", no_wrap=True)
    table.add_column("Endpoint", no_wrap=True)
    table.add_column("Description")
    for agent in agents:
        table.add_row(agent.name, agent.model, agent.endpoint.host, agent.description)
    table.add_row(
        Text(synthesizer.name, style="dim"),
        Text(synthesizer.model, style="dim"),
        Text(synthesizer.endpoint.host, style="dim"),
        Text("merges the answers with --synthesize", style="dim"),
    )
    return table


class ProgressDisplay:
    """A spinner and retry notices on stderr while the panel answers (a ``RunObserver``)."""

    def __init__(self, console: Console, total: int) -> None:
        self._console = console
        self._total = total
        self._done = 0
        self._status: Status | None = None

    def __enter__(self) -> ProgressDisplay:
        if self._console.is_terminal:
            self._status = self._console.status(self._message(), spinner="dots")
            self._status.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._status is not None:
            self._status.stop()

    def agent_started(self, agent: Agent) -> None:
        self._refresh()

    def agent_retrying(self, agent: Agent, event: RetryEvent) -> None:
        reason = str(event.error.status_code or event.error.kind)
        self._console.print(
            f"[yellow]{escape(agent.name)}[/]: {escape(reason)}, retrying in "
            f"{event.wait_s:.1f} s (attempt {event.attempt + 1}/{event.max_attempts})",
            soft_wrap=True,
        )

    def agent_finished(self, result: AgentResult) -> None:
        self._done += 1
        if result.status == "error" and result.error is not None:
            self._console.print(
                f"[red]{escape(result.name)}[/]: failed: {escape(result.error.message)}",
                soft_wrap=True,
            )
        self._refresh()

    def _message(self) -> str:
        return f"Asking {self._total} persona{'s' if self._total != 1 else ''}… {self._done} done"

    def _refresh(self) -> None:
        if self._status is not None:
            self._status.update(self._message())


def _row(result: AgentResult) -> tuple[RenderableType, ...]:
    persona = Text.assemble((result.name, "bold"), "\n", (result.model, "dim"))
    latency = f"{result.latency_s:.2f} s" if result.latency_s is not None else "-"
    tokens = f"{result.usage.total_tokens:,}" if result.usage.total_tokens else "-"
    return persona, _answer_cell(result), latency, tokens


def _answer_cell(result: AgentResult) -> RenderableType:
    if result.status == "ok":
        return Markdown(result.answer or "")
    style = _STATUS_STYLE.get(result.status, "red")
    if result.error is not None:
        attempts = f" after {result.attempts} attempts" if result.attempts > 1 else ""
        return Text(f"✗ {result.error.type}{attempts}: {result.error.message}", style=style)
    return Text(result.status, style=style)


def _summary(report: RunReport) -> str:
    answered = sum(1 for r in report.agents if r.status == "ok")
    usage = report.usage
    return (
        f"{answered}/{len(report.agents)} answered · {report.duration_s:.2f} s · "
        f"{usage.total_tokens:,} tokens ({usage.input_tokens:,} in, {usage.output_tokens:,} out)"
        f" · {report.status} · run {report.run_id}"
    )
