"""``fanout runs export``: a stored run as a Perfetto (Chrome trace-event) trace and as one
self-contained HTML page."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from fanout.perfetto import perfetto_trace
from tests.conftest import AgentsFile, Invoke, assert_usage_error
from tests.fakeserver import FakeOpenAI, Fault, Reply
from tests.test_timeline import sample_report

QUICK_503 = Fault(503, headers={"retry-after-ms": "1"})


def run_and_store(invoke: Invoke, *args: str | Path) -> dict[str, Any]:
    result = invoke("ask", "--json", *args)
    assert result.exit_code in (0, 3), result.output
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def slices(trace: dict[str, Any]) -> dict[int, list[dict[str, Any]]]:
    by_track: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for event in trace["traceEvents"]:
        if event["ph"] == "X":
            by_track[event["tid"]].append(event)
    return by_track


def assert_nested(events: list[dict[str, Any]]) -> None:
    """Slices on one track either nest or follow each other, as trace viewers require."""
    stack: list[int] = []
    for event in sorted(events, key=lambda e: (e["ts"], -e["dur"])):
        while stack and stack[-1] <= event["ts"]:
            stack.pop()
        end = event["ts"] + event["dur"]
        assert not stack or end <= stack[-1], event
        stack.append(end)


def test_perfetto_export_has_a_track_per_call_and_the_recorded_latencies(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, tmp_path: Path
) -> None:
    server.script("m-chemist", QUICK_503, Reply(text="second try"))
    config = agents_file("physicist", "chemist")
    document = run_and_store(invoke, "-c", config, "--stream", "--synthesize", "Why?")
    out = tmp_path / "trace.json"
    result = invoke("runs", "export", document["run_id"], "--format", "perfetto", "-o", out)
    assert result.exit_code == 0, result.output
    trace = json.loads(out.read_text(encoding="utf-8"))

    names = {
        e["tid"]: e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "thread_name"
    }
    calls = {c["call_id"]: c for s in document["stages"] for c in s["calls"]}
    assert sorted(names.values()) == sorted([*calls, "run"])  # one track per call, and the run
    tracks = slices(trace)
    for tid, call_id in names.items():
        assert_nested(tracks[tid])
        if call_id == "run":
            continue
        entry = calls[call_id]
        (call,) = [e for e in tracks[tid] if e["cat"] == entry["stage"]]
        assert call["name"] == entry["name"]
        assert call["dur"] / 1e6 == pytest.approx(entry["latency_s"], abs=1e-3)
        attempts = [e for e in tracks[tid] if e["cat"] == "attempt"]
        assert len(attempts) == entry["attempts"]
        assert [a["args"]["span_id"] for a in attempts] == [
            a["span_id"] for a in entry["timing"]["attempts"]
        ]
        firsts = [e for e in trace["traceEvents"] if e["ph"] == "i" and e["tid"] == tid]
        assert len(firsts) == 1  # streamed: the answering attempt's first token
        assert firsts[0]["ts"] / 1e6 == pytest.approx(
            entry["timing"]["attempts"][-1]["first_token_s"], abs=1e-6
        )
    chemist = next(t for t, n in names.items() if n == "panel/chemist")
    kinds = {e["cat"] for e in tracks[chemist]}
    assert {"backoff", "first_token", "streaming", "waiting"} <= kinds
    run_slice = next(e for e in tracks[0] if e["cat"] == "run")
    assert run_slice["dur"] / 1e6 >= max(c["latency_s"] for c in calls.values())


def test_perfetto_slices_match_the_recorded_phases_exactly() -> None:
    trace = perfetto_trace(sample_report())
    tracks = slices(trace)
    names = {
        e["tid"]: e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "thread_name"
    }
    chemist = next(t for t, n in names.items() if n == "panel/chemist")
    got = [(e["name"], e["ts"], e["dur"]) for e in tracks[chemist]]
    assert got == [
        ("chemist", 0, 2_300_000),
        ("attempt 1", 0, 300_000),
        ("until first token", 0, 300_000),
        ("retry back-off", 300_000, 500_000),
        ("attempt 2", 800_000, 1_500_000),
        ("until first token", 800_000, 300_000),
        ("streaming", 1_100_000, 1_200_000),
    ]
    for events in tracks.values():
        assert_nested(events)


def test_html_export_is_one_page_with_nothing_to_fetch(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.script("m-physicist", Reply(text="<script>alert('x')</script> & more"))
    server.script("m-chemist", Fault(400, body={"error": {"message": "no <b>way</b>"}}))
    config = agents_file("physicist", "chemist")
    document = run_and_store(invoke, "-c", config, "--synthesize", "Why <this>?")
    result = invoke("runs", "export", document["run_id"][:6], "--format", "html")
    assert result.exit_code == 0, result.output
    page = result.stdout
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    # Nothing to load: no script, stylesheet link, image, frame or URL of any kind.
    assert not re.search(r"<(script|link|img|iframe|object)\b|src=|href=|url\(|https?:", page)
    assert "&lt;script&gt;alert('x')&lt;/script&gt; &amp; more" in page  # Markdown: text
    assert "Why &lt;this&gt;?" in page and "no &lt;b&gt;way&lt;/b&gt;" in page
    assert page.count('class="row"') == 1 + 3  # the axis, then physicist, chemist, synthesizer
    assert "Synthesis" in page and document["trace_id"] in page


def test_export_without_a_format_is_one_line_naming_the_choices(invoke: Invoke) -> None:
    # It printed "Choose from:\n\tperfetto,\n\thtml" literally.
    assert_usage_error(
        invoke("runs", "export", "3f9c"), "Missing option '--format'", "one of 'perfetto', 'html'"
    )


def test_export_refuses_an_unknown_format(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    document = run_and_store(invoke, "-c", agents_file("physicist"), "Why?")
    result = invoke("runs", "export", document["run_id"], "--format", "svg")
    assert result.exit_code == 2
    assert "--format" in result.stderr
