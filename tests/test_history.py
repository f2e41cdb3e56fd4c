"""The run history: round trips, interrupted runs, concurrent writers, file modes, secrets."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import platformdirs
import pytest

from fanout.errors import ConfigError, StorageError
from fanout.history import HISTORY_ENV, SCHEMA_VERSION, History, RunSummary, history_path
from tests.conftest import SENTINEL_KEY, AgentsFile
from tests.fakeserver import FakeOpenAI

PERSONAS = [
    {"name": "physicist", "model": "m-physicist", "api_key_env": "FANOUT_TEST_KEY"},
    {"name": "chemist", "model": "m-chemist", "api_key_env": "FANOUT_TEST_KEY"},
]
SETTINGS = {"retries": 3, "timeout": 120.0, "stream": True}


def started(run_id: str, started_at: str = "2026-11-22T10:00:00.000+00:00") -> dict[str, Any]:
    """The document of a run that has just started: every persona still pending."""
    return {
        "schema_version": 1,
        "run_id": run_id,
        "prompt": f"question of {run_id}",
        "status": "running",
        "started_at": started_at,
        "finished_at": None,
        "duration_s": None,
        "agents": [{"name": p["name"], "status": "cancelled", "answer": None} for p in PERSONAS],
        "output": {},
        "synthesis": None,
        "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0},
    }


V2_CALL_KEYS = {"call_id", "stage", "role", "finish_reason", "truncated"}


def as_v1(document: dict[str, Any]) -> dict[str, Any]:
    """A stored document as version 1 saw it: version 2 only adds keys (the run's trace id,
    shape and stages; each call's identity), so taking them away gives the original back."""
    v1 = {k: v for k, v in document.items() if k not in ("trace_id", "shape", "stages")}
    v1["schema_version"] = 1
    v1["agents"] = [entry_v1(e) for e in document["agents"]]
    if document.get("synthesis"):
        v1["synthesis"] = entry_v1(document["synthesis"])
    return v1


def entry_v1(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k not in V2_CALL_KEYS}


def answer(name: str, status: str = "ok", cost: float | None = 0.25) -> dict[str, Any]:
    return {"name": name, "status": status, "answer": f"{name} says", "cost_usd": cost}


def record(history: History, run_id: str, started_at: str, *statuses: str) -> dict[str, Any]:
    """A whole run: started, one result per persona, finished; returns the final document."""
    document = started(run_id, started_at)
    history.start_run(document, agents=PERSONAS, synthesizer=None, settings=SETTINGS)
    for persona, status in zip(PERSONAS, statuses, strict=True):
        history.save_result(run_id, answer(persona["name"], status))
    final = {**document, "status": "completed", "finished_at": started_at, "cost_usd": 0.5}
    final["agents"] = [answer(p["name"], s) for p, s in zip(PERSONAS, statuses, strict=True)]
    history.finish_run(final)
    return final


def test_round_trip_returns_the_final_document_and_settings(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    synthesizer = {"model": "m-synth", "instructions": "Merge."}
    document = started("3f9c2a71b0de")
    with History(path) as history:
        history.start_run(document, agents=PERSONAS, synthesizer=synthesizer, settings=SETTINGS)
        history.save_result("3f9c2a71b0de", answer("chemist"))
        history.save_result("3f9c2a71b0de", answer("physicist"))
        history.save_result("3f9c2a71b0de", answer("synthesizer"), synthesis=True)
        final = {
            **document,
            "status": "completed",
            "finished_at": "2026-11-22T10:00:02.350+00:00",
            "duration_s": 2.35,
            "agents": [answer("physicist"), answer("chemist")],
            "output": {"physicist": "physicist says", "chemist": "chemist says"},
            "synthesis": {**answer("synthesizer"), "partial": False, "sources": ["physicist"]},
            "usage": {"input_tokens": 40, "output_tokens": 172, "total_tokens": 212},
            "cost_usd": 0.75,
        }
        history.finish_run(final)

    with History(path) as history:
        stored = history.load("3f9c2a71b0de")
    assert stored.document["schema_version"] == 2  # a version 1 document is upgraded
    assert [s["id"] for s in stored.document["stages"]] == ["panel", "synthesis"]
    assert as_v1(stored.document) == final
    assert stored.run_id == "3f9c2a71b0de"
    assert stored.prompt == "question of 3f9c2a71b0de"
    assert stored.agents == PERSONAS
    assert stored.synthesizer == synthesizer
    assert stored.settings == SETTINGS


def test_list_runs_newest_first_with_counts_and_limit(tmp_path: Path) -> None:
    with History(tmp_path / "history.db") as history:
        record(history, "bbb111", "2026-11-22T10:00:00.000+00:00", "ok", "ok")
        record(history, "ccc222", "2026-11-22T12:00:00.000+00:00", "ok", "error")
        record(history, "aaa000", "2026-11-22T11:00:00.000+00:00", "error", "error")
        runs = history.list_runs()
        assert [run.run_id for run in history.list_runs(limit=2)] == ["ccc222", "aaa000"]

    assert [run.run_id for run in runs] == ["ccc222", "aaa000", "bbb111"]
    assert runs[0] == RunSummary(
        run_id="ccc222",
        prompt="question of ccc222",
        status="completed",
        started_at="2026-11-22T12:00:00.000+00:00",
        finished_at="2026-11-22T12:00:00.000+00:00",
        agents=2,
        answered=1,
        cost_usd=0.5,
        conversation_id="ccc222",  # a run nobody continued is a conversation of its own
        turn=1,
    )
    assert [run.answered for run in runs] == [1, 0, 2]


def test_saved_results_show_before_the_run_finishes(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    with History(path) as writer:
        writer.start_run(started("run1"), agents=PERSONAS, synthesizer=None, settings=SETTINGS)
        writer.save_result("run1", answer("chemist", cost=0.125))
        with History(path) as reader:  # another connection sees what was committed
            document = reader.load("run1").document
            [summary] = reader.list_runs()

    assert document["status"] == "running"  # its writer, this process, is alive
    agents = [entry_v1(e) for e in document["agents"]]
    assert agents == [started("run1")["agents"][0], answer("chemist", cost=0.125)]
    assert (summary.status, summary.agents, summary.answered) == ("running", 2, 1)
    assert summary.cost_usd == 0.125  # what the saved entries cost so far
    assert summary.finished_at is None


def test_a_run_closed_without_finishing_is_interrupted(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    with History(path) as history:
        history.start_run(started("run1"), agents=PERSONAS, synthesizer=None, settings=SETTINGS)
    with History(path) as history:
        assert history.load("run1").document["status"] == "interrupted"


KILLED_WRITER = """
import json, os, signal, sys
from pathlib import Path
from fanout.history import History
document, entry = json.loads(sys.argv[2]), json.loads(sys.argv[3])
history = History(Path(sys.argv[1]))
history.start_run(document, agents=[], synthesizer=None, settings={})
history.save_result(document["run_id"], entry)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_writer_leaves_an_interrupted_run_with_its_saved_results(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    document, entry = started("killed"), answer("physicist")
    args = [path, json.dumps(document), json.dumps(entry)]
    completed = subprocess.run([sys.executable, "-c", KILLED_WRITER, *map(str, args)], check=False)
    assert completed.returncode == -signal.SIGKILL

    with History(path) as history:
        stored = history.load("killed").document
        [summary] = history.list_runs()
    assert stored["status"] == "interrupted"
    assert [entry_v1(e) for e in stored["agents"]] == [entry, document["agents"][1]]
    assert (summary.status, summary.answered) == ("interrupted", 1)


LIVE_WRITER = """
import json, os, sys
from pathlib import Path
from fanout.history import History
history = History(Path(sys.argv[1]))
history.start_run(json.loads(sys.argv[2]), agents=[], synthesizer=None, settings={})
print("started", flush=True)
sys.stdin.read()
os._exit(0)
"""


def test_a_run_in_another_live_process_is_running_until_it_dies(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    command = [sys.executable, "-c", LIVE_WRITER, str(path), json.dumps(started("live"))]
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as p:
        assert p.stdout is not None and p.stdin is not None
        assert p.stdout.readline() == "started\n"
        with History(path) as history:
            assert history.load("live").document["status"] == "running"
        p.stdin.close()  # lets the writer exit without finishing the run
        assert p.wait() == 0
    with History(path) as history:
        assert history.load("live").document["status"] == "interrupted"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_reused_pid_does_not_keep_a_dead_run_running(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    with History(path) as history:
        history.start_run(started("run1"), agents=PERSONAS, synthesizer=None, settings=SETTINGS)
        with sqlite3.connect(path) as db:  # as if an earlier process with our pid had written it
            writer = json.loads(db.execute("SELECT writer FROM runs").fetchone()[0])
            assert writer["pid"] == os.getpid()
            writer["start"] = "1"
            db.execute("UPDATE runs SET writer = ?", (json.dumps(writer),))
        db.close()
        assert history.load("run1").document["status"] == "interrupted"


CONCURRENT_WRITER = """
import sys
from pathlib import Path
from fanout.history import History
path, tag, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
names = ["a", "b", "c"]
sys.stdin.readline()  # start together
with History(path) as history:
    for i in range(count):
        run_id = f"{tag}-{i:04d}"
        document = {"run_id": run_id, "prompt": "p", "status": "running",
                    "started_at": f"2026-11-22T10:{i // 60:02d}:{i % 60:02d}.000+00:00",
                    "agents": [{"name": n, "status": "cancelled"} for n in names]}
        history.start_run(document, agents=[], synthesizer=None, settings={"tag": tag})
        for n in names:
            history.save_result(run_id, {"name": n, "status": "ok", "answer": tag})
        history.finish_run({**history.load(run_id).document, "status": "completed"})
"""


def test_two_processes_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    path, count = tmp_path / "history.db", 200
    History(path).close()  # both writers find the schema in place or race to create it
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", CONCURRENT_WRITER, str(path), tag, str(count)],
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in ("one", "two")
    ]
    for writer in writers:
        assert writer.stdin is not None
        writer.stdin.write("go\n")
        writer.stdin.close()
    for writer in writers:
        assert writer.stderr is not None
        stderr = writer.stderr.read()
        assert writer.wait() == 0, stderr

    with History(path) as history:
        runs = history.list_runs(limit=10 * count)
        one = history.load(history.resolve("one-0199"))
    assert len(runs) == 2 * count
    assert {run.run_id for run in runs} == {
        f"{tag}-{i:04d}" for tag in ("one", "two") for i in range(count)
    }
    assert all((run.status, run.answered) == ("completed", 3) for run in runs)
    assert [entry["answer"] for entry in one.document["agents"]] == ["one"] * 3
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    db.close()


def test_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "data" / "fanout" / "history.db"
    loose = tmp_path / "loose" / "history.db"
    loose.parent.mkdir()
    loose.touch(mode=0o644)
    os.chmod(loose, 0o644)
    old_umask = os.umask(0o022)
    try:
        with History(path) as history:
            record(history, "run1", "2026-11-22T10:00:00.000+00:00", "ok", "ok")
            modes = {
                name: os.stat(path.with_name(name)).st_mode & 0o777
                for name in ("history.db", "history.db-wal", "history.db-shm")
            }
        History(loose).close()
    finally:
        os.umask(old_umask)
    assert os.stat(path.parent).st_mode & 0o777 == 0o700
    assert modes == {"history.db": 0o600, "history.db-wal": 0o600, "history.db-shm": 0o600}
    assert os.stat(loose).st_mode & 0o777 == 0o600


def test_resolve_finds_a_unique_prefix_and_names_the_candidates(tmp_path: Path) -> None:
    with History(tmp_path / "history.db") as history:
        for run_id in ("3f9c2a71b0de", "3f9d00000000", "a1b2c3d4e5f6"):
            record(history, run_id, "2026-11-22T10:00:00.000+00:00", "ok", "ok")
        assert history.resolve("a1") == "a1b2c3d4e5f6"
        assert history.resolve("3f9c") == "3f9c2a71b0de"
        assert history.resolve("3f9d00000000") == "3f9d00000000"
        with pytest.raises(ConfigError, match=r"'3f9'.*3f9c2a71b0de, 3f9d00000000"):
            history.resolve("3f9")
        with pytest.raises(ConfigError, match="'ffff'"):
            history.resolve("ffff")
        with pytest.raises(ConfigError, match="'nope'"):
            history.load("nope")


def test_secrets_are_refused_and_never_reach_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FANOUT_TEST_KEY", SENTINEL_KEY)
    path = tmp_path / "history.db"
    with History(path) as history:
        with pytest.raises(ValueError, match="api_key"):
            history.start_run(
                started("run1"),
                agents=[{"name": "physicist", "api_key": SENTINEL_KEY}],
                synthesizer=None,
                settings={},
            )
        with pytest.raises(ValueError, match="OPENAI_API_KEY"):
            history.start_run(
                started("run1"), agents=[], synthesizer=None, settings={"OPENAI_API_KEY": "x"}
            )
        assert history.list_runs() == []  # a refused run is not half-stored

        record(history, "run1", "2026-11-22T10:00:00.000+00:00", "ok", "ok")  # api_key_env: fine
        leaky = {**answer("physicist"), "error": {"headers": {"Authorization": SENTINEL_KEY}}}
        with pytest.raises(ValueError, match="Authorization"):
            history.save_result("run1", leaky)
        with pytest.raises(ValueError, match="apiKey"):
            history.finish_run({**started("run1"), "agents": [{"apiKey": SENTINEL_KEY}]})
        assert history.load("run1").agents == PERSONAS

        stored = b"".join(
            p.read_bytes() for p in (path, path.with_name("history.db-wal")) if p.exists()
        )
    assert b"FANOUT_TEST_KEY" in stored
    assert b"SENTINEL" not in stored


def test_a_database_from_a_newer_fanout_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StorageError, match="newer fanout") as caught:
        History(path)
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("garbage", [b"x", b"this is not a database\n" * 100])
def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path, garbage: bytes) -> None:
    path = tmp_path / "history.db"
    path.write_bytes(garbage)
    with pytest.raises(StorageError) as caught:
        History(path)
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)
    assert path.read_bytes() == garbage


def test_history_path_honours_fanout_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert history_path(os.environ) == platformdirs.user_data_path("fanout") / "history.db"
    assert str(history_path(os.environ)).startswith(str(tmp_path))  # XDG_DATA_HOME is isolated
    monkeypatch.setenv(HISTORY_ENV, str(tmp_path / "home"))
    assert history_path(os.environ) == tmp_path / "home" / "history.db"
    assert history_path({HISTORY_ENV: "/srv/fanout"}) == Path("/srv/fanout/history.db")


def test_a_locked_history_never_holds_up_the_run(
    tmp_path: Path, server: FakeOpenAI, agents_file: AgentsFile
) -> None:
    import anyio

    import fanout
    from fanout.history import HistoryRecorder

    path = tmp_path / "history.db"
    history = History(path)
    recorder = HistoryRecorder(history, agents=[], settings={})
    execution = fanout.prepare(
        fanout.RunRequest("Why?", fanout.load_panel(agents_file("a", "b"))), [recorder]
    )
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        recorder.start(execution.report())
        anyio.run(execution.execute)
        report = execution.conclude()
        # the run is over, every answer in, while the history still cannot be written
        assert [r.status for r in report.agents] == ["ok", "ok"]
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    recorder.close()  # the queued writes go through once the lock is free
    assert recorder.error is None
    stored = history.load(report.run_id).document
    history.close()
    assert stored["status"] == "completed"
    assert stored["output"] == {"a": "m-a says: Why?", "b": "m-b says: Why?"}
