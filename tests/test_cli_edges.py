"""The command line's edges on a real process: a reader that goes away, a signal before the run
starts, chatter that holds markup, an interrupted retry."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fanout.errors import ConfigError
from fanout.evalrun import EXIT_REGRESSION
from fanout.history import history_path
from fanout.output import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL, EXIT_UNDECIDED
from tests.conftest import AgentsFile, Invoke
from tests.fakeserver import FakeOpenAI, Fault, Hang, Reply


def fanout_process(
    *args: str | Path, stdin: int | None = subprocess.DEVNULL
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "fanout", *map(str, args)],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_jsonl_into_a_reader_that_leaves_ends_quietly(
    server: FakeOpenAI, agents_file: AgentsFile
) -> None:
    hold = threading.Event()
    server.default = Reply(text="an answer in several pieces", hold=hold)
    proc = fanout_process("ask", "-c", agents_file("a", "b"), "--jsonl", "Why?")
    try:
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()  # `| head -1`
        proc.stdout.close()
        hold.set()  # the next lines meet a closed pipe
        stderr = proc.stderr.read().decode()
        proc.wait(timeout=30)
    finally:
        hold.set()
        proc.kill()
    assert json.loads(first)["type"] == "run_started"
    assert stderr == ""  # no traceback, no message
    assert proc.returncode == 141


def test_json_into_a_reader_that_leaves_ends_quietly(
    server: FakeOpenAI, agents_file: AgentsFile
) -> None:
    hold = threading.Event()
    server.default = Reply(text="an answer", hold=hold)
    proc = fanout_process("ask", "-c", agents_file("a"), "--json", "--stream", "Why?")
    try:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # `| head -c 0`: the reader is gone before the document comes
        server.wait_for_requests(1)
        hold.set()
        stderr = proc.stderr.read().decode()
        proc.wait(timeout=30)
    finally:
        hold.set()
        proc.kill()
    assert stderr == ""
    assert proc.returncode == 141


@pytest.mark.parametrize("mode", [["--json"], ["--format", "md"]])
def test_a_document_larger_than_the_pipe_cut_short_by_its_reader_exits_141(
    server: FakeOpenAI, agents_file: AgentsFile, mode: list[str]
) -> None:
    # `fanout ask --json Q | head -c 100` of a 1 MB document: Python's buffered writer dropped
    # what the pipe did not take once the reader had gone, and the command exited 0.
    server.default = Reply(text="word " * 200_000)
    proc = fanout_process("ask", "-c", agents_file("a"), *mode, "Why?")
    assert proc.stdout is not None and proc.stderr is not None
    try:
        assert len(proc.stdout.read(100)) == 100  # `| head -c 100`
        proc.stdout.close()
        stderr = proc.stderr.read().decode()
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert stderr == ""
    assert proc.returncode == 141


def test_batch_into_a_reader_that_leaves_ends_quietly(
    server: FakeOpenAI, agents_file: AgentsFile, tmp_path: Path
) -> None:
    # `fanout batch q.txt | head -1` said "cannot write the results: Broken pipe", exit 1.
    hold = threading.Event()
    server.script("m-a", Reply(text="the first answer"))
    server.default = Reply(text="a later answer", hold=hold)
    prompts = tmp_path / "q.txt"
    prompts.write_text("".join(f"question {i}\n" for i in range(6)), encoding="utf-8")
    # One call at a time, so the first line is the first answer (a whole answer is not held:
    # `hold` stops streams only, and a batch asks for whole answers).
    proc = fanout_process("batch", "-c", agents_file("a"), prompts, "--concurrency", "1")
    try:
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()  # `| head -1`
        proc.stdout.close()
        hold.set()  # the next lines meet a closed pipe
        stderr = proc.stderr.read().decode()
        proc.wait(timeout=30)
    finally:
        hold.set()
        proc.kill()
    assert json.loads(first)["answer"] == "the first answer"
    assert "Traceback" not in stderr and "Broken pipe" not in stderr, stderr
    assert "error" not in stderr, stderr
    assert proc.returncode == 141


def _blocked_reading_stdin(pid: int) -> bool:
    """Whether the process sits in read(0, ...) (Linux's /proc/PID/syscall)."""
    number = {"x86_64": "0", "aarch64": "63"}.get(platform.machine())
    try:
        fields = Path(f"/proc/{pid}/syscall").read_text().split()
    except OSError:
        return False
    return number is not None and fields[:2] == [number, "0x0"]


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "aarch64"),
    reason="finds the moment the prompt is being read through /proc/PID/syscall",
)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_before_the_run_starts_ends_with_130_and_a_cancelled_document(
    server: FakeOpenAI, agents_file: AgentsFile, signum: signal.Signals
) -> None:
    # The prompt comes from stdin, which stays open: the command is started but not the run.
    proc = fanout_process("ask", "-c", agents_file("a"), "--json", stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not _blocked_reading_stdin(proc.pid):  # a state, not a duration
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert b"Traceback" not in stderr
    document = json.loads(stdout)
    assert (document["status"], document["agents"], document["output"]) == ("cancelled", [], {})
    assert server.count() == 0


def test_chatter_holding_markup_is_shown_as_written_and_a_shared_home_is_flagged(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    home = tmp_path / "odd[red]home"
    home.mkdir()
    os.chmod(home, 0o777)
    monkeypatch.setenv("FANOUT_HOME", str(home))
    result = invoke("ask", "-c", agents_file("a"), "--json", "Why?")
    assert result.exit_code == 0, result.output
    assert "can be written by other users" in result.stderr
    assert "odd[red]home" in result.stderr
    assert json.loads(result.stdout)["output"] == {"a": "m-a says: Why?"}


def test_an_interrupted_retry_leaves_the_stored_run_as_it_was(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.script("m-b", Fault(400))
    config = agents_file("a", "b")
    first = invoke("ask", "-c", config, "--json", "Why?")
    document = json.loads(first.stdout)
    assert document["status"] == "partial"
    before = json.loads(invoke("runs", "show", document["run_id"], "--json").stdout)
    server.reset()
    server.script("m-b", Hang())
    proc = fanout_process("runs", "retry", document["run_id"], "--json")
    try:
        server.wait_for_requests(1)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130
    after = json.loads(invoke("runs", "show", document["run_id"], "--json").stdout)
    assert after["status"] == "partial"
    assert after["agents"] == before["agents"]  # b's recorded error is still there
    assert after["agents"][1]["error"] is not None


def test_a_persona_named_synthesizer_is_never_taken_for_the_synthesis(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, tmp_path: Path
) -> None:
    prompts = tmp_path / "q.txt"
    prompts.write_text("What is heat?\nWhat is light?\n")
    out = tmp_path / "out.jsonl"
    config = agents_file("synthesizer", "chemist", synthesizer={"model": "m-merge"})
    server.script("m-merge", Hang(), Hang())
    proc = fanout_process("batch", prompts, "-c", config, "-s", "-o", out, "--timeout", "0.5",
                          "--retries", "0")  # fmt: skip
    proc.communicate(timeout=60)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    merged = [line for line in lines if line["synthesis"]]
    assert {line["status"] for line in merged} == {"error"}  # both syntheses timed out
    server.reset()
    again = invoke("batch", prompts, "-c", config, "-s", "-o", out)
    assert again.exit_code == 0, again.output
    # the persona named "synthesizer" answered; the syntheses are asked again all the same
    assert server.count("m-merge") == 2
    assert server.count("m-synthesizer") == 0


def readme_exit_codes() -> dict[int, str]:
    """The README's table of exit codes: {code: meaning}."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    table = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d+) \| (.+) \|$", table, re.MULTILINE)
    return {int(code): meaning for code, meaning in rows}


def test_the_readme_s_exit_codes_are_the_code_s(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    table = readme_exit_codes()
    codes = {EXIT_OK, EXIT_PARTIAL, EXIT_FAILED, EXIT_INTERRUPTED, ConfigError.exit_code}
    assert set(table) == {*codes, EXIT_REGRESSION, EXIT_UNDECIDED, 141}
    # A short document reaches the pipe whole before its reader leaves: the run's own code
    # (the README said 141 for `ask --json | head`).
    assert "Output that reached the pipe whole" in table[141]
    proc = fanout_process("ask", "-c", agents_file("a"), "--json", "Why?")
    try:
        assert proc.wait(timeout=60) == 0  # nobody has read it yet: it sits in the pipe
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"{"
    finally:
        proc.kill()
        proc.communicate()
    # `runs show` of a cancelled run: 0 once shown; 130 with --exit-status (the README said
    # 130 without it).
    assert "`runs show --exit-status` of a run that was cancelled" in table[EXIT_INTERRUPTED]
    document = json.loads(invoke("ask", "-c", agents_file("a"), "--json", "Why?").stdout)
    for call in document["stages"][0]["calls"]:
        call.update(status="cancelled", answer=None)
    document["status"] = "cancelled"
    with contextlib.closing(sqlite3.connect(history_path(os.environ))) as db:
        db.execute(
            "UPDATE runs SET document = ? WHERE run_id = ?",
            (json.dumps(document), document["run_id"]),
        )
        db.commit()
    shown = invoke("runs", "show", document["run_id"])
    assert shown.exit_code == EXIT_OK, shown.output
    assert invoke("runs", "show", document["run_id"], "--exit-status").exit_code == 130
