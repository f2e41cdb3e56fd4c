"""What the user reads, rendered into a fixed-width console without colour."""

from __future__ import annotations

import io
import time

import pytest
from rich.console import Console

from fanout.history import RunSummary
from fanout.models import (
    Agent,
    AgentError,
    AgentResult,
    CallResult,
    Endpoint,
    RunReport,
    StageResult,
    Usage,
)
from fanout.render import agents_table, print_error, render_report, report_text, runs_table
from fanout.shapes.synthesis import SynthesisVerdict


def synthesized(result: CallResult) -> SynthesisVerdict:
    """The verdict a synthesis stage draws from its call (as ``SynthesisStage.verdict``)."""
    missing = result.details.get("missing")
    return SynthesisVerdict(
        result.answer, result.name, result.model, list(missing) if isinstance(missing, list) else []
    )


def console(width: int) -> Console:
    return Console(width=width, file=io.StringIO(), color_system=None, legacy_windows=False)


def text_of(target: Console) -> str:
    file = target.file
    assert isinstance(file, io.StringIO)
    return file.getvalue()


def report(synthesis: CallResult | None = None) -> RunReport:
    later = (
        [StageResult("synthesis", "synthesis", [synthesis], synthesized(synthesis))]
        if synthesis
        else []
    )
    return RunReport(
        run_id="abc123",
        prompt="What is temperature?",
        started_at="2026-01-01T00:00:00.000+00:00",
        finished_at="2026-01-01T00:00:01.000+00:00",
        duration_s=1.0,
        stages=[StageResult("panel", "panel", holds_answers=True, calls=[
            AgentResult(
                "physicist",
                "gpt-4o-mini",
                "ok",
                "Temperature measures **mean kinetic energy**.\n\n- per particle\n- in kelvin",
                attempts=1,
                latency_s=0.8,
                usage=Usage(10, 20, 30),
            ),
            AgentResult(
                "chemist",
                "llama3",
                "error",
                error=AgentError("rate_limit", "HTTP 429: slow down", 429, True),
                attempts=4,
                latency_s=3.2,
            ),
            AgentResult("biologist", "gpt-4o", "cancelled"),
        ]), *later],
    )  # fmt: skip


@pytest.mark.parametrize("width", [80, 200])
def test_table_shows_each_persona_its_model_answer_and_figures(width: int) -> None:
    out = console(width)
    render_report(out, report())
    text = text_of(out)
    assert all(line and len(line) <= width for line in text.splitlines() if line.strip())
    for expected in ("physicist", "gpt-4o-mini", "llama3", "0.80 s", "30", "kelvin"):
        assert expected in text
    assert "**" not in text  # Markdown is rendered, not shown raw
    assert "• per particle" in text
    assert "rate_limit after 4 attempts" in text
    assert "cancelled" in text
    assert "1/3 answered" in text
    assert "30 tokens (10 in, 20 out)" in text


def test_long_answers_wrap_instead_of_being_cut() -> None:
    long = report()
    long.agents[0].answer = " ".join(f"word{i}" for i in range(300))
    out = console(80)
    render_report(out, long)
    text = text_of(out)
    assert "word0" in text and "word299" in text


def test_partial_synthesis_says_who_is_missing() -> None:
    synthesis = CallResult(
        "synthesizer",
        "gpt-4o",
        "ok",
        "Both agree it is about energy.",
        stage="synthesis",
        details={"partial": True, "sources": ["physicist"], "missing": ["chemist", "biologist"]},
    )
    out = console(120)
    render_report(out, report(synthesis))
    text = text_of(out)
    assert "Synthesis" in text
    assert "partial (no answer from chemist, biologist)" in text
    assert "Both agree it is about energy." in text


def test_agents_table_lists_the_panel_and_synthesizer() -> None:
    panel = [
        Agent("physicist", description="energy and forces"),
        Agent("local", model="llama3", endpoint=Endpoint("http://localhost:11434/v1")),
    ]
    out = console(100)
    out.print(agents_table(panel, Agent("synthesizer"), "agents.yaml"))
    text = text_of(out)
    for expected in ("physicist", "energy and forces", "api.openai.com", "localhost", "llama3"):
        assert expected in text
    assert "synthesizer" in text


