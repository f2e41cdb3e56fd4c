"""Ctrl-C and SIGTERM on the real process: completed answers survive, the rest is cancelled."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import AgentsFile
from tests.fakeserver import FakeOpenAI, Hang, Reply


def start_fanout(*args: str | Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "fanout", "ask", *map(str, args)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_keeps_finished_answers_and_exits_130(
    server: FakeOpenAI, agents_file: AgentsFile, signum: signal.Signals
) -> None:
    server.script("m-done", Reply(text="finished answer"))
    server.script("m-stuck", Hang())
    config = agents_file("done", "stuck", "never")
    # --concurrency 1: "stuck" is only asked once "done" has its answer stored, and "never"
    # is still queued, so the server seeing the second request is the moment to interrupt.
    proc = start_fanout("-c", config, "--json", "--concurrency", "1", "Why?")
    try:
        server.wait_for_requests(2)
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    document = json.loads(stdout)
    assert document["status"] == "cancelled"
    assert [a["status"] for a in document["agents"]] == ["ok", "cancelled", "cancelled"]
    assert document["output"] == {"done": "finished answer"}
    assert server.count("m-never") == 0


def test_interrupted_table_still_shows_the_answers(
    server: FakeOpenAI, agents_file: AgentsFile
) -> None:
    server.script("m-done", Reply(text="finished answer"))
    server.script("m-stuck", Hang())
    proc = start_fanout("-c", agents_file("done", "stuck"), "--concurrency", "1", "Why?")
    try:
        server.wait_for_requests(2)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert "finished answer" in stdout
    assert "cancelled" in stdout
    assert "interrupted" in stderr
