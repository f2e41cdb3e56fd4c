"""The run history through the real CLI: ask -> runs list/show/retry/synth, crash safety."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fanout.history import history_path
from tests.conftest import SENTINEL_KEY, AgentsFile, Invoke
from tests.fakeserver import FakeOpenAI, Fault, Hang, Reply


def ask_json(invoke: Invoke, *args: str | Path) -> dict[str, Any]:
    result = invoke("ask", "--json", *args)
    assert result.exit_code in (0, 3), result.output
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def test_ask_json_equals_runs_show_json(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    document = ask_json(invoke, "-c", agents_file(), "Why?")
    shown = invoke("runs", "show", document["run_id"][:6], "--json")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout) == document
    table = invoke("runs", "show", document["run_id"])
    assert "m-physicist says: Why?" in table.stdout


def test_runs_list_is_newest_first(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    config = agents_file("a")
    first = ask_json(invoke, "-c", config, "first question")
    second = ask_json(invoke, "-c", config, "second question")
    listed = json.loads(invoke("runs", "list", "--json").stdout)["runs"]
    assert [r["run_id"] for r in listed[:2]] == [second["run_id"], first["run_id"]]
    assert listed[0]["status"] == "completed" and listed[0]["answered"] == 1
    assert len(json.loads(invoke("runs", "list", "--json", "--limit", "1").stdout)["runs"]) == 1
    table = invoke("runs", "list")
    assert "second question" in table.stdout and first["run_id"] in table.stdout


@pytest.mark.parametrize(
    ("columns", "long_prompt"), [(80, False), (80, True), (200, True), (60, True)]
)
def test_runs_list_never_cuts_the_run_id_or_status_the_prompt_gives_way(
    server: FakeOpenAI,
    agents_file: AgentsFile,
    invoke: Invoke,
    monkeypatch: pytest.MonkeyPatch,
    columns: int,
    long_prompt: bool,
) -> None:
    config = agents_file("a", "b")
    server.script("m-b", Fault(500), Fault(500), Fault(500), Fault(500))
    prompts = ["Why?", "What is heat?", "Explain temperature."]
    if long_prompt:
        prompts.append("Explain in great detail " * 30)
    runs = [ask_json(invoke, "-c", config, "--retries", "0", p) for p in prompts]
    monkeypatch.setenv("COLUMNS", str(columns))
    table = invoke("runs", "list")
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert all(len(line.rstrip()) <= columns for line in lines), table.stdout
    for run in runs:
        row = next(line for line in lines if run["run_id"] in line)  # the whole id
        assert f" {run['status']} " in row, table.stdout  # the whole status
    assert {r["status"] for r in runs} == {"partial"}
    assert "Why?" in table.stdout and "What is heat?" in table.stdout
    if columns >= 80:
        assert "Started" in table.stdout and "Answered" in table.stdout
        assert "1/2" in table.stdout
    if long_prompt:
        assert "Explain in great" in table.stdout and "…" in table.stdout


def test_no_log_records_nothing(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    ask_json(invoke, "-c", agents_file("a"), "--no-log", "Why?")
    assert json.loads(invoke("runs", "list", "--json").stdout)["runs"] == []
    # Nor does it print a run id that `runs show` could not find.
    for view in ("md", "table"):
        shown = invoke("ask", "-c", agents_file("a"), "--no-log", "--format", view, "Why?")
        assert shown.exit_code == 0 and "1/1 answered" in shown.stdout, shown.output
        assert " run " not in shown.stdout


def test_piped_output_is_markdown_and_format_picks_the_view(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    config = agents_file("physicist", "chemist")
    piped = invoke("ask", "-c", config, "Why?")
    assert piped.exit_code == 0, piped.output
    assert piped.stdout.startswith("## physicist\nm-physicist says: Why?\n\n## chemist\n")
    assert "┃" not in piped.stdout and "│" not in piped.stdout
    columns = invoke("ask", "-c", config, "--format", "columns", "Why?").stdout
    assert any("physicist" in row and "chemist" in row for row in columns.splitlines())
    assert "Persona" in invoke("ask", "-c", config, "--format", "table", "Why?").stdout
    run_id = json.loads(invoke("ask", "-c", config, "--json", "Why?").stdout)["run_id"]
    shown = invoke("runs", "show", run_id, "--format", "text")
    assert "physicist (m-physicist)\nm-physicist says: Why?" in shown.stdout
    bad = invoke("ask", "-c", config, "--format", "html", "Why?")
    assert bad.exit_code == 2 and "--format: 'html'" in bad.stderr


def test_runs_show_raw_prints_one_answer_as_written(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.script("m-chemist", Reply(text="**Bold** claim\n\n| a | b |"))
    run_id = ask_json(invoke, "-c", agents_file("physicist", "chemist"), "Why?")["run_id"]
    raw = invoke("runs", "show", run_id, "-a", "Chemist", "--raw")
    assert raw.exit_code == 0, raw.output
    assert raw.stdout == "**Bold** claim\n\n| a | b |\n"
    unknown = invoke("runs", "show", run_id, "-a", "nobody", "--raw")
    assert unknown.exit_code == 2 and "physicist, chemist" in unknown.stderr
    assert invoke("runs", "show", run_id, "--raw").exit_code == 2


def test_retry_asks_only_the_failed_personas_and_folds_them_in(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.script("m-chemist", Fault(400))
    server.script("m-biologist", Fault(401))
    config = agents_file(extra={"chemist": {"temperature": 0.3}})
    document = ask_json(invoke, "-c", config, "Why?")
    assert document["status"] == "partial"
    server.reset()
    retried = invoke("runs", "retry", document["run_id"], "--json")
    assert retried.exit_code == 0, retried.output
    assert sorted(r.model for r in server.requests) == ["m-biologist", "m-chemist"]
    chemist_request = next(r for r in server.requests if r.model == "m-chemist")
    assert chemist_request.body["temperature"] == 0.3  # the recorded persona settings
    assert chemist_request.body["messages"][-1]["content"] == "Why?"
    merged = json.loads(retried.stdout)
    assert merged["run_id"] == document["run_id"]
    assert merged["status"] == "completed"
    assert merged["started_at"] == document["started_at"]
    assert merged["agents"][0] == document["agents"][0]  # the physicist was not asked again
    assert set(merged["output"]) == {"physicist", "chemist", "biologist"}
    shown = json.loads(invoke("runs", "show", document["run_id"], "--json").stdout)
    assert shown == merged


def test_retry_of_a_complete_run_says_there_is_nothing_to_do(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    document = ask_json(invoke, "-c", agents_file("a"), "Why?")
    result = invoke("runs", "retry", document["run_id"])
    assert result.exit_code == 2
    assert "already answered" in result.stderr


def test_synth_calls_only_the_synthesizer(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    config = agents_file(synthesizer={"model": "m-synth", "instructions": "Merge."})
    document = ask_json(invoke, "-c", config, "Why?")
    assert document["synthesis"] is None
    server.reset()
    server.script("m-other", Reply(text="merged again"))
    result = invoke("runs", "synth", document["run_id"], "--model", "m-other", "--json")
    assert result.exit_code == 0, result.output
    assert [r.model for r in server.requests] == ["m-other"]
    assert "m-chemist says: Why?" in server.requests[0].body["messages"][1]["content"]
    merged = json.loads(result.stdout)
    assert merged["synthesis"]["answer"] == "merged again"
    assert merged["agents"] == document["agents"]
    stored = json.loads(invoke("runs", "show", document["run_id"], "--json").stdout)
    assert stored["synthesis"]["answer"] == "merged again"


def test_unknown_or_ambiguous_run_ids_are_usage_errors(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    result = invoke("runs", "show", "nope")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "nope" in result.stderr


def history_text() -> str:
    """Everything the history database holds, as text (committed rows only)."""
    path = history_path(os.environ)
    if not path.exists():
        return ""
    with contextlib.closing(sqlite3.connect(path)) as db:
        return " ".join(str(row) for row in db.execute("SELECT * FROM calls"))


def wait_until(condition: Callable[[], bool], what: str, limit: float = 20.0) -> None:
    """Poll ``condition`` (a state the test waits for, not a duration) until it holds."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {limit:g} s for: {what}")
        time.sleep(0.01)