def test_error_line_is_one_line_and_escapes_markup() -> None:
    out = console(40)
    print_error(out, "agents.yaml:3: unknown key '[bold]x[/bold]' in a rather long message")
    text = text_of(out)
    assert text.count("\n") == 1
    assert "[bold]x[/bold]" in text


def test_truncated_and_cut_short_answers_say_so() -> None:
    cut = report()
    cut.agents[0].finish_reason, cut.agents[0].truncated = "length", True
    cut.agents[2].answer, cut.agents[2].truncated = "Temperature is", True  # Ctrl-C mid-stream
    out = console(100)
    render_report(out, cut)
    text = text_of(out)
    assert "truncated: the answer reached max_tokens" in text
    assert "Temperature is" in text and "cut short" in text


def _synthesis() -> CallResult:
    return CallResult("synthesizer", "gpt-4o", "ok", "Both agree.", stage="synthesis")


def test_columns_put_the_answers_side_by_side_when_there_is_room() -> None:
    wide = console(150)
    render_report(wide, report(), "columns")
    rows = text_of(wide).splitlines()
    assert any("physicist" in r and "chemist" in r and "biologist" in r for r in rows)
    assert all(len(r) <= 150 for r in rows)
    narrow = console(79)  # not room for two answers of 40 columns: one under the other
    render_report(narrow, report(), "columns")
    rows = text_of(narrow).splitlines()
    assert not any("physicist" in r and "chemist" in r for r in rows)
    assert "• per particle" in text_of(narrow) and "1/3 answered" in rows[-1]


@pytest.mark.parametrize("view", ["table", "columns"])
def test_the_verdict_comes_above_the_answers(view: str) -> None:
    out = console(120)
    render_report(out, report(_synthesis()), view)
    text = text_of(out)
    assert text.index("Both agree.") < text.index("Temperature")


def test_markdown_view_is_the_answers_as_written_under_their_names() -> None:
    text = report_text(report(_synthesis()), "md")
    assert "\x1b" not in text and "│" not in text
    assert "## physicist\nTemperature measures **mean kinetic energy**.\n\n- per particle" in text
    assert "## chemist\n✗ rate_limit after 4 attempts: HTTP 429: slow down" in text
    assert text.index(
        "## Synthesis · synthesizer · gpt-4o\nMerged by synthesizer\n\nBoth agree."
    ) < text.index("## physicist")
    assert text.rstrip().splitlines()[-1].startswith("_panel 1/3 · synthesis 1/1")
    plain = report_text(report(), "text")
    assert "##" not in plain and "physicist (gpt-4o-mini)\nTemperature measures" in plain


def test_the_summary_names_the_run_only_when_it_was_recorded() -> None:
    assert "run abc123" in report_text(report())
    assert "abc123" not in report_text(report(), recorded=False)
    out = console(120)
    render_report(out, report(), "table", recorded=False)
    assert "abc123" not in text_of(out)


def test_runs_table_times_are_local_with_their_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "JST-9")
    time.tzset()
    try:
        out = console(120)
        run = RunSummary("abc123", "Why?", "completed", "2026-01-01T12:00:00.000+00:00",
                         None, 1, 1, 0.0)  # fmt: skip
        out.print(runs_table([run]))
        assert "2026-01-01 21:00 JST" in text_of(out)
    finally:
        monkeypatch.undo()
        time.tzset()


def test_errors_and_warnings_on_stderr_cannot_drive_the_terminal() -> None:
    from fanout.render import print_warning

    target = Console(width=200, file=io.StringIO(), color_system="truecolor", highlight=False)
    print_error(target, "HTTP 500: \x1b]0;pwned\x07 \x9b2J")
    print_warning(target, "warning: \x1b[2J gone")
    text = text_of(target)
    assert "␛]0;pwned␇" in text and "\\x9b2J" in text and "␛[2J gone" in text
    assert "\x9b" not in text and "\x1b]" not in text and "\x1b[2J" not in text
