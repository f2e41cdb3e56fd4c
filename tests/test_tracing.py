"""Trace ids end to end: one trace per run, a span per attempt, the W3C ``traceparent`` on every
request the test server receives, and the same ids in the document, the events and the history;
per-attempt timing recorded for every call."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fanout.tracing import parse_traceparent, traceparent
from tests.conftest import AgentsFile, Invoke
from tests.fakeserver import FakeOpenAI, Fault, Reply

QUICK_503 = Fault(503, headers={"retry-after-ms": "1"})  # retried at once


def headers_of(server: FakeOpenAI, model: str) -> list[tuple[str, str]]:
    """(trace id, span id) of each request for ``model``, in the order they arrived."""
    found = []
    for request in server.requests:
        if request.model == model:
            parent = parse_traceparent(request.headers["traceparent"])
            assert parent is not None, request.headers["traceparent"]
            found.append((parent.trace_id, parent.span_id))
    return found


def calls_of(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["call_id"]: c for s in document["stages"] for c in s["calls"]}


def test_every_attempt_carries_the_runs_trace_id_and_a_span_of_its_own(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.script("m-physicist", QUICK_503, Reply(text="second time lucky"))
    config = agents_file("physicist", "chemist")
    result = invoke("ask", "-c", config, "--json", "--synthesize", "Why?")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    trace_id = document["trace_id"]
    sent = {m: headers_of(server, m) for m in ("m-physicist", "m-chemist", "gpt-4o-mini")}
    assert {t for spans in sent.values() for t, _ in spans} == {trace_id}
    assert len(sent["m-physicist"]) == 2  # the 503, then the answer
    spans = [s for requests in sent.values() for _, s in requests]
    assert len(set(spans)) == len(spans) == 4
    assert document["span_id"] not in spans and document["parent_span_id"] is None

    calls = calls_of(document)
    physicist = calls["panel/physicist"]["timing"]
    assert [a["span_id"] for a in physicist["attempts"]] == [s for _, s in sent["m-physicist"]]
    assert physicist["attempts"][0]["error"] == "server_error"
    chemist = calls["panel/chemist"]["timing"]
    assert [a["span_id"] for a in chemist["attempts"]] == [s for _, s in sent["m-chemist"]]
    call_spans = {c["timing"]["span_id"] for c in calls.values()}
    assert len(call_spans) == 3 and not call_spans & set(spans)


def test_traceparent_flag_continues_the_callers_trace(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRACEPARENT", traceparent("1" * 32, "2" * 16))
    given = traceparent("a" * 32, "b" * 16)
    result = invoke("ask", "-c", agents_file("physicist"), "--json", "--traceparent", given, "Q")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["trace_id"] == "a" * 32  # the flag wins over the environment
    assert document["parent_span_id"] == "b" * 16
    ((trace_id, span_id),) = headers_of(server, "m-physicist")
    assert trace_id == "a" * 32 and span_id not in ("b" * 16, document["span_id"])


def test_traceparent_from_the_environment_is_continued(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRACEPARENT", traceparent("c" * 32, "d" * 16))
    result = invoke("ask", "-c", agents_file("physicist"), "--json", "Q")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert (document["trace_id"], document["parent_span_id"]) == ("c" * 32, "d" * 16)
    assert headers_of(server, "m-physicist")[0][0] == "c" * 32


def test_a_bad_traceparent_flag_is_a_usage_error(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    result = invoke("ask", "-c", agents_file("physicist"), "--traceparent", "00-xyz-01", "Q")
    assert result.exit_code == 2
    assert "--traceparent" in result.stderr
    assert server.count() == 0


@pytest.mark.parametrize(
    "value",
    [
        "00-" + "0" * 32 + "-" + "b" * 16 + "-01",  # all-zero trace id
        "00-" + "a" * 32 + "-" + "0" * 16 + "-01",  # all-zero span id
        "ff-" + "a" * 32 + "-" + "b" * 16 + "-01",  # the forbidden version
        "00-" + "a" * 32 + "-" + "b" * 16 + "-01-extra",  # version 00 has four fields
        "00-" + "a" * 31 + "-" + "b" * 16 + "-01",
        "",
    ],
)
def test_invalid_traceparents_are_refused(value: str) -> None:
    assert parse_traceparent(value) is None


def test_a_later_traceparent_version_is_read_for_its_ids() -> None:
    parent = parse_traceparent("01-" + "A" * 32 + "-" + "b" * 16 + "-01-what-comes-next")
    assert parent is not None and parent.trace_id == "a" * 32 and parent.span_id == "b" * 16


def test_jsonl_events_and_history_carry_the_trace_and_the_timing(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.script("m-physicist", QUICK_503, Reply(text="second time lucky"))
    result = invoke("ask", "-c", agents_file("physicist"), "--jsonl", "Why?")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    trace_id = lines[0]["trace_id"]
    assert {line["trace_id"] for line in lines} == {trace_id}
    (finished,) = [line for line in lines if line["type"] == "agent_finished"]
    timing = finished["result"]["timing"]
    assert [a["span_id"] for a in timing["attempts"]] == [
        s for _, s in headers_of(server, "m-physicist")
    ]
    document = lines[-1]["document"]
    shown = invoke("runs", "show", document["run_id"], "--json")
    stored = json.loads(shown.stdout)
    assert stored["trace_id"] == trace_id
    assert calls_of(stored)["panel/physicist"]["timing"] == timing


def test_each_attempt_records_its_phases_in_order(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.script("m-physicist", QUICK_503, Reply(text="streamed in pieces"))
    result = invoke("ask", "-c", agents_file("physicist"), "--json", "--stream", "Why?")
    assert result.exit_code == 0, result.output
    entry = json.loads(result.stdout)["agents"][0]
    timing = entry["timing"]
    first, second = timing["attempts"]
    assert first["attempt"] == 1 and second["attempt"] == 2
    assert first["error"] == "server_error" and first["backoff_s"] == pytest.approx(0.001)
    assert "error" not in second and "backoff_s" not in second
    for attempt in (first, second):
        phases = [attempt[k] for k in ("queued_s", "slot_s", "limiter_s", "sent_s", "end_s")]
        assert phases == sorted(phases)
    assert first["first_token_s"] is None  # the 503 sent nothing
    assert second["sent_s"] <= second["first_token_s"] <= second["end_s"]
    # (less the event loop's clock resolution: a timer may fire that much early)
    assert second["queued_s"] >= first["end_s"] + first["backoff_s"] - 1e-3
    assert timing["queued_s"] <= first["queued_s"] and second["end_s"] <= timing["end_s"]
    # The figures the table shows come from the same clock readings.
    assert entry["latency_s"] == pytest.approx(timing["end_s"] - first["slot_s"], abs=1e-3)
    assert entry["ttft_s"] == pytest.approx(second["first_token_s"] - second["sent_s"], abs=1e-3)
