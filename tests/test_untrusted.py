"""What fanout reads but did not write: JSON bounded in size and depth, and the keys it sends
hidden in whatever a server sends back (answers, streamed pieces, tool calls, batch results),
before anything shows or stores it."""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path

import pytest

from fanout.untrusted import (
    MAX_DEPTH,
    KeyScrubber,
    ScrubbedStream,
    UnreadableJSON,
    load_json,
)
from tests.conftest import SENTINEL_KEY, AgentsFile, Invoke
from tests.fakeserver import FakeOpenAI, Reply

# -- bounded JSON -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '{"choice": ' + "[" * 100_000,  # RecursionError in json.loads
        "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1),  # parses, but deeper than a reply
        '{"a": ' * (MAX_DEPTH + 1) + "1" + "}" * (MAX_DEPTH + 1),
    ],
    ids=["unending", "lists", "objects"],
)
def test_json_nested_too_deeply_is_a_value_error(text: str) -> None:
    with pytest.raises(UnreadableJSON, match="nested"):
        load_json(text)
    with pytest.raises(ValueError):  # what every reader already catches as "not JSON"
        load_json(text)


def test_json_within_the_bounds_reads_and_too_long_is_refused_before_parsing() -> None:
    deep = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert isinstance(load_json(deep), list)
    assert load_json('{"choice": "Paris"}') == {"choice": "Paris"}
    with pytest.raises(UnreadableJSON, match="characters"):
        load_json('"' + "x" * 100 + '"', max_chars=50)
    assert load_json('"' + "x" * 100 + '"', max_chars=None) == "x" * 100


# -- keys -------------------------------------------------------------------------------------


def test_a_key_split_anywhere_across_streamed_pieces_never_shows() -> None:
    scrubber = KeyScrubber([SENTINEL_KEY, "x"])  # a key too short to hide is left alone
    text = f"the key {SENTINEL_KEY}, again {SENTINEL_KEY}; its start alone: {SENTINEL_KEY[:6]}"
    rng = random.Random(7)
    for _ in range(200):
        shown: list[str] = []
        stream = ScrubbedStream(scrubber, shown.append)
        at = 0
        while at < len(text):
            size = rng.randint(1, 9)
            stream(text[at : at + size])
            at += size
        stream.flush()
        assert all(SENTINEL_KEY not in "".join(shown[: i + 1]) for i in range(len(shown)))
        assert "".join(shown) == scrubber.scrub(text)
    assert scrubber.scrub(text) == f"the key ***, again ***; its start alone: {SENTINEL_KEY[:6]}"


def test_a_key_as_repr_escapes_it_is_hidden_too() -> None:
    key = 'sk-"quoted"\\key'
    assert KeyScrubber([key]).scrub(f"echo: {repr(key)[1:-1]}") == "echo: ***"


@pytest.mark.parametrize("stream", ["--stream", "--no-stream"])
def test_a_key_echoed_inside_answers_is_never_stored_or_shown(
    stream: str,
    server: FakeOpenAI,
    agents_file: AgentsFile,
    invoke: Invoke,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("FANOUT_TEST_KEY", SENTINEL_KEY)
    server.script("m-physicist", Reply(text=f"You sent me {SENTINEL_KEY} as your key."))
    server.script("m-synthesizer", Reply(text=f"Both saw {SENTINEL_KEY}."))
    config = agents_file(
        "physicist",
        "chemist",
        defaults={"api_key_env": "FANOUT_TEST_KEY"},
        synthesizer={"model": "m-synthesizer"},
    )
    jsonl = invoke("ask", "-c", config, stream, "--jsonl", "--synthesize", "Why?")
    assert jsonl.exit_code == 0, jsonl.output
    assert server.requests[0].headers["authorization"] == f"Bearer {SENTINEL_KEY}"
    lines = [json.loads(line) for line in jsonl.stdout.splitlines()]
    assert any("You sent me *** as your key." in json.dumps(line) for line in lines)
    run_id = lines[-1]["run_id"]
    html = tmp_path / "run.html"
    shown = [
        jsonl.stdout,
        jsonl.stderr,
        invoke("runs", "show", run_id).stdout,
        invoke("runs", "show", run_id, "--json").stdout,
        invoke("runs", "export", run_id, "--format", "perfetto").stdout,
        invoke("runs", "export", run_id, "--format", "html", "-o", html).stdout,
        html.read_text(),
    ]
    database = next((tmp_path / "xdg-data").rglob("history.db"))
    with sqlite3.connect(database) as db:
        shown += [str(row) for row in db.execute("SELECT * FROM runs")]
        shown += [str(row) for row in db.execute("SELECT * FROM calls")]
    for text in shown:
        assert "SENTINEL" not in text


def test_a_key_echoed_in_a_tool_call_reaches_no_other_server(
    server: FakeOpenAI,
    agents_file: AgentsFile,
    invoke: Invoke,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FANOUT_TEST_KEY", SENTINEL_KEY)
    config = agents_file("physicist", defaults={"api_key_env": "FANOUT_TEST_KEY"})
    config.write_text(config.read_text() + "orchestrator:\n  model: m-orch\n")
    question = {"question": f"is {SENTINEL_KEY} a key?"}
    server.script(
        "m-orch",
        Reply(tool_calls=[{"name": "ask_physicist", "arguments": question}]),
        Reply(text="done"),
    )
    result = invoke("ask", "-c", config, "--orchestrate", "--json", "Why?")
    assert result.exit_code == 0, result.output
    (asked,) = [r for r in server.requests if r.model == "m-physicist"]
    assert asked.body["messages"][-1]["content"] == "is *** a key?"
    assert "SENTINEL" not in result.stdout + result.stderr


def test_a_key_echoed_in_batch_api_results_is_not_written(
    server: FakeOpenAI,
    agents_file: AgentsFile,
    invoke: Invoke,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("FANOUT_TEST_KEY", SENTINEL_KEY)
    server.script("m-a", Reply(text=f"key {SENTINEL_KEY}"))
    config = agents_file("a", defaults={"api_key_env": "FANOUT_TEST_KEY"})
    source, out = tmp_path / "q.txt", tmp_path / "out.jsonl"
    source.write_text("one\n")
    result = invoke(
        "batch", source, "-c", config, "-o", out, "--via", "openai-batch", "--poll-interval", "0.01"
    )
    assert result.exit_code == 0, result.output
    (line,) = [json.loads(text) for text in out.read_text().splitlines()]
    assert line["answer"] == "key ***"
    assert "SENTINEL" not in result.stdout + result.stderr
