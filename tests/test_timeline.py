"""The terminal timeline: one row per call on one time axis, rendered into fixed-width consoles,
and through ``ask --timeline`` and ``runs show --timeline``."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from fanout.models import AttemptTiming, CallResult, CallTiming, RunReport, StageResult
from fanout.render import timeline
from tests.conftest import AgentsFile, Invoke
from tests.fakeserver import FakeOpenAI, Fault, Reply


def attempt(
    n: int,
    queued: float,
    sent: float,
    first_token: float | None,
    end: float,
    error: str | None = None,
    backoff: float | None = None,
) -> AttemptTiming:
    span = f"{n:016x}"
    return AttemptTiming(n, span, queued, queued, sent, sent, first_token, end, error, backoff)


def sample_report() -> RunReport:
    """Three personas (one retried after a 503, one refused) and a synthesis, over 3 s."""
    physicist = CallResult(
        "physicist", "m", "ok", answer="a", attempts=1, latency_s=1.2, ttft_s=0.4,
        timing=CallTiming("a" * 16, 0.0, [attempt(1, 0.0, 0.0, 0.4, 1.2)], 1.2),
    )  # fmt: skip
    chemist = CallResult(
        "chemist", "m", "ok", answer="b", attempts=2, latency_s=2.3, ttft_s=0.3,
        timing=CallTiming("b" * 16, 0.0, [
            attempt(1, 0.0, 0.0, None, 0.3, "server_error", 0.5),
            attempt(2, 0.8, 0.8, 1.1, 2.3),
        ], 2.3),
    )  # fmt: skip
    biologist = CallResult(
        "biologist", "m", "error", attempts=1, latency_s=1.0,
        timing=CallTiming("c" * 16, 0.0, [attempt(1, 0.0, 0.6, None, 1.0, "auth")], 1.0),
    )  # fmt: skip
    synthesizer = CallResult(
        "synthesizer", "m", "ok", answer="c", attempts=1, latency_s=0.7, ttft_s=0.2,
        stage="synthesis", role="synthesizer",
        timing=CallTiming("d" * 16, 2.3, [attempt(1, 2.3, 2.4, 2.6, 3.0)], 3.0),
    )  # fmt: skip
    stages = [
        StageResult("panel", "panel", [physicist, chemist, biologist]),
        StageResult("synthesis", "synthesis", [synthesizer]),
    ]
    return RunReport("r1", "Why?", "t0", "t1", 3.0, stages)


def rendered(width: int) -> str:
    out = io.StringIO()
    Console(width=width, file=out, color_system=None).print(timeline(sample_report()))
    return out.getvalue()


SIXTY = """\
            0s                   3.00s   ttft   total tries