def test_a_killed_run_keeps_its_finished_answers(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.script("m-done", Reply(text="saved before the crash"))
    server.script("m-stuck", Hang())
    config = agents_file("done", "stuck")
    # --concurrency 1: "stuck" is asked only once "done" is answered (and recorded).
    command = ["ask", "-c", str(config), "--json", "--concurrency", "1", "Why?"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "fanout", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        server.wait_for_requests(2)
        # Answers are committed by the history's writer thread: kill once this one is in.
        wait_until(lambda: "saved before the crash" in history_text(), "the answer is stored")
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    runs = json.loads(invoke("runs", "list", "--json").stdout)["runs"]
    assert runs[0]["status"] == "interrupted"
    stored = json.loads(invoke("runs", "show", runs[0]["run_id"], "--json").stdout)
    assert stored["status"] == "interrupted"
    assert stored["agents"][0]["answer"] == "saved before the crash"
    assert stored["agents"][1]["status"] != "ok"
    # and it can be finished later
    server.reset()
    retried = invoke("runs", "retry", runs[0]["run_id"], "--json")
    assert retried.exit_code == 0, retried.output
    assert [r.model for r in server.requests] == ["m-stuck"]


def test_two_fanout_processes_recording_at_once_lose_nothing(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    config = agents_file("a", "b")
    command = [sys.executable, "-m", "fanout", "ask", "-c", str(config), "--json", "Why?"]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE) for _ in range(6)]
    ids = set()
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        ids.add(json.loads(out)["run_id"])
    listed = json.loads(invoke("runs", "list", "--json", "--limit", "50").stdout)["runs"]
    assert {r["run_id"] for r in listed} == ids
    assert all(r["status"] == "completed" and r["answered"] == 2 for r in listed)


def test_the_history_is_private_and_holds_no_key(
    server: FakeOpenAI,
    agents_file: AgentsFile,
    invoke: Invoke,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    import os
    import sqlite3

    monkeypatch.setenv("FANOUT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FANOUT_TEST_KEY", SENTINEL_KEY)
    config = agents_file("a", defaults={"api_key_env": "FANOUT_TEST_KEY"})
    ask_json(invoke, "-c", config, "Why?")
    db = history_path(os.environ)
    assert db == tmp_path / "home" / "history.db"
    assert db.parent.stat().st_mode & 0o777 == 0o700
    assert db.stat().st_mode & 0o777 == 0o600
    raw = b"".join(p.read_bytes() for p in db.parent.iterdir() if p.is_file())
    assert SENTINEL_KEY.encode() not in raw
    assert b"FANOUT_TEST_KEY" in raw  # the variable's name is kept, to ask again
    with sqlite3.connect(db) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_failed_re_synthesis_keeps_the_synthesis_the_run_had(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.script("m-synth", Reply(text="the good synthesis"))
    config = agents_file("a", synthesizer={"model": "m-synth"})
    document = ask_json(invoke, "-c", config, "-s", "Why?")
    assert document["synthesis"]["answer"] == "the good synthesis"
    server.script("m-synth", Fault(400))
    failed = invoke("runs", "synth", document["run_id"], "--json")
    assert json.loads(failed.stdout)["synthesis"]["answer"] == "the good synthesis"
    stored = json.loads(invoke("runs", "show", document["run_id"], "--json").stdout)
    assert stored["status"] == "completed"
    assert stored["synthesis"]["answer"] == "the good synthesis"


def _corrupt_document(run_id: str, text: str) -> None:
    with contextlib.closing(sqlite3.connect(history_path(os.environ))) as db:
        db.execute("UPDATE runs SET document = ? WHERE run_id = ?", (text, run_id))
        db.commit()


@pytest.mark.parametrize("garbage", ["{not json", "[1, 2]", '"a string"'])
def test_one_damaged_run_never_makes_the_history_unreadable(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, garbage: str
) -> None:
    config = agents_file("a")
    good = ask_json(invoke, "-c", config, "Fine?")
    bad = ask_json(invoke, "-c", config, "Broken?")
    _corrupt_document(bad["run_id"], garbage)
    listed = invoke("runs", "list", "--json")
    assert listed.exit_code == 0, listed.output
    assert [r["run_id"] for r in json.loads(listed.stdout)["runs"]] == [good["run_id"]]
    assert bad["run_id"] in listed.stderr and "skipped" in listed.stderr
    shown = invoke("runs", "show", bad["run_id"])
    assert shown.exit_code == 1  # a storage problem, not a usage error
    assert shown.stdout == ""
    assert len(shown.stderr.strip().splitlines()) == 1 and bad["run_id"] in shown.stderr
    assert "Traceback" not in shown.output
    assert invoke("runs", "show", good["run_id"]).exit_code == 0


def test_random_bytes_over_the_database_give_one_line_not_a_traceback(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    config = agents_file("a")
    runs = [ask_json(invoke, "-c", config, f"Question {i}?")["run_id"] for i in range(30)]
    path = history_path(os.environ)
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (page,) = db.execute("PRAGMA page_size").fetchone()
    data = bytearray(path.read_bytes())
    data[page : 2 * page] = bytes((i * 37 + 11) % 256 for i in range(page))  # page 2
    path.write_bytes(bytes(data))
    for command in (["runs", "list"], ["runs", "show", runs[0]], ["runs", "show", runs[-1]]):
        result = invoke(*command)
        assert result.exit_code in (0, 1, 3), (command, result.output)
        assert "Traceback" not in result.output
        if result.exit_code == 1:
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.fixture
def tokyo(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time nine hours ahead of UTC, named JST (a POSIX TZ: no zone database needed)."""
    monkeypatch.setenv("TZ", "JST-9")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_runs_show_gives_prompt_local_time_settings_and_shape_and_exits_0(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, tokyo: None
) -> None:
    server.script("m-chemist", Fault(400))
    document = ask_json(invoke, "-c", agents_file("physicist", "chemist"), "--rpm", "60", "Why?")
    assert document["status"] == "partial"
    shown = invoke("runs", "show", document["run_id"])
    assert shown.exit_code == 0, shown.output  # shown: `set -e` scripts carry on
    header = shown.stdout.split("\n\n")[0]
    assert "prompt: Why?" in header and "shape panel" in header and "partial" in header
    assert "JST" in header and "retries 3" in header and "60 rpm" in header
    assert invoke("runs", "show", document["run_id"], "--exit-status").exit_code == 3


def test_runs_list_finds_runs_by_text_persona_status_and_age(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.script("m-chemist", Reply(text="Think of Boltzmann."))
    both = ask_json(invoke, "-c", agents_file("physicist", "chemist"), "What is entropy?")
    server.script("m-physicist", Fault(400))
    result = invoke("ask", "--json", "-c", agents_file("physicist"), "Why is ice slippery?")
    assert result.exit_code == 1, result.output
    failed = json.loads(result.stdout)

    def listed(*args: str) -> list[str]:
        result = invoke("runs", "list", "--json", *args)
        assert result.exit_code == 0, result.output
        return [r["run_id"] for r in json.loads(result.stdout)["runs"]]

    assert listed("-q", "BOLTZMANN") == [both["run_id"]]  # an answer's text
    assert listed("-q", "slippery") == [failed["run_id"]]  # the prompt's
    assert listed("--agent", "Chemist") == [both["run_id"]]
    assert listed("--status", "failed") == [failed["run_id"]]
    assert listed("--since", "1h") == [failed["run_id"], both["run_id"]]
    assert listed("--since", "2999-01-01") == []
    assert listed("--since", "2000-01-01", "--limit", "1") == [failed["run_id"]]
    assert invoke("runs", "list", "--since", "yesterday").exit_code == 2
    assert invoke("runs", "list", "--status", "done").exit_code == 2


def test_runs_delete_removes_a_run(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    config = agents_file("a")
    kept = ask_json(invoke, "-c", config, "keep me")
    gone = ask_json(invoke, "-c", config, "delete me")
    deleted = invoke("runs", "delete", gone["run_id"][:8])
    assert deleted.exit_code == 0, deleted.output
    assert gone["run_id"] in deleted.stderr
    runs = json.loads(invoke("runs", "list", "--json").stdout)["runs"]
    assert [r["run_id"] for r in runs] == [kept["run_id"]]
    assert invoke("runs", "show", gone["run_id"]).exit_code == 2
    assert invoke("runs", "delete", gone["run_id"]).exit_code == 2


def test_runs_help_names_the_database(
    invoke: Invoke, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FANOUT_HOME", str(tmp_path / "h"))
    shown = invoke("runs", "--help")
    assert shown.exit_code == 0, shown.output
    flat = "".join(shown.stdout.replace("│", "").split())
    assert "".join(str(history_path(os.environ)).split()) in flat


def test_synth_of_a_run_without_answers_refuses_and_leaves_it_as_it_was(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.script("m-a", Fault(400))
    server.script("m-b", Fault(400))
    result = invoke("ask", "--json", "-c", agents_file("a", "b"), "Why?")
    assert result.exit_code == 1, result.output
    document = json.loads(result.stdout)
    assert document["status"] == "failed"
    server.reset()
    refused = invoke("runs", "synth", document["run_id"])
    assert refused.exit_code == 2 and "no persona answered" in refused.stderr
    assert server.requests == []
    after = json.loads(invoke("runs", "show", document["run_id"], "--json").stdout)
    assert after == document
