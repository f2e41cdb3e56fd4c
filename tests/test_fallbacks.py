"""Fallbacks (issue 25.3): a persona's fallbacks: are tried in order when its model gives up
after its retries (unavailable, rate limit past the wait bound, no such model), never on a bad
request or a content refusal; the document names the model that answered and why the first did
not, and every attempt's cost is counted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import AgentsFile, Invoke, assert_usage_error
from tests.fakeserver import FakeOpenAI, Fault, Reply

FAST = {"retry-after-ms": "1"}  # retried faults without waiting on backoff


def panel(agents_file: AgentsFile, fallbacks: list[Any], **extra: Any) -> Path:
    return agents_file("a", "b", extra={"a": {"fallbacks": fallbacks, **extra}})


def ask(invoke: Invoke, config: Path, *args: str) -> tuple[dict[str, Any], str]:
    result = invoke("ask", "-c", config, "--json", *args, "Q")
    assert result.exit_code in (0, 1, 3), (result.stdout, result.stderr)
    return json.loads(result.stdout), result.stderr


def entry(document: dict[str, Any], name: str = "a") -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in document["agents"] if c["name"] == name)
    return found


def test_an_unavailable_model_falls_back_and_the_document_says_which_answered(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.script("m-a", Fault(503, headers=FAST), Fault(503, headers=FAST))
    config = panel(agents_file, ["m-second", "m-third"])
    document, stderr = ask(invoke, config, "--retries", "1")
    a = entry(document)
    assert a["status"] == "ok" and a["answer"] == "m-second says: Q"
    assert a["model"] == "m-second"
    assert a["attempts"] == 3
    (gave_up,) = a["fell_back_from"]
    assert gave_up["model"] == "m-a" and gave_up["attempts"] == 2
    assert gave_up["error"]["type"] == "server_error" and gave_up["error"]["status_code"] == 503
    assert (server.count("m-a"), server.count("m-second"), server.count("m-third")) == (2, 1, 0)
    assert "a: m-a gave up (503: HTTP 503" in stderr and "asking m-second" in stderr
    assert [t["attempt"] for t in a["timing"]["attempts"]] == [1, 2, 3]


def test_fallbacks_are_tried_in_order_until_one_answers(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.script("m-a", Fault(404, body={"error": {"message": "The model does not exist"}}))
    server.script("m-second", Fault(500, headers=FAST))
    document, _ = ask(invoke, panel(agents_file, ["m-second", "m-third"]), "--retries", "0")
    a = entry(document)
    assert a["model"] == "m-third" and a["status"] == "ok"
    assert [(g["model"], g["error"]["type"]) for g in a["fell_back_from"]] == [
        ("m-a", "not_found"),
        ("m-second", "server_error"),
    ]
    assert a["attempts"] == 3


def test_the_last_error_stands_when_every_model_gives_up(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.script("m-a", Fault(502))
    server.script("m-second", Fault(504))
    document, _ = ask(invoke, panel(agents_file, ["m-second"]), "--retries", "0")
    a = entry(document)
    assert a["status"] == "error" and a["model"] == "m-second"
    assert a["error"]["status_code"] == 504
    assert a["fell_back_from"][0]["error"]["status_code"] == 502


@pytest.mark.parametrize(
    "step",
    [
        Fault(400, body={"error": {"message": "Invalid 'messages'"}}),
        Fault(400, body={"error": {"message": "flagged", "code": "content_filter"}}),
        Fault(401),
        Fault(429, code="insufficient_quota"),
    ],
    ids=["bad_request", "content_filter_400", "auth", "insufficient_quota"],
)
def test_no_fallback_for_what_another_model_would_meet_the_same(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, step: Fault
) -> None:
    server.script("m-a", step)
    document, _ = ask(invoke, panel(agents_file, ["m-second"]), "--retries", "0")
    a = entry(document)
    assert a["status"] == "error" and a["model"] == "m-a" and "fell_back_from" not in a
    assert server.count("m-second") == 0


def test_a_content_refusal_is_an_answer_not_a_reason_to_fall_back(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.script("m-a", Reply(text="I can't help with that.", finish_reason="content_filter"))
    document, _ = ask(invoke, panel(agents_file, ["m-second"]))
    a = entry(document)
    assert a["status"] == "ok" and a["model"] == "m-a" and a["finish_reason"] == "content_filter"
    assert server.count("m-second") == 0


def test_a_rate_limit_past_the_wait_bound_falls_back_to_another_endpoint(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTHER_KEY", "sk-other-0123456789")
    other = f"http://127.0.0.1:{server.port}"  # the same server by another way: its own limits
    server.script("m-a", Fault(429, headers={"retry-after": "3600"}))
    config = panel(
        agents_file, [{"model": "m-elsewhere", "base_url": other, "api_key_env": "OTHER_KEY"}]
    )
    document, _ = ask(invoke, config, "--max-retry-after", "5")
    a = entry(document)
    assert a["model"] == "m-elsewhere" and a["status"] == "ok"
    assert "3600" in a["fell_back_from"][0]["error"]["message"]
    (sent,) = [r for r in server.requests if r.model == "m-elsewhere"]
    assert sent.path == "/chat/completions"
    assert sent.headers["authorization"] == "Bearer sk-other-0123456789"


def test_a_fallback_on_another_endpoint_needs_its_key_up_front(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    config = panel(
        agents_file,
        [{"model": "m-x", "base_url": "https://api.example.com/v1", "api_key_env": "NO_KEY"}],
    )
    assert_usage_error(invoke("ask", "-c", config, "Q"), "(a fallback)", "$NO_KEY")
    assert server.count() == 0


def test_every_attempt_is_counted_and_priced_at_its_own_model(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    # The first model's stream reports its usage, then ends without an end: billed, retried,
    # then given up on.
    spent = {"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100}
    broken = Reply(text="half an", finish_reason=None, send_done=False, usage=spent)
    server.script("m-a", broken, broken)
    server.script("m-second", Reply(text="whole", usage={**spent, "completion_tokens": 10}))
    config = panel(agents_file, ["m-second"])
    with config.open("a", encoding="utf-8") as out:
        out.write("pricing:\n  m-a: {input: 1.0, output: 2.0}\n  m-second: {input: 3, output: 5}\n")
    document, _ = ask(invoke, config, "--stream", "--retries", "1")
    a = entry(document)
    assert a["status"] == "ok" and a["model"] == "m-second"
    assert a["usage"]["input_tokens"] == 3000 and a["usage"]["output_tokens"] == 210
    first, second = (1000 * 1.0 + 100 * 2.0) / 1e6, (1000 * 3 + 10 * 5) / 1e6
    assert a["cost_usd"] == pytest.approx(2 * first + second)


def test_a_fallback_shows_in_the_views_and_the_event_stream(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.script("m-a", Fault(500), Fault(500))
    config = panel(agents_file, ["m-second"])
    markdown = invoke("ask", "-c", config, "--retries", "0", "-a", "a", "Q")
    assert markdown.exit_code == 0, markdown.output
    assert "## a · 2 attempts · m-second after m-a" in markdown.stdout
    lines = invoke("ask", "-c", config, "--retries", "0", "-a", "a", "--jsonl", "Q").stdout
    events = [json.loads(line) for line in lines.splitlines()]
    (fallback,) = [e for e in events if e["type"] == "fallback"]
    assert fallback["from_model"] == "m-a" and fallback["model"] == "m-second"
    assert fallback["reason"] == "500" and fallback["call_id"] == "panel/a"


def test_runs_retry_keeps_the_fallbacks(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.script("m-a", Fault(500), Fault(500))
    server.script("m-second", Fault(500))
    first, _ = ask(invoke, panel(agents_file, ["m-second"]), "--retries", "0", "-a", "a")
    assert first["status"] == "failed"
    again = invoke("runs", "retry", first["run_id"], "--json")
    assert again.exit_code == 0, again.output
    a = entry(json.loads(again.stdout))
    assert a["model"] == "m-second" and a["status"] == "ok"


@pytest.mark.parametrize(
    ("fallbacks", "fragments"),
    [
        ([{"modle": "x"}], ("fallbacks", "did you mean 'model'?")),
        ([{"model": "x", "base_url": "local"}], ("fallbacks", "not local")),
        ([{"model": "x", "base_url": "https://u:p@h.example/v1"}], ("no user or password",)),
        ("m-b", ("fallbacks", "list")),
    ],
)
def test_a_bad_fallback_is_one_line(
    agents_file: AgentsFile, invoke: Invoke, fallbacks: Any, fragments: tuple[str, ...]
) -> None:
    assert_usage_error(invoke("ask", "-c", panel(agents_file, fallbacks), "Q"), *fragments)