panel
physicist   ---=======                  0.40s   1.20s     1
chemist     --x~~~---===========        0.30s   2.30s     2
biologist   .....---x                       -   1.00s     1
synthesis
synthesizer                    .--====  0.20s   0.70s     1
. waiting  ~ retry back-off  - until first token
= streaming  x failed attempt
"""


def test_timeline_at_60_columns_draws_every_phase_on_one_axis() -> None:
    assert rendered(60) == SIXTY


@pytest.mark.parametrize("width", [60, 100, 200])
def test_timeline_fits_the_width_with_one_row_per_call(width: int) -> None:
    lines = rendered(width).splitlines()
    assert max(len(line) for line in lines) <= width
    rows = {line.split()[0]: line for line in lines if line.endswith(("1", "2"))}
    assert set(rows) == {"physicist", "chemist", "biologist", "synthesizer"}
    # One axis: the bars of every row start in the same column, and the synthesis (which
    # began when the panel ended) starts right of where every persona started.
    column = lines[0].index("0s")
    assert all(len(line) > column for line in rows.values())
    assert rows["synthesizer"].index(".") > rows["chemist"].index("-")
    assert "~" in rows["chemist"] and "x" in rows["chemist"]
    assert rows["chemist"].split()[-3:] == ["0.30s", "2.30s", "2"]


def test_wider_consoles_get_longer_bars() -> None:
    def bar_of(text: str) -> int:
        row = next(line for line in text.splitlines() if line.startswith("physicist"))
        return sum(row.count(c) for c in ".-=~x")

    assert bar_of(rendered(60)) < bar_of(rendered(100)) < bar_of(rendered(200))


def test_colour_terminals_get_styled_glyphs_and_no_color_gets_ascii() -> None:
    out = io.StringIO()
    Console(width=100, file=out, color_system="truecolor", force_terminal=True).print(
        timeline(sample_report())
    )
    styled = out.getvalue()
    assert "█" in styled and "▒" in styled and "╌" in styled and "✗" in styled
    assert "\x1b[" in styled
    out = io.StringIO()  # NO_COLOR on a colour terminal
    Console(
        width=100, file=out, color_system="truecolor", force_terminal=True, no_color=True
    ).print(timeline(sample_report()))
    plain = out.getvalue()
    assert not {"█", "▒", "╌", "✗", "░"} & set(plain)
    assert "=" in plain and "~" in plain and "x" in plain
    assert "\x1b[3" not in plain  # no colour codes


def test_a_call_without_timing_says_so() -> None:
    report = sample_report()
    report.stages[0].calls[0].timing = None
    out = io.StringIO()
    Console(width=80, file=out, color_system=None).print(timeline(report))
    assert "(no timing recorded)" in out.getvalue()


def test_ask_timeline_follows_the_table_and_runs_show_draws_it_again(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.script("m-chemist", Fault(503, headers={"retry-after-ms": "1"}), Reply())
    config = agents_file("physicist", "chemist")
    result = invoke("ask", "-c", config, "--timeline", "Why?")
    assert result.exit_code == 0, result.output
    table, _, drawn = result.stdout.partition("ttft   total tries")
    assert "m-physicist says: Why?" in table
    rows = {line.split()[0]: line.split() for line in drawn.splitlines()[1:3]}
    assert rows["chemist"][-1] == "2" and rows["physicist"][-1] == "1"
    assert "x" in "".join(rows["chemist"][1:-3])  # the 503 ended its first attempt

    document = json.loads(invoke("runs", "show", "--json", _last_run(invoke)).stdout)
    shown = invoke("runs", "show", document["run_id"], "--timeline")
    assert shown.exit_code == 0, shown.output
    assert "ttft   total tries" in shown.stdout and "m-chemist says: Why?" in shown.stdout


def test_tries_counts_every_attempt_the_bar_draws(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, tmp_path: Path
) -> None:
    # a's retry meets the endpoint b's 401 closed: refused before it is sent, it was drawn as a
    # failed attempt (x~~~x) beside "tries 1".
    server.script("m-a", Fault(503, headers={"retry-after": "1"}), Reply())
    server.script("m-b", Fault(401, latency=0.3))  # once a's first request is out
    config = tmp_path / "agents.yaml"
    local = server.base_url.replace("127.0.0.1", "localhost")  # a key is checked, not needed
    document = {"defaults": {"base_url": local}, "agents": [{"name": "a", "model": "m-a"},
                {"name": "b", "model": "m-b"}]}  # fmt: skip
    config.write_text(json.dumps(document), encoding="utf-8")
    result = invoke("ask", "-c", config, "--json", "Why?")
    (entry,) = [a for a in json.loads(result.stdout)["agents"] if a["name"] == "a"]
    assert [t.get("error") for t in entry["timing"]["attempts"]] == ["server_error", "auth"]
    shown = invoke("runs", "show", _last_run(invoke), "--timeline")
    row = next(line for line in shown.stdout.splitlines() if line.startswith("a "))
    *bar, _ttft, _total, tries = row.split()
    assert "".join(bar[1:]).count("x") == 2 and tries == "2", row


def test_timeline_with_json_goes_to_stderr(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    result = invoke("ask", "-c", agents_file("physicist"), "--json", "--timeline", "Why?")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)  # stdout is still exactly the document
    assert "ttft   total tries" in result.stderr
    shown = invoke("runs", "show", document["run_id"], "--json", "--timeline")
    assert json.loads(shown.stdout) == document
    assert "physicist" in shown.stderr


def _last_run(invoke: Invoke) -> str:
    runs = json.loads(invoke("runs", "list", "--json").stdout)["runs"]
    return str(runs[0]["run_id"])
