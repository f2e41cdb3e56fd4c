"""A signal at every moment of a command, from its first line on: the cancelled document (or
JSONL's closing line), exit 130, a history entry once the run exists, never a traceback.

Each command is swept: one signal, SIGINT and SIGTERM in turn, at moments chosen from the
command's own progress: when its first request arrives, the moment its handlers are in place (a
state, read from /proc), and at fifths of the time its first request took to leave. The moments
only spread the signals over the command's start; nothing is asserted about time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import AgentsFile, Invoke
from tests.fakeserver import FakeOpenAI, Hang

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads the process's handlers from /proc"
)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _handlers_ready(pid: int) -> bool:
    """Whether the process catches SIGTERM: fanout's handlers are in place (Python alone
    catches SIGINT only)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


def _wait_for_handlers(proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while not _handlers_ready(proc.pid):  # a state, polled
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the handlers never came"
        time.sleep(0.002)


def _signalled(
    server: FakeOpenAI, args: list[str], signum: signal.Signals, moment: str | float
) -> tuple[subprocess.CompletedProcess[str], float]:
    """The command signalled at ``moment``: once its handlers are in place (``"handlers"``),
    when its first request arrives (``"request"``), or that many seconds after it started.
    Also how long it took to send that request, when that was the moment."""
    server.script("m-a", Hang())
    server.script("m-b", Hang())
    began = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fanout", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        if moment == "handlers":
            _wait_for_handlers(proc)
        elif moment == "request":
            server.wait_for_requests(1, timeout=60)
        else:
            time.sleep(float(moment))  # picks the moment; no assertion rests on it
        first = time.monotonic() - began
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
        server.reset()
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr), first


def _sweep(
    server: FakeOpenAI, args: list[str]
) -> list[tuple[signal.Signals, subprocess.CompletedProcess[str]]]:
    """The command signalled once at each moment, SIGINT and SIGTERM in turn: when its first
    request arrives, once its handlers are in place, and at fifths of the time that first
    request took to leave."""
    result, first = _signalled(server, args, signal.SIGINT, "request")
    results = [(signal.SIGINT, result)]
    moments: list[str | float] = ["handlers", *(first * k / 5 for k in range(1, 5))]
    for number, moment in enumerate(moments, 1):
        signum = SIGNALS[number % 2]
        results.append((signum, _signalled(server, args, signum, moment)[0]))
    return results


def _check_recorded(invoke: Invoke, document: dict[str, object], what: str) -> None:
    """Once the run existed (its personas are in the document), the history has it,
    cancelled; before that, nothing was recorded."""
    listed = json.loads(invoke("runs", "list", "--json").stdout)["runs"]
    ids = [run["run_id"] for run in listed]
    if document["agents"]:
        assert document["run_id"] in ids, what
        stored = json.loads(invoke("runs", "show", str(document["run_id"]), "--json").stdout)
        assert stored["status"] == "cancelled", what
    else:
        assert document["run_id"] not in ids, what


@pytest.mark.parametrize("mode", ["--json", "--jsonl"])
def test_a_signal_at_any_moment_of_ask_gives_the_cancelled_document_and_130(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, mode: str
) -> None:
    args = ["ask", "-c", str(agents_file("a", "b")), mode, "Why?"]
    for signum, result in _sweep(server, args):
        what = f"{signal.Signals(signum).name}: {result.stderr}"
        assert result.returncode == 130, what
        assert "Traceback" not in result.stderr, what
        lines = result.stdout.splitlines()
        if mode == "--json":
            document = json.loads(result.stdout)
        else:
            assert all(json.loads(line) for line in lines), what  # every line whole
            closing = json.loads(lines[-1])
            assert closing["type"] == "run_finished", what
            document = closing["document"]
        assert document["status"] == "cancelled", what
        assert all(a["status"] == "cancelled" for a in document["agents"]), what
        _check_recorded(invoke, document, what)


def test_a_signal_at_any_moment_of_batch_ends_it_with_130(
    server: FakeOpenAI, agents_file: AgentsFile, tmp_path: Path
) -> None:
    prompts = tmp_path / "q.txt"
    prompts.write_text("one\ntwo\n")
    out = tmp_path / "out.jsonl"
    args = ["batch", "-c", str(agents_file("a", "b")), str(prompts), "-o", str(out)]
    for signum, result in _sweep(server, args):
        what = f"{signal.Signals(signum).name}: {result.stderr}"
        assert result.returncode == 130, what
        assert "Traceback" not in result.stderr, what
        assert "interrupted" in result.stderr, what
        if out.exists():  # nothing answered: no line, or whole lines only
            assert all(json.loads(line) for line in out.read_text().splitlines()), what
        assert not os.path.exists(str(out) + ".batches.json")
