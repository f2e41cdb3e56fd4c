"""A batch leaves no file of its own behind beside its output (issue 13): not after a failed
Batch API upload, an interruption or a success; only the results, and the state of batches
still in flight."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import AgentsFile, Invoke
from tests.fakeserver import UPLOADS, FakeOpenAI, Fault, Hang, Reply


def setup(tmp_path: Path) -> tuple[Path, Path]:
    work = tmp_path / "job"
    work.mkdir()
    source = work / "q.txt"
    source.write_text("one\ntwo\n")
    return source, work / "out.jsonl"


def via_batch(source: Path, config: Path, out: Path) -> list[str]:
    return ["batch", str(source), "-c", str(config), "-o", str(out), "--via", "openai-batch",
            "--poll-interval", "0.01"]  # fmt: skip


def left_in(directory: Path) -> set[str]:
    return {path.name for path in directory.iterdir()}


def test_a_failed_upload_leaves_no_requests_file(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, tmp_path: Path
) -> None:
    source, out = setup(tmp_path)
    server.script(UPLOADS, Fault(400))
    result = invoke(*via_batch(source, agents_file("a"), out))
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.stderr.count("fanout: error:") == 1, result.stderr
    assert server.uploads == 1 and not server.batches
    assert left_in(out.parent) <= {"q.txt", "out.jsonl"}, left_in(out.parent)
    # and the next run starts afresh and finishes the job
    again = invoke(*via_batch(source, agents_file("a"), out))
    assert again.exit_code == 0, again.output
    assert left_in(out.parent) == {"q.txt", "out.jsonl"}
    assert len(out.read_text().splitlines()) == 2


def test_a_successful_batch_api_run_leaves_only_its_results(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, tmp_path: Path
) -> None:
    source, out = setup(tmp_path)
    result = invoke(*via_batch(source, agents_file("a", "b"), out))
    assert result.exit_code == 0, result.output
    assert left_in(out.parent) == {"q.txt", "out.jsonl"}


def test_an_upload_interrupted_leaves_no_requests_file(
    server: FakeOpenAI, agents_file: AgentsFile, tmp_path: Path
) -> None:
    source, out = setup(tmp_path)
    server.script(UPLOADS, Hang())
    args = via_batch(source, agents_file("a"), out)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fanout", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        server.wait_for_uploads(1, timeout=30)  # the requests file is written and being sent
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert b"Traceback" not in stderr
    assert left_in(out.parent) <= {"q.txt", "out.jsonl"}, left_in(out.parent)


def test_the_state_of_a_batch_in_flight_is_whole_json(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, tmp_path: Path
) -> None:
    # The one file a batch keeps beside its output while a job is at the provider.
    source, out = setup(tmp_path)
    server.script(UPLOADS, Reply(), Fault(400))  # two endpoints: the second upload fails
    other = server.base_url.replace("127.0.0.1", "localhost")
    config = agents_file("a", "b", extra={"b": {"base_url": other}})
    failed = invoke(*via_batch(source, config, out))
    assert failed.exit_code == 1, failed.output
    assert left_in(out.parent) == {"q.txt", "out.jsonl", "out.jsonl.batches.json"}
    (entry,) = json.loads((out.parent / "out.jsonl.batches.json").read_text())["batches"]
    assert entry["input_file_id"] in server.files
    again = invoke(*via_batch(source, config, out))  # picks the uploaded file up, sends the rest
    assert again.exit_code == 0, again.output
    assert server.uploads == 3 and len(server.batches) == 2
    assert left_in(out.parent) == {"q.txt", "out.jsonl"}


def test_a_shape_the_batch_api_cannot_run_is_named_as_typed(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, tmp_path: Path
) -> None:
    source, out = setup(tmp_path)
    config = agents_file("a", "b", "c")
    for flag in ("--council", "--map"):
        result = invoke(*via_batch(source, config, out), flag)
        assert result.exit_code == 2, result.output
        assert f"{flag} needs the answers first" in result.stderr
    assert server.count() == 0
