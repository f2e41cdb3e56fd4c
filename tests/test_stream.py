"""Streaming and the ``--jsonl`` event stream, end to end against the test server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import AgentsFile, Invoke
from tests.fakeserver import FakeOpenAI, Fault, Reply


def jsonl_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_answers_are_streamed_with_usage_when_asked(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.default = Reply(text="streamed in pieces")
    result = invoke("ask", "-c", agents_file("physicist"), "--json", "--stream", "Why?")
    assert result.exit_code == 0, result.output
    body = server.requests[0].body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    entry = json.loads(result.stdout)["agents"][0]
    assert entry["answer"] == "streamed in pieces"
    assert entry["ttft_s"] is not None
    assert entry["usage"]["output_tokens"] == 3
    assert entry["usage_estimated"] is False


def test_streaming_is_on_by_default_only_where_someone_watches(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    config = agents_file("physicist")
    assert invoke("ask", "-c", config, "--json", "Why?").exit_code == 0
    assert invoke("ask", "-c", config, "--jsonl", "Why?").exit_code == 0
    piped, jsonl = server.requests
    assert "stream" not in piped.body  # a pipe shows nothing live: whole answers cost less
    assert jsonl.body["stream"] is True


def test_no_stream_asks_for_the_whole_answer(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    result = invoke("ask", "-c", agents_file("physicist"), "--json", "--no-stream", "Why?")
    assert result.exit_code == 0, result.output
    assert "stream" not in server.requests[0].body
    assert json.loads(result.stdout)["agents"][0]["ttft_s"] is None


def test_stream_without_usage_falls_back_to_an_estimate(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.default = Reply(text="no usage from this server", stream_usage=False)
    result = invoke("ask", "-c", agents_file("physicist"), "--json", "--stream", "Why?")
    assert result.exit_code == 0, result.output
    entry = json.loads(result.stdout)["agents"][0]
    assert entry["usage_estimated"] is True
    assert entry["usage"]["output_tokens"] > 0


def test_server_that_ignores_stream_still_answers(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.default = Reply(text="whole answer", can_stream=False)
    result = invoke("ask", "-c", agents_file("physicist"), "--json", "--stream", "Why?")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["output"] == {"physicist": "whole answer"}


def test_server_that_rejects_stream_gets_asked_again_without_it(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    rejection = {"error": {"message": "stream_options is not supported", "type": "invalid"}}
    server.script("m-physicist", Fault(400, body=rejection), Reply(text="fine, whole"))
    result = invoke("ask", "-c", agents_file("physicist"), "--json", "--stream", "Why?")
    assert result.exit_code == 0, result.output
    first, second = server.requests
    assert first.body.get("stream") is True
    assert "stream" not in second.body
    entry = json.loads(result.stdout)["agents"][0]
    assert (entry["answer"], entry["attempts"]) == ("fine, whole", 1)


def test_jsonl_lines_tell_the_run_as_it_happens(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, tmp_path: Path
) -> None:
    server.script("m-chemist", Fault(503, headers={"retry-after-ms": "1"}))
    config = agents_file(synthesizer={"model": "m-synth"})
    target = tmp_path / "doc.json"
    result = invoke("ask", "-c", config, "--jsonl", "-s", "-o", target, "Why?")
    assert result.exit_code == 0, result.output
    lines = jsonl_lines(result.stdout)
    assert all(
        {"schema_version", "run_id", "trace_id", "ts", "type"} <= set(line)
        and line["schema_version"] == 2
        for line in lines
    )
    assert len({line["run_id"] for line in lines}) == 1
    assert lines[0]["type"] == "run_started"
    assert lines[0]["agents"] == ["physicist", "chemist", "biologist"]
    assert lines[-1]["type"] == "run_finished"
    assert lines[-1]["document"] == json.loads(target.read_text())
    for name in ("physicist", "chemist", "biologist"):
        kinds = [line["type"] for line in lines if line.get("agent") == name]
        assert kinds[0] == "agent_started"
        assert kinds[-1] == "agent_finished"
        assert set(kinds[1:-1]) <= {"retry"}
    retry = next(line for line in lines if line["type"] == "retry")
    assert (retry["agent"], retry["attempt"], retry["reason"]) == ("chemist", 2, "503")
    finished = next(
        line for line in lines if line["type"] == "agent_finished" and line["agent"] == "chemist"
    )
    assert finished["result"] == lines[-1]["document"]["agents"][1]
    kinds = [line["type"] for line in lines]
    assert kinds.index("synthesis_started") > max(
        i for i, k in enumerate(kinds) if k == "agent_finished"
    )
    assert kinds[-3:-1] == ["synthesis_finished", "stage_finished"]  # then what it decided
    assert lines[-2]["summary"]["answer"] == lines[-1]["document"]["synthesis"]["answer"]
    assert not any(k == "delta" for k in kinds)


def test_jsonl_deltas_carry_the_streamed_text(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.default = Reply(text="alpha beta gamma")
    result = invoke("ask", "-c", agents_file("physicist"), "--jsonl", "--jsonl-deltas", "Why?")
    assert result.exit_code == 0, result.output
    lines = jsonl_lines(result.stdout)
    deltas = [line["text"] for line in lines if line["type"] == "delta"]
    assert "".join(deltas) == "alpha beta gamma"
    assert len(deltas) == 3
    kinds = [line["type"] for line in lines]
    assert kinds.index("agent_started") < kinds.index("delta") < kinds.index("agent_finished")


def test_json_and_jsonl_together_is_a_usage_error(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    result = invoke("ask", "-c", agents_file(), "--json", "--jsonl", "Why?")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "--json and --jsonl" in result.stderr
    assert server.count() == 0


def test_piped_output_has_no_live_view(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    result = invoke("ask", "-c", agents_file("physicist"), "Why?")
    assert result.exit_code == 0
    assert "streaming" not in result.stdout
    assert "╭─ physicist" not in result.stdout
    assert "m-physicist says: Why?" in result.stdout
