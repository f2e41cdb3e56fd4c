"""``fanout batch``: prompts x personas as JSON lines, resumable, with the limits of ``ask``."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import AgentsFile, Invoke
from tests.fakeserver import FakeOpenAI, Fault, Hang, Reply


def prompts(tmp_path: Path, content: str, name: str = "q.txt") -> Path:
    source = tmp_path / name
    source.write_text(content)
    return source


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize(
    ("name", "content", "ids"),
    [
        ("q.txt", "What is heat?\n\nWhat is light?\n", ["1", "3"]),
        ("q.jsonl", '{"id": "h", "prompt": "What is heat?"}\n"What is light?"\n', ["h", "2"]),
        ("q.csv", "id,prompt\nh,What is heat?\n,What is light?\n", ["h", "2"]),
    ],
)
def test_every_prompt_meets_every_persona(
    server: FakeOpenAI,
    agents_file: AgentsFile,
    invoke: Invoke,
    tmp_path: Path,
    name: str,
    content: str,
    ids: list[str],
) -> None:
    source = prompts(tmp_path, content, name)
    out = tmp_path / "out.jsonl"
    result = invoke("batch", source, "-c", agents_file("a", "b"), "-o", out)
    assert result.exit_code == 0, result.output
    lines = lines_of(out)
    assert len(lines) == 4
    assert {(line["id"], line["name"]) for line in lines} == {
        (i, n) for i in ids for n in ("a", "b")
    }
    heat = next(line for line in lines if line["id"] == ids[0] and line["name"] == "a")
    assert heat["prompt"] == "What is heat?"
    assert heat["answer"] == "m-a says: What is heat?"
    assert heat["status"] == "ok" and heat["schema_version"] == 2
    assert server.count() == 4
    assert "4/4 done" in result.stderr


def test_results_go_to_stdout_without_an_output_file(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, tmp_path: Path
) -> None:
    source = prompts(tmp_path, "one\ntwo\n")
    result = invoke("batch", source, "-c", agents_file("a"))
    assert result.exit_code == 0, result.output
    assert sorted(json.loads(line)["prompt"] for line in result.stdout.splitlines()) == [
        "one",
        "two",
    ]


def test_a_rerun_asks_only_what_is_not_answered_yet(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, tmp_path: Path
) -> None:
    source = prompts(tmp_path, "one\ntwo\nthree\n")
    out = tmp_path / "out.jsonl"
    config = agents_file("a", "b")
    server.script("m-b", Reply(), Fault(400))  # b fails on one of the prompts
    first = invoke("batch", source, "-c", config, "-o", out, "--concurrency", "1")
    assert first.exit_code == 3, first.output
    assert server.count() == 6
    server.reset()
    second = invoke("batch", source, "-c", config, "-o", out)
    assert second.exit_code == 0, second.output
    assert [r.model for r in server.requests] == ["m-b"]
    ok = {(line["id"], line["name"]) for line in lines_of(out) if line["status"] == "ok"}
    assert len(ok) == 6
    assert "5 from an earlier run" in second.stderr


def test_a_killed_batch_resumes_where_it_stopped(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, tmp_path: Path
) -> None:
    source = tmp_path / "q.jsonl"
    source.write_text(
        "".join(json.dumps({"id": f"p{i}", "prompt": f"q{i}"}) + "\n" for i in range(5))
    )
    out = tmp_path / "out.jsonl"
    config = agents_file("a")
    server.script("m-a", Reply(), Reply(), Hang())  # the third request never answers
    command = ["batch", str(source), "-c", str(config), "-o", str(out), "--concurrency", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "fanout", *command], stderr=subprocess.PIPE)
    try:
        server.wait_for_requests(3)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert [line["id"] for line in lines_of(out)] == ["p0", "p1"]
    server.reset()
    result = invoke("batch", source, "-c", config, "-o", out)
    assert result.exit_code == 0, result.output
    assert sorted(r.body["messages"][-1]["content"] for r in server.requests) == ["q2", "q3", "q4"]
    assert sorted(line["id"] for line in lines_of(out)) == ["p0", "p1", "p2", "p3", "p4"]


def test_synthesis_per_prompt(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, tmp_path: Path
) -> None:
    source = prompts(tmp_path, "one\ntwo\n")
    out = tmp_path / "out.jsonl"
    config = agents_file("a", "b", synthesizer={"model": "m-synth"})
    result = invoke("batch", source, "-c", config, "-o", out, "-s")
    assert result.exit_code == 0, result.output
    syntheses = [line for line in lines_of(out) if line["synthesis"]]
    assert sorted(line["id"] for line in syntheses) == ["1", "2"]
    assert all(line["sources"] == ["a", "b"] for line in syntheses)
    assert server.count("m-synth") == 2


def test_the_rate_limit_holds_across_prompts(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, tmp_path: Path
) -> None:
    source = prompts(tmp_path, "one\ntwo\nthree\nfour\n")
    result = invoke("batch", source, "-c", agents_file("a"), "--rpm", "120")
    assert result.exit_code == 0, result.output
    starts = sorted(r.started for r in server.requests)
    assert starts[2] - starts[0] >= 0.4  # a burst of 2, then one start every 0.5 s
    assert starts[3] - starts[1] >= 0.4


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("q.csv", "question\nwhy?\n", "'prompt' column"),
        ("q.jsonl", '{"prompt": "ok"}\n{not json\n', "q.jsonl:2: not JSON"),
        ("q.jsonl", '{"id": 1, "prompt": "a"}\n{"id": 1, "prompt": "b"}\n', "appears twice"),
        ("q.jsonl", '{"id": 1}\n', 'needs a non-empty "prompt"'),
        ("q.pdf", "%PDF", "a batch file is .jsonl, .txt or .csv"),
    ],
    ids=["no-prompt-column", "bad-json", "duplicate-id", "no-prompt", "format"],
)
def test_bad_input_stops_before_any_call(
    server: FakeOpenAI,
    agents_file: AgentsFile,
    invoke: Invoke,
    tmp_path: Path,
    name: str,
    content: str,
    message: str,
) -> None:
    source = prompts(tmp_path, content, name)
    result = invoke("batch", source, "-c", agents_file("a"))
    assert result.exit_code == 2
    assert result.stdout == ""
    assert message in result.stderr
    assert server.count() == 0


def test_a_missing_batch_file_is_a_usage_error(agents_file: AgentsFile, invoke: Invoke) -> None:
    result = invoke("batch", "nope.txt", "-c", agents_file("a"))
    assert result.exit_code == 2
    assert "nope.txt: no such file" in result.stderr


def test_via_the_batch_api_results_come_back_as_the_same_lines(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, tmp_path: Path
) -> None:
    source = prompts(
        tmp_path,
        '{"id": "h", "prompt": "What is heat?"}\n{"id": "l", "prompt": "Light?"}\n',
        "q.jsonl",
    )
    out = tmp_path / "out.jsonl"
    server.script("m-b", Reply(), Fault(400))
    config = agents_file("a", "b", extra={"a": {"temperature": 0.2}})
    args = ["batch", source, "-c", config, "-o", out, "--via", "openai-batch"]
    result = invoke(*args, "--poll-interval", "0.01")
    assert result.exit_code == 3, result.output
    assert [r.path for r in server.requests] == ["batch"] * 4  # no direct chat calls
    assert len(server.batches) == 1
    lines = {(line["id"], line["name"]): line for line in lines_of(out)}
    assert set(lines) == {("h", "a"), ("h", "b"), ("l", "a"), ("l", "b")}
    assert lines[("h", "a")]["answer"] == "m-a says: What is heat?"
    assert lines[("h", "a")]["usage"]["total_tokens"] > 0
    assert lines[("l", "b")]["status"] == "error"
    assert lines[("l", "b")]["error"]["status_code"] == 400
    sent = next(r for r in server.requests if r.model == "m-a")
    assert sent.body["temperature"] == 0.2
    assert not out.with_name("out.jsonl.batches.json").exists()
    server.reset()
    again = invoke(*args, "--poll-interval", "0.01")  # only the failed one goes again
    assert again.exit_code == 0, again.output
    assert [r.model for r in server.requests] == ["m-b"]


def test_a_batch_api_job_is_picked_up_again_by_id_not_paid_twice(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, tmp_path: Path
) -> None:
    source = prompts(tmp_path, "one\ntwo\n")
    out = tmp_path / "out.jsonl"
    config = agents_file("a")
    state = out.with_name("out.jsonl.batches.json")
    # A first run that submitted its batch and then died: only the state file is left.
    first = invoke("batch", source, "-c", config, "-o", out, "--via", "openai-batch",
                   "--poll-interval", "0.01")  # fmt: skip
    assert first.exit_code == 0
    batch_id = next(iter(server.batches))
    out.unlink()
    state.write_text(json.dumps({"batches": [
        {"base_url": server.base_url, "api_key_env": "OPENAI_API_KEY", "id": batch_id}
    ]}))  # fmt: skip
    server.batches[batch_id]["status"] = "in_progress"
    resumed = invoke("batch", source, "-c", config, "-o", out, "--via", "openai-batch",
                     "--poll-interval", "0.01")  # fmt: skip
    assert resumed.exit_code == 0, resumed.output
    assert len(server.batches) == 1  # nothing submitted again
    assert sorted(line["prompt"] for line in lines_of(out)) == ["one", "two"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-s"], "--synthesize needs the answers first"),
        (["--max-cost", "0.0000001"], "a Batch API job cannot stop half-way"),
    ],
)
def test_the_batch_api_refuses_what_it_cannot_honour(
    server: FakeOpenAI,
    agents_file: AgentsFile,
    invoke: Invoke,
    tmp_path: Path,
    args: list[str],
    message: str,
) -> None:
    source = prompts(tmp_path, "one\n")
    config = agents_file("a")
    config.write_text(config.read_text() + "pricing:\n  m-a: {input: 1.0, output: 1.0}\n")
    out = tmp_path / "out.jsonl"
    result = invoke("batch", source, "-c", config, "-o", out, "--via", "openai-batch", *args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert server.count() == 0


def batch_api(invoke: Invoke, source: Path, config: Path, out: Path) -> Any:
    return invoke(
        "batch", source, "-c", config, "-o", out, "--via", "openai-batch", "--poll-interval", "0.01"
    )


def test_an_expired_batch_is_reported_and_the_rest_asked_on_the_next_run(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, tmp_path: Path
) -> None:
    source = prompts(tmp_path, "one\ntwo\n")
    out = tmp_path / "out.jsonl"
    config = agents_file("a")
    server.script("m-a", Reply(), Fault(500))  # one answer comes back, one does not
    first = batch_api(invoke, source, config, out)
    assert first.exit_code == 3, first.output
    assert "Traceback" not in first.output
    assert not out.with_name("out.jsonl.batches.json").exists()
    second = batch_api(invoke, source, config, out)
    assert second.exit_code == 0, second.output
    assert len(server.batches) == 2  # only the missing job went into the second batch
    ok = [line for line in lines_of(out) if line["status"] == "ok"]
    assert sorted(line["prompt"] for line in ok) == ["one", "two"]


def test_a_batch_picked_up_again_never_writes_a_result_twice(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, tmp_path: Path
) -> None:
    source = prompts(tmp_path, "one\ntwo\n")
    out = tmp_path / "out.jsonl"
    config = agents_file("a")
    assert batch_api(invoke, source, config, out).exit_code == 0
    batch_id = next(iter(server.batches))
    # The run died after writing its results but before forgetting the batch.
    entry = {"base_url": server.base_url, "api_key_env": "OPENAI_API_KEY", "id": batch_id}
    out.with_name("out.jsonl.batches.json").write_text(json.dumps({"batches": [entry]}))
    again = batch_api(invoke, source, config, out)
    assert again.exit_code == 0, again.output
    assert len(lines_of(out)) == 2


def test_a_batch_created_but_never_acknowledged_is_found_not_created_twice(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, tmp_path: Path
) -> None:
    source = prompts(tmp_path, "one\n")
    out = tmp_path / "out.jsonl"
    config = agents_file("a")
    assert batch_api(invoke, source, config, out).exit_code == 0
    ((batch_id, batch),) = server.batches.items()
    out.unlink()
    # The earlier run uploaded and created the batch, but the reply to "create" was lost.
    entry = {
        "base_url": server.base_url,
        "api_key_env": "OPENAI_API_KEY",
        "input_file_id": batch["input_file_id"],
        "token": batch["metadata"]["fanout_job"],
        "id": "",
    }
    out.with_name("out.jsonl.batches.json").write_text(json.dumps({"batches": [entry]}))
    again = batch_api(invoke, source, config, out)
    assert again.exit_code == 0, again.output
    assert list(server.batches) == [batch_id]
    assert [line["prompt"] for line in lines_of(out)] == ["one"]


def test_a_result_line_cut_short_by_a_crash_does_not_spoil_the_next(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, tmp_path: Path
) -> None:
    source = prompts(tmp_path, "one\ntwo\n")
    out = tmp_path / "out.jsonl"
    config = agents_file("a")
    assert invoke("batch", source, "-c", config, "-o", out, "--concurrency", "1").exit_code == 0
    text = out.read_text()
    out.write_text(text[: len(text) - 20])  # the second line is cut in the middle
    assert invoke("batch", source, "-c", config, "-o", out).exit_code == 0
    good = [json.loads(line) for line in out.read_text().splitlines()[::2]]
    assert sorted(line["prompt"] for line in good) == ["one", "two"]
    assert invoke("batch", source, "-c", config, "-o", out).exit_code == 0
    assert server.count() == 3  # the third run had nothing left to ask


def test_the_summary_counts_only_what_is_in_flight_and_names_file_and_time(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, tmp_path: Path
) -> None:
    # a retry that meets the rate limiter waits on attempt 2: it must stop counting once sent
    server.script("m-a", Fault(503, headers={"retry-after-ms": "1"}))
    source = prompts(tmp_path, "one\ntwo\nthree\n", "q.txt")
    out = tmp_path / "out.jsonl"
    result = invoke("batch", source, "-c", agents_file("a"), "-o", out, "--rpm", "60",
                    "--concurrency", "1")  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = result.stderr.strip().splitlines()[-1]
    assert summary.startswith("3/3 done")
    assert "rate-limited" not in summary and "in flight" not in summary
    assert str(out) in summary
    assert re.search(r"· \d+\.\d s ·", summary), summary


@pytest.mark.parametrize("answered", [6, 0])
def test_a_batch_api_job_that_expires_half_done_is_partial(
    answered: int, server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, tmp_path: Path
) -> None:
    source = prompts(tmp_path, "".join(f"question {i}\n" for i in range(6)))
    out = tmp_path / "out.jsonl"
    server.batch_expires_after = answered  # 6 of the 12 requests, or none, answered in time
    config = agents_file("a", "b")
    args = ["batch", source, "-c", config, "-o", out, "--via", "openai-batch"]
    result = invoke(*args, "--poll-interval", "0.01")
    assert f"{answered}/12 done" in result.stderr and f"{12 - answered} failed" in result.stderr
    assert "ended expired" in result.stderr
    # Some answers and some not is partial (3), as on the direct path; none at all is failed.
    assert result.exit_code == (3 if answered else 1), result.output
    assert len(lines_of(out)) == answered
    server.batch_expires_after = None
    again = invoke(*args, "--poll-interval", "0.01")  # the rest are asked again
    assert again.exit_code == 0, again.output
    assert len(lines_of(out)) == 12
