"""The final view of a run (issue #13): what the user reads once the run is over, on a terminal
and through a pipe, driven through the real ``fanout`` against the loopback server."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SENTINEL_KEY, AgentsFile, Invoke
from tests.fakeserver import FakeOpenAI, Fault, Malformed, Reply
from tests.terminal import Terminal

# A title-setting OSC, a clear-screen CSI and a one-byte CSI (0x9b): what an answer must never
# get a terminal to do.
EVIL = "Hi \x1b]0;pwned\x07 there \x1b[2J and \x9b31m red"
EVIL_SHOWN = "Hi ␛]0;pwned␇ there ␛[2J and \\x9b31m red"
EVIL_ERROR = {"error": {"message": "bad \x1b]0;err\x07 key \x9b2J", "type": "x", "code": None}}


def acted_on(text: str) -> list[str]:
    """Escape sequences in ``text`` that do something but set a colour or a style, or leave
    the alternate screen (the board's, not the answer's), and any one-byte CSI."""
    found = re.findall(r"\x1b(?!\[[0-9;]*m|\[\?(?:1049|25|2026)[hl])..?", text)
    return found + (["\x9b"] if "\x9b" in text else [])


def ask_json(invoke: Invoke, *args: str | Path) -> dict[str, Any]:
    result = invoke("ask", *args, "--json")
    assert result.exit_code in (0, 3), (result.stdout, result.stderr)
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def evil_panel(server: FakeOpenAI, agents_file: AgentsFile) -> Path:
    server.script("m-alpha", Reply(text=EVIL))
    server.script("m-beta", Fault(500, body=EVIL_ERROR), Fault(400, body=EVIL_ERROR))
    return agents_file("alpha", "beta")


@pytest.mark.parametrize("view", ["table", "columns", "md", "text"])
def test_escape_sequences_in_answers_are_shown_never_acted_on_in_a_terminal(
    server: FakeOpenAI, agents_file: AgentsFile, view: str
) -> None:
    config = evil_panel(server, agents_file)
    term = Terminal(["ask", "-c", config, "--format", view, "Why?"], 30, 120)
    try:
        code = term.finish()
    finally:
        term.close()
    assert code == 3, term.output
    final = term.output[term.output.rfind("\x1b[?1049l") :]  # after the board
    assert acted_on(final) == [], final
    main = term.main_text()
    assert "␛]0;pwned␇" in main and "␛[2J" in main and "\\x9b31m" in main, main
    assert "␛]0;err␇" in main, main
    assert "pwned" not in (term.screen.title or "")


def test_json_and_the_history_keep_the_answer_as_the_server_sent_it(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    config = evil_panel(server, agents_file)
    document = ask_json(invoke, "-c", config, "Why?")
    answers = {a["name"]: a for a in document["agents"]}
    assert answers["alpha"]["answer"] == EVIL
    assert "\x1b]0;err\x07" in answers["beta"]["error"]["message"]
    stored = json.loads(invoke("runs", "show", document["run_id"], "--json").stdout)
    assert stored["agents"][0]["answer"] == EVIL
    piped = invoke("runs", "show", document["run_id"], "-a", "alpha", "--raw")
    assert piped.stdout == EVIL + "\n"  # --raw through a pipe: as written
    md = invoke("runs", "show", document["run_id"], "--format", "md")
    assert EVIL in md.stdout  # Markdown through a pipe: as written too


@pytest.mark.parametrize(
    "args", [[], ["--format", "table"], ["--format", "md"], ["--format", "text"], ["--raw"]]
)
def test_runs_show_on_a_terminal_neutralises_what_the_server_wrote(
    server: FakeOpenAI,
    agents_file: AgentsFile,
    invoke: Invoke,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
) -> None:
    config = evil_panel(server, agents_file)
    run_id = ask_json(invoke, "-c", config, "Why \x1b[2J?")["run_id"]
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # stdout counts as a terminal
    shown = invoke("runs", "show", run_id, *(["-a", "alpha"] if "--raw" in args else []), *args)
    assert shown.exit_code == 0, shown.stderr
    assert acted_on(shown.stdout) == [], shown.stdout
    assert "␛]0;pwned␇" in shown.stdout
    if "--raw" not in args:
        assert "␛]0;err␇" in shown.stdout and "Why ␛[2J?" in shown.stdout


def test_progress_and_errors_on_stderr_are_neutralised(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    config = evil_panel(server, agents_file)
    result = invoke("ask", "-c", config, "--json", "Why?")
    assert "beta: failed: HTTP 400: bad ␛]0;err␇ key \\x9b2J" in result.stderr, result.stderr
    assert "\x1b" not in result.stderr and "\x9b" not in result.stderr, result.stderr


def retried_panel(server: FakeOpenAI, agents_file: AgentsFile) -> Path:
    quick = {"retry-after-ms": "1"}  # the server's wait wins over backoff: no time lost
    server.script("m-alpha", Fault(500, headers=quick), Fault(502, headers=quick), Reply())
    server.script("m-beta", Fault(500, headers=quick), Fault(400))
    return agents_file("alpha", "beta", "gamma")


def test_the_table_shows_the_attempts_under_the_latency(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    config = retried_panel(server, agents_file)
    result = invoke("ask", "-c", config, "--format", "table", "Why?")
    assert result.exit_code == 3, result.stderr
    rows = result.stdout.split("├")
    alpha = next(r for r in rows if "alpha" in r)
    assert re.search(r"│\s+\d+\.\d\d s │.*\n.*│\s+3 attempts │", alpha), alpha
    beta = next(r for r in rows if "beta" in r)
    assert "2 attempts │" in beta and "after 2 attempts" in beta, beta
    gamma = next(r for r in rows if "gamma" in r)
    assert "attempts" not in gamma, gamma


@pytest.mark.parametrize("view", ["md", "text"])
def test_plain_output_mentions_the_attempts_of_an_answer_that_took_retries(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, view: str
) -> None:
    config = retried_panel(server, agents_file)
    result = invoke("ask", "-c", config, "--format", view, "Why?")
    heading = "## alpha · 3 attempts" if view == "md" else "alpha (m-alpha) · 3 attempts"
    assert f"{heading}\nm-alpha says: Why?" in result.stdout, result.stdout
    assert "✗ bad_request after 2 attempts: HTTP 400" in result.stdout
    assert "gamma ·" not in result.stdout and "gamma (m-gamma) ·" not in result.stdout


SIX = ("a", "b", "c", "d", "e", "f")
REJECTED = {"error": {"message": f"Incorrect API key provided: {SENTINEL_KEY}.", "type": "x"}}


def bad_key_panel(
    server: FakeOpenAI, agents_file: AgentsFile, monkeypatch: pytest.MonkeyPatch, status: int
) -> Path:
    monkeypatch.setenv("FANOUT_BAD_KEY", SENTINEL_KEY)
    server.default = Fault(status, body=REJECTED)
    return agents_file(*SIX, defaults={"api_key_env": "FANOUT_BAD_KEY"})


@pytest.mark.parametrize("status", [401, 403])
def test_a_rejected_key_is_said_once_and_closes_the_endpoint(
    server: FakeOpenAI,
    agents_file: AgentsFile,
    invoke: Invoke,
    monkeypatch: pytest.MonkeyPatch,
    status: int,
) -> None:
    config = bad_key_panel(server, agents_file, monkeypatch, status)
    result = invoke("ask", "-c", config, "-s", "--concurrency", "1", "--json", "Why?")
    assert result.exit_code == 1, result.stderr
    # A 401 closes the endpoint: the first call learnt it, the others were never sent. A 403
    # closes nothing (it may be about one model, or one request): said once all the same.
    assert server.count() == (1 if status == 401 else len(SIX))
    verb = "refused" if status == 401 else "denied a request made with"
    said = f"(127.0.0.1 {verb} the key in $FANOUT_BAD_KEY)"
    assert result.stderr.count(said) == 1, result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"HTTP {status}: Incorrect API key provided: ***.")
    document = json.loads(result.stdout)
    for answer in document["agents"]:  # each call keeps its error in the document
        assert answer["status"] == "error"
        assert answer["error"]["status_code"] == status and said in answer["error"]["message"]
    synthesis = document["stages"][1]["calls"][0]
    assert synthesis["status"] == "skipped"
    assert synthesis["error"]["message"] == "no persona answered, nothing to synthesize"
    assert SENTINEL_KEY not in result.stdout + result.stderr


@pytest.mark.parametrize("view", ["table", "md", "text"])
def test_the_final_view_says_a_rejected_key_once(
    server: FakeOpenAI,
    agents_file: AgentsFile,
    invoke: Invoke,
    monkeypatch: pytest.MonkeyPatch,
    view: str,
) -> None:
    config = bad_key_panel(server, agents_file, monkeypatch, 401)
    result = invoke("ask", "-c", config, "--format", view, "Why?")
    assert result.exit_code == 1, result.stderr
    said = "(127.0.0.1 refused the key in $FANOUT_BAD_KEY)"
    assert result.stdout.count(said) == 1, result.stdout
    assert "6 calls failed on it" in result.stdout
    assert result.stdout.count("HTTP 401, key refused") == 6, result.stdout
    assert result.stderr.count(said) == 1, result.stderr
    assert SENTINEL_KEY not in result.stdout + result.stderr


def test_a_batch_with_a_rejected_key_says_it_once(
    server: FakeOpenAI,
    agents_file: AgentsFile,
    invoke: Invoke,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    config = bad_key_panel(server, agents_file, monkeypatch, 401)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"Question {n}?\n" for n in range(5)))
    result = invoke("batch", prompts, "-c", config, "-a", "a,b", "--concurrency", "1")
    assert result.exit_code == 1, result.stderr
    assert server.count() == 1
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 10 and all(line["error"]["status_code"] == 401 for line in lines)
    notices = [line for line in result.stderr.splitlines() if "refused the key" in line]
    assert len(notices) == 1, result.stderr
    assert SENTINEL_KEY not in result.stdout + result.stderr


def sse(*chunks: dict[str, Any]) -> Malformed:
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    return Malformed(body=body, content_type="text/event-stream")


NUMBER_CONTENT = {"choices": [{"index": 0, "message": {"content": 5}, "finish_reason": "stop"}]}
PLAIN_FAULTS = {
    "no choices": (
        Malformed(body=json.dumps({"id": "x", "model": "m"})),
        "the server's reply has no choices",
    ),
    "content a number": (
        Malformed(body=json.dumps(NUMBER_CONTENT)),
        "choices[0].message.content is a number, not text",
    ),
    "streamed content a number": (
        sse({"choices": [{"index": 0, "delta": {"content": 5}, "finish_reason": "stop"}]}),
        "choices[0].delta.content is a number, not text",
    ),
    "streamed choices an object": (
        sse({"choices": {"a": 1}}),
        "choices in a stream chunk is an object, not a list",
    ),
    "streamed choices of text": (  # it said "choices ... is a list, not a list"
        sse({"choices": ["oops"]}),
        "choices[0] in a stream chunk is text, not an object",
    ),
    "streamed delta a list": (
        sse({"choices": [{"index": 0, "delta": [1], "finish_reason": "stop"}]}),
        "choices[0].delta is a list, not an object",
    ),
    "structured reply with no message": (
        Malformed(body=json.dumps({"choices": [{"index": 0, "message": "x"}]})),
        "choices[0].message is text, not an object",
    ),
}
PYDANTIC = ("validation error", "type=", "errors.pydantic.dev", "Input should")


@pytest.mark.parametrize("fault", PLAIN_FAULTS)
def test_a_malformed_reply_is_told_in_plain_words(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, fault: str
) -> None:
    step, words = PLAIN_FAULTS[fault]
    server.script("m-alpha", step)
    flags = ["--stream"] if "streamed" in fault else ["--no-stream"]
    if "structured" in fault:
        flags += ["--vote"]  # its ballots ask for structured output
    result = invoke("ask", "-c", agents_file("alpha", "beta"), *flags, "--json", "Why?")
    document = json.loads(result.stdout)
    alpha = next(c for s in document["stages"] for c in s["calls"] if c["name"] == "alpha")
    assert alpha["error"]["message"] == f"malformed response: {words}", alpha["error"]
    assert f"alpha: failed: malformed response: {words}" in result.stderr
    for jargon in PYDANTIC:
        assert jargon not in result.stdout + result.stderr


def test_a_batch_api_result_that_is_not_an_answer_is_told_in_plain_words(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, tmp_path: Path
) -> None:
    source = tmp_path / "prompts.txt"
    source.write_text("one\ntwo\n")
    out = tmp_path / "out.jsonl"
    server.script("m-a", Malformed(body=json.dumps(NUMBER_CONTENT)))
    result = invoke(
        "batch", source, "-c", agents_file("a"), "-o", out, "--via", "openai-batch",
        "--poll-interval", "0.01",
    )  # fmt: skip
    assert result.exit_code == 3, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    bad = [line for line in lines if line["status"] != "ok"]
    assert len(bad) == 1 and bad[0]["error"]["message"] == (
        "malformed response: choices[0].message.content is a number, not text"
    )
    for jargon in PYDANTIC:
        assert jargon not in result.stdout + result.stderr + out.read_text()


def test_a_403_leaves_the_endpoint_open_for_the_other_calls(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    # A 403 closed the whole endpoint: a persona on a model the key may use lost its answer
    # to one on a model it may not (and a synthesis on another model was never asked).
    server.script("m-first", Fault(403, body=REJECTED))
    config = agents_file("first", "second", synthesizer={"model": "m-synth"})
    result = invoke("ask", "-c", config, "--concurrency", "1", "-s", "--json", "Why?")
    assert result.exit_code == 3, result.output
    document = json.loads(result.stdout)
    statuses = {a["name"]: a["status"] for a in document["agents"]}
    assert statuses == {"first": "error", "second": "ok"}
    assert document["synthesis"]["status"] == "ok"


def test_a_403_in_a_batch_fails_only_its_own_call(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, tmp_path: Path
) -> None:
    source = tmp_path / "q.txt"
    source.write_text("one\ntwo\nthree\n")
    server.script("m-second", Fault(403, body=REJECTED))
    config = agents_file("first", "second")
    out = tmp_path / "out.jsonl"
    result = invoke("batch", source, "-c", config, "--concurrency", "1", "-o", out)
    assert result.exit_code == 3, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(line["status"] for line in lines) == ["error"] + ["ok"] * 5


@pytest.mark.parametrize("view", ["columns", "table"])
def test_the_summary_line_fits_80_columns(
    server: FakeOpenAI,
    agents_file: AgentsFile,
    invoke: Invoke,
    monkeypatch: pytest.MonkeyPatch,
    view: str,
) -> None:
    # "0/1 answered · 0.09 s · 20 tokens (8 in, 12 out) · $? · failed · run a57bb1740f1e" is 81.
    big = {"prompt_tokens": 123_456, "completion_tokens": 654_321, "total_tokens": 777_777}
    server.default = Reply(usage=big)
    monkeypatch.setenv("COLUMNS", "80")
    result = invoke(
        "ask", "-c", agents_file(*(f"p{i}" for i in range(12))), "--format", view, "Why?"
    )
    assert result.exit_code == 0, result.output
    run_id = json.loads(invoke("runs", "list", "--json").stdout)["runs"][0]["run_id"]
    (line,) = [line for line in result.stdout.splitlines() if "answered" in line]
    assert line.startswith("12/12 answered · ") and line.rstrip().endswith(run_id), line
    assert len(line.rstrip()) <= 80 and "9,333,324 tok" in line, line
    monkeypatch.setenv("COLUMNS", "200")
    wide = invoke("runs", "show", run_id, "--format", view).stdout
    assert "9,333,324 tokens (1,481,472 in, 7,851,852 out)" in wide
