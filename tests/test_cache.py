"""The response cache (issue 25.4): identical requests answered from a local store, not the
network; marked cached, costing $0; only complete answers kept; fanout cache shows and
clears it; nothing secret in it."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import fanout
from fanout.cache import CachedAnswer, ResponseCache, request_key
from fanout.models import Agent
from tests.conftest import AgentsFile, Invoke
from tests.fakeserver import FakeOpenAI, Fault, Reply
from tests.servehelp import until


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def ask_json(invoke: Invoke, *args: str | Path) -> dict[str, Any]:
    result = invoke("ask", *args, "--json")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def database(tmp_path: Path) -> Path:
    return tmp_path / "xdg-data" / "fanout" / "cache.db"


def test_a_second_identical_batch_sends_nothing_and_is_marked_cached(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, tmp_path: Path
) -> None:
    config = agents_file("a", "b")
    prompts = tmp_path / "q.txt"
    prompts.write_text("one\ntwo\nthree\n", encoding="utf-8")
    first = invoke("batch", prompts, "-c", config, "--cache", "-o", tmp_path / "1.jsonl")
    assert first.exit_code == 0, first.output
    assert server.count() == 6
    assert not any(line["cached"] for line in lines((tmp_path / "1.jsonl").read_text()))
    again = invoke("batch", prompts, "-c", config, "--cache", "-o", tmp_path / "2.jsonl")
    assert again.exit_code == 0, again.output
    assert server.count() == 6  # nothing more was sent
    answers = lines((tmp_path / "2.jsonl").read_text())
    assert len(answers) == 6 and all(a["cached"] is True for a in answers)
    assert all(a["cost_usd"] == 0 and a["usage"]["total_tokens"] == 0 for a in answers)
    assert {a["answer"] for a in answers} == {
        f"m-{n} says: {p}" for n in "ab" for p in ("one", "two", "three")
    }
    assert "6 cached" in again.stderr


def test_the_cache_is_off_unless_asked(
    server: FakeOpenAI,
    agents_file: AgentsFile,
    invoke: Invoke,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = agents_file("a")
    ask_json(invoke, "-c", config, "Q")
    ask_json(invoke, "-c", config, "Q")
    assert server.count() == 2
    monkeypatch.setenv("FANOUT_CACHE", "1")  # on by default from here
    ask_json(invoke, "-c", config, "Q")
    assert ask_json(invoke, "-c", config, "Q")["agents"][0]["cached"] is True
    assert server.count() == 3
    assert ask_json(invoke, "-c", config, "--no-cache", "Q")["agents"][0]["cached"] is False
    assert server.count() == 4


def test_best_of_n_still_gets_n_answers(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.script("m-a", *(Reply(text=f"take {i}") for i in (1, 2, 3)))
    config = agents_file("a")
    first = ask_json(invoke, "-c", config, "-a", "a:3", "--cache", "Q")
    again = ask_json(invoke, "-c", config, "-a", "a:3", "--cache", "Q")
    assert server.count() == 3
    answers = {c["name"]: c["answer"] for c in again["agents"]}
    assert answers == {c["name"]: c["answer"] for c in first["agents"]}
    assert sorted(answers.values()) == ["take 1", "take 2", "take 3"]
    assert all(c["cached"] for c in again["agents"])


def test_only_complete_answers_are_kept(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.script("m-a", Reply(text="cut", finish_reason="length"))
    server.script("m-b", Fault(400))
    server.script("m-c", Reply(text="filtered", finish_reason="content_filter"))
    config = agents_file("a", "b", "c")
    invoke("ask", "-c", config, "--cache", "--json", "Q")
    again = invoke("ask", "-c", config, "--cache", "--json", "Q")
    assert server.count() == 6  # every one asked again
    assert not any(c["cached"] for c in json.loads(again.stdout)["agents"])


def test_a_different_request_is_a_miss(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    config = agents_file("a")
    ask_json(invoke, "-c", config, "--cache", "Q")
    ask_json(invoke, "-c", config, "--cache", "Q2")  # another prompt
    ask_json(invoke, "-c", config, "--cache", "--param", "seed=1", "Q")  # another field
    ask_json(invoke, "-c", config, "--cache", "-m", "m-other", "Q")  # another model
    ask_json(invoke, "-c", config, "--cache", "-s", "Q")  # the persona's is cached; a synthesis
    assert server.count() == 5


def test_a_cached_answer_is_marked_in_the_views(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    config = agents_file("a", "b")
    invoke("ask", "-c", config, "--cache", "-a", "a", "Q")
    markdown = invoke("ask", "-c", config, "--cache", "Q")
    assert "## a · cached" in markdown.stdout and "## b\n" in markdown.stdout
    assert "(1 cached)" in markdown.stdout
    table = invoke("ask", "-c", config, "--cache", "--format", "table", "Q")
    assert "cached" in table.stdout
    events = lines(invoke("ask", "-c", config, "--cache", "--jsonl", "Q").stdout)
    finished = {e["agent"]: e["result"]["cached"] for e in events if e["type"] == "agent_finished"}
    assert finished == {"a": True, "b": True}


def test_flows_use_the_cache_too(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, tmp_path: Path
) -> None:
    config = agents_file("a")
    flow = tmp_path / "flow.yaml"
    flow.write_text(
        "name: f\nstages:\n  - id: one\n    agent: a\n    prompt: Say hi\n"
        "  - id: two\n    agent: a\n    prompt: 'Again: {{one}}'\n",
        encoding="utf-8",
    )
    for _ in range(2):
        result = invoke("flow", "run", flow, "-c", config, "--cache", "--json")
        assert result.exit_code == 0, result.output
    assert server.count() == 2
    calls = [c for s in json.loads(result.stdout)["stages"] for c in s["calls"]]
    assert [c["cached"] for c in calls] == [True, True]


def test_fanout_cache_shows_and_clears_it(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    config = agents_file("a", "b")
    ask_json(invoke, "-c", config, "--cache", "Q")
    shown = invoke("cache", "--json")
    assert shown.exit_code == 0, shown.output
    stats = json.loads(shown.stdout)
    assert stats["answers"] == 2 and stats["models"] == {"m-a": 1, "m-b": 1}
    assert stats["bytes"] > 0
    text = invoke("cache").stdout
    assert "2 answers" in text and "m-a" in text
    cleared = invoke("cache", "clear")
    assert cleared.exit_code == 0 and cleared.stdout == ""
    assert "cleared 2 answers" in cleared.stderr
    assert json.loads(invoke("cache", "--json").stdout)["answers"] == 0
    ask_json(invoke, "-c", config, "--cache", "Q")
    assert server.count() == 4


def test_no_key_or_header_value_is_in_the_store(
    server: FakeOpenAI,
    agents_file: AgentsFile,
    invoke: Invoke,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-cache-SENTINEL-123456")
    monkeypatch.setenv("HDR", "hdr-SENTINEL-654321")
    config = agents_file("a", extra={"a": {"extra_headers": {"X-Key": "${HDR}"}}})
    ask_json(invoke, "-c", config, "--cache", "Q")
    monkeypatch.setenv("HDR", "another-value")  # another header value: another request
    ask_json(invoke, "-c", config, "--cache", "Q")
    assert server.count() == 2
    ResponseCache.shared(database(tmp_path)).flush()
    with sqlite3.connect(database(tmp_path)) as db:
        dump = "\n".join(db.iterdump())
    assert "SENTINEL" not in dump
    assert oct(database(tmp_path).stat().st_mode & 0o777) == "0o600"


def test_answers_are_written_by_the_time_the_process_ends(
    server: FakeOpenAI, agents_file: AgentsFile, tmp_path: Path
) -> None:
    config = agents_file("a")
    env = {**os.environ, "PYTHONPATH": str(Path(fanout.__file__).parents[1])}
    command = [sys.executable, "-m", "fanout", "ask", "-c", str(config), "--cache", "--json", "Q"]
    for _ in range(2):
        done = subprocess.run(command, env=env, capture_output=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
    assert server.count() == 1
    assert json.loads(done.stdout)["agents"][0]["cached"] is True


def test_the_python_api_of_the_cache(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "c.db")
    agent = Agent("a", model="m")
    messages = [{"role": "user", "content": "Q"}]
    key = request_key(agent, messages, repeat=1)
    assert key != request_key(agent, messages, repeat=2)
    assert len(key) == 64 and cache.get(key) is None
    cache.put(key, CachedAnswer("an answer", "stop"), "m")
    assert cache.get(key) == CachedAnswer("an answer", "stop")  # before it is written, too
    cache.flush()
    assert cache.stats().answers == 1
    cache.close()
    assert ResponseCache(tmp_path / "c.db").get(key) == CachedAnswer("an answer", "stop")


def test_the_writer_thread_ends_when_there_is_nothing_to_write(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "c.db", idle_s=0.01)
    agent = Agent("a", model="m")
    for n in range(3):
        cache.put(request_key(agent, [], repeat=n), CachedAnswer(f"answer {n}"), "m")
        cache.flush()
        writers = [t for t in threading.enumerate() if t.name == "fanout-cache"]
        until(lambda w=writers: not any(t.is_alive() for t in w), what="the writer to end")
    assert cache.stats().answers == 3


def test_a_fallback_s_answer_is_kept_and_asked_again_from_the_cache(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    # The persona's own model fails; its fallback answers. Asked again, the fallback's answer
    # comes from the cache (the first model is tried again: it may be back).
    config = agents_file("a", extra={"a": {"fallbacks": ["m-fb"]}})
    server.script("m-a", Fault(500), Fault(500))
    first = ask_json(invoke, "-c", config, "--cache", "--retries", "0", "Q?")
    (call,) = first["stages"][0]["calls"]
    assert call["model"] == "m-fb" and call["cached"] is False
    assert [r.model for r in server.requests] == ["m-a", "m-fb"]
    server.reset()
    server.script("m-a", Fault(500))
    again = ask_json(invoke, "-c", config, "--cache", "--retries", "0", "Q?")
    (call,) = again["stages"][0]["calls"]
    assert [r.model for r in server.requests] == ["m-a"]  # the fallback was not asked again
    assert call["model"] == "m-fb" and call["cached"] is True and call["status"] == "ok"
    assert call["answer"] == "m-fb says: Q?"
    assert [g["model"] for g in call["fell_back_from"]] == ["m-a"]
