"""Retries, timeouts and rate limits end to end: the test server counts every HTTP attempt."""

from __future__ import annotations

import json
from email.utils import formatdate
from pathlib import Path
from time import time

import pytest

from tests.conftest import AgentsFile, Invoke
from tests.fakeserver import (
    EmptyChoices,
    FakeOpenAI,
    Fault,
    Hang,
    Malformed,
    Reply,
    Reset,
    Trickle,
)

FAST = {"retry-after-ms": "1"}  # keeps retried faults quick without touching backoff
# Server-side arrival times of a connection's first request lag by its TCP set-up, so spacing
# enforced at the client shows up slightly compressed at the server.
ARRIVAL_SLACK = 0.1


def ask_json(invoke: Invoke, config: object, *args: str) -> tuple[int, dict[str, object], str]:
    result = invoke("ask", "-c", config, "--json", *args, "Why?")
    return result.exit_code, json.loads(result.stdout), result.stderr


def agent(document: dict[str, object], index: int = 0) -> dict[str, object]:
    agents = document["agents"]
    assert isinstance(agents, list)
    entry = agents[index]
    assert isinstance(entry, dict)
    return entry


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503])
def test_retryable_status_is_retried_until_success(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, status: int
) -> None:
    server.script("m-physicist", Fault(status, headers=FAST), Fault(status, headers=FAST))
    code, document, stderr = ask_json(invoke, agents_file("physicist"))
    assert code == 0
    assert server.count("m-physicist") == 3
    assert agent(document)["status"] == "ok"
    assert agent(document)["attempts"] == 3
    assert f"physicist: {status}, retrying in" in stderr
    assert "(attempt 2/4)" in stderr and "(attempt 3/4)" in stderr


@pytest.mark.parametrize("retries", [0, 1, 3])
def test_retries_flag_means_exactly_n_retries(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, retries: int
) -> None:
    server.default = Fault(503, headers=FAST)
    code, document, _ = ask_json(invoke, agents_file("physicist"), "--retries", str(retries))
    assert code == 1
    assert server.count() == retries + 1
    entry = agent(document)
    assert entry["attempts"] == retries + 1
    assert entry["error"] == {
        "type": "server_error",
        "message": "HTTP 503: fake 503 error",
        "status_code": 503,
        "retryable": True,
    }


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "bad_request"),
        (401, "auth"),
        (403, "permission"),
        (404, "not_found"),
        (422, "unprocessable"),
    ],
)
def test_client_errors_are_never_retried(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, status: int, kind: str
) -> None:
    server.default = Fault(status, headers=FAST)
    code, document, _ = ask_json(invoke, agents_file("physicist"))
    assert code == 1
    assert server.count() == 1
    error = agent(document)["error"]
    assert isinstance(error, dict)
    assert (error["type"], error["status_code"], error["retryable"]) == (kind, status, False)


def test_insufficient_quota_is_billing_not_rate_limit(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.default = Fault(429, code="insufficient_quota", headers=FAST)
    code, document, _ = ask_json(invoke, agents_file("physicist"))
    assert code == 1
    assert server.count() == 1
    error = agent(document)["error"]
    assert isinstance(error, dict)
    assert error["type"] == "insufficient_quota"
    assert "billing" in str(error["message"])


def test_x_should_retry_header_is_obeyed_both_ways(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.script("m-a", Fault(500, headers={"x-should-retry": "false"}))
    server.script("m-b", Fault(400, headers={"x-should-retry": "true", **FAST}))
    code, document, _ = ask_json(invoke, agents_file("a", "b"))
    assert code == 3
    assert server.count("m-a") == 1
    assert server.count("m-b") == 2
    assert agent(document, 1)["status"] == "ok"


@pytest.mark.parametrize(
    "headers",
    [
        {"retry-after": "0.2"},
        {"retry-after-ms": "200"},
        {"retry-after": "1", "retry-after-ms": "5"},
    ],
    ids=["seconds", "milliseconds", "ms-wins"],
)
def test_retry_after_is_honoured(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, headers: dict[str, str]
) -> None:
    server.script("m-physicist", Fault(429, headers=headers))
    code, _, stderr = ask_json(invoke, agents_file("physicist"))
    assert code == 0
    expected = float(headers.get("retry-after-ms", "0")) / 1000 or float(headers["retry-after"])
    assert f"retrying in {expected:.1f} s" in stderr
    first, second = server.requests
    assert second.started - first.started >= expected  # a lower bound the client guarantees


def test_retry_after_as_http_date(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.script("m-physicist", Fault(429, headers={"retry-after": formatdate(time() + 1)}))
    code, _, stderr = ask_json(invoke, agents_file("physicist"))
    assert code == 0
    assert server.count() == 2
    assert "429, retrying in" in stderr


def test_server_asking_too_long_fails_at_once_and_says_how_long(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.script("m-physicist", Fault(429, headers={"retry-after": "3600"}))
    code, document, _ = ask_json(invoke, agents_file("physicist"), "--max-retry-after", "30")
    assert code == 1
    assert server.count() == 1
    error = agent(document)["error"]
    assert isinstance(error, dict)
    assert "asked to wait 3600 s" in str(error["message"])
    assert "--max-retry-after 30" in str(error["message"])


def test_connection_reset_is_retried(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.script("m-physicist", Reset())
    code, document, stderr = ask_json(invoke, agents_file("physicist"))
    assert code == 0
    assert server.count() == 2
    assert agent(document)["attempts"] == 2
    assert "physicist: connection, retrying" in stderr


@pytest.mark.parametrize(
    ("step", "says"),
    [
        (Malformed(), "malformed response: not JSON"),
        (EmptyChoices(), "no choices"),
        (Malformed("<html>Sign in</html>", content_type="text/html"), "not a JSON chat answer"),
        (Malformed("[" * 100_000), "JSON nested too deeply"),
    ],
    ids=["malformed", "no-choices", "html", "deeply-nested"],
)
@pytest.mark.parametrize("mode", ["--stream", "--no-stream"])
def test_malformed_answers_are_not_retried(
    server: FakeOpenAI,
    agents_file: AgentsFile,
    invoke: Invoke,
    step: Malformed | EmptyChoices,
    says: str,
    mode: str,
) -> None:
    server.script("m-a", step)
    code, document, _ = ask_json(invoke, agents_file("a", "b"), mode)
    assert code == 3
    assert server.count("m-a") == 1
    error = agent(document)["error"]
    assert isinstance(error, dict)
    assert error["type"] == "bad_response"
    assert says in str(error["message"])
    assert agent(document, 1)["status"] == "ok"


@pytest.mark.parametrize("step", [Hang(), Trickle(interval=0.05)], ids=["hang", "trickle"])
def test_stalled_persona_is_cut_at_its_timeout_while_others_answer(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, step: Hang | Trickle
) -> None:
    server.script("m-stuck", step, step)
    config = agents_file("stuck", "fine")
    code, document, _ = ask_json(invoke, config, "--timeout", "0.3", "--retries", "1")
    assert code == 3
    stuck = agent(document)
    assert stuck["status"] == "error"
    assert stuck["attempts"] == 2
    assert server.count("m-stuck") == 2
    error = stuck["error"]
    assert isinstance(error, dict)
    assert (error["type"], error["retryable"]) == ("timeout", True)
    assert agent(document, 1)["status"] == "ok"


def test_persona_timeout_in_yaml_wins_over_the_flag(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.script("m-slow", Reply(latency=0.5))
    config = agents_file("slow", extra={"slow": {"timeout": 5}})
    code, _, _ = ask_json(invoke, config, "--timeout", "0.1", "--retries", "0")
    assert code == 0


def test_a_429_pauses_the_whole_endpoint(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    # a's 429 asks for a 1 s pause; b's own fault (later) asks for 1 ms, but b shares the
    # endpoint, so its retry must wait out a's pause too.
    server.script("m-a", Fault(429, headers={"retry-after": "1"}))
    server.script("m-b", Fault(500, latency=0.2, headers=FAST))
    code, _, _ = ask_json(invoke, agents_file("a", "b"))
    assert code == 0
    a_first = next(r for r in server.requests if r.model == "m-a")
    b_retry = [r for r in server.requests if r.model == "m-b"][1]
    assert b_retry.started - a_first.started >= 1.0


def test_exhausted_rate_limit_headers_hold_the_next_call(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    exhausted = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "500ms"}
    server.script("m-a", Reply(headers=exhausted))
    config = agents_file("a", synthesizer={"model": "m-synth"})
    code, _, _ = ask_json(invoke, config, "-s")
    assert code == 0
    first, synthesis = server.requests
    assert first.finished is not None
    assert synthesis.model == "m-synth"
    assert synthesis.started - first.finished >= 0.5


def test_nonsense_rate_limit_headers_are_ignored(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    nonsense = {"x-ratelimit-remaining-requests": "-1", "x-ratelimit-reset-requests": "soon"}
    server.default = Reply(headers=nonsense)
    code, document, _ = ask_json(invoke, agents_file())
    assert code == 0
    assert document["status"] == "completed"


def test_rpm_flag_spaces_request_starts(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    code, _, _ = ask_json(invoke, agents_file("a", "b", "c", "d"), "--rpm", "120")
    assert code == 0
    starts = sorted(r.started for r in server.requests)
    # a burst of one second's worth (2), then one start every 0.5 s
    assert starts[2] - starts[0] >= 0.5 - ARRIVAL_SLACK
    assert starts[3] - starts[1] >= 0.5 - ARRIVAL_SLACK


def test_rpm_in_yaml_limits_the_endpoint_shared_with_the_synthesizer(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    config = agents_file("a", defaults={"rpm": 60}, synthesizer={"model": "m-synth"})
    code, _, _ = ask_json(invoke, config, "-s")
    assert code == 0
    first, synthesis = server.requests
    assert synthesis.started - first.started >= 1.0 - ARRIVAL_SLACK


def test_concurrency_in_yaml_caps_an_endpoint(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.default = Reply(gate=2)
    config = agents_file("a", "b", "c", "d", defaults={"concurrency": 2})
    code, _, _ = ask_json(invoke, config)
    assert code == 0
    assert server.max_in_flight == 2


def test_a_pause_longer_than_max_retry_after_fails_fast_instead_of_hanging(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    # a's 429 asks for 50 minutes; b shares the endpoint and must not wait that out.
    server.script("m-a", Fault(429, headers={"retry-after": "3000"}))
    code, document, _ = ask_json(invoke, agents_file("a", "b"), "--concurrency", "1")
    assert code == 1
    assert server.count("m-b") == 0
    error = agent(document, 1)["error"]
    assert isinstance(error, dict)
    assert error["type"] == "rate_limit"
    assert "paused this endpoint for 3000 s" in str(error["message"])


def test_an_exhausted_quota_for_half_an_hour_fails_the_synthesis_fast(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    exhausted = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "30m"}
    server.script("m-a", Reply(headers=exhausted))
    config = agents_file("a", synthesizer={"model": "m-synth"})
    code, document, _ = ask_json(invoke, config, "-s")
    assert code == 3
    synthesis = document["synthesis"]
    assert isinstance(synthesis, dict)
    assert synthesis["error"]["type"] == "rate_limit"
    assert server.count("m-synth") == 0


def test_an_impossible_retry_after_date_is_ignored_not_fatal(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    date = "Mon, 01 Jan 99999 00:00:00 GMT"
    server.script("m-a", Fault(503, headers={"retry-after": date, "retry-after-ms": "x"}))
    code, document, _ = ask_json(invoke, agents_file("a"))
    assert code == 0
    assert server.count() == 2
    assert agent(document)["attempts"] == 2


def test_retry_back_off_frees_the_concurrency_slot(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    # a1 and a2 fill both slots, get a 429 and back off for 1 s; b must not wait for them.
    # (b uses another key variable, so it is another endpoint: the 429 pauses only theirs.)
    for model in ("m-a1", "m-a2"):
        server.script(model, Fault(429, headers={"retry-after": "1"}))
    config = agents_file("a1", "a2", "b", extra={"b": {"api_key_env": "OTHER_KEY"}})
    code, _, _ = ask_json(invoke, config, "--concurrency", "2")
    assert code == 0
    a1_retry = [r for r in server.requests if r.model == "m-a1"][1]
    b_first = next(r for r in server.requests if r.model == "m-b")
    assert b_first.started < a1_retry.started


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ([{"type": "text", "text": "part one, "}, {"type": "text", "text": "part two"}], "ok"),
        (42, "bad_response"),
        (None, "ok"),
    ],
    ids=["text-parts", "number", "null"],
)
def test_odd_message_content_never_breaks_the_run(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, content: object, expected: str
) -> None:
    body = {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "m-a",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
    }
    server.script("m-a", Fault(200, body=body))
    code, document, _ = ask_json(invoke, agents_file("a", "b"), "--no-stream")
    assert code == (0 if expected == "ok" else 3)
    entry = agent(document)
    error = entry["error"]
    assert entry["status"] == "ok" or (isinstance(error, dict) and error["type"] == expected)
    assert (entry["status"] == "ok") == (expected == "ok")
    assert agent(document, 1)["status"] == "ok"
    if isinstance(content, list):
        assert entry["answer"] == "part one, part two"


def test_a_broken_emoji_is_repaired_and_the_table_still_renders(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.script("m-a", Reply(text="cut mid-emoji \ud83d"))
    config = agents_file("a", "b")
    code, document, _ = ask_json(invoke, config)
    assert code == 0
    assert str(agent(document)["answer"]).startswith("cut mid-emoji")
    server.script("m-a", Reply(text="cut mid-emoji \ud83d"))
    table = invoke("ask", "-c", config, "Why?")
    assert table.exit_code == 0
    assert "m-b says: Why?" in table.stdout


def _no_constants(name: str) -> object:
    raise ValueError(f"not strict JSON: {name}")


@pytest.mark.parametrize(
    "bad",
    [
        Reply(usage={"prompt_tokens": 3, "completion_tokens": "lots", "total_tokens": 9}),
        Reply(usage={"prompt_tokens": 3, "completion_tokens": [1], "total_tokens": 9}),
        Reply(usage={"prompt_tokens": -3, "completion_tokens": 4, "total_tokens": 1}),
        Reply(raw_usage='{"prompt_tokens": 3, "completion_tokens": 1e400, "total_tokens": 9}'),
        Reply(raw_usage='{"prompt_tokens": NaN, "completion_tokens": 1, "total_tokens": 9}'),
    ],
    ids=["string", "list", "negative", "1e400", "NaN"],
)
@pytest.mark.parametrize("mode", ["--stream", "--no-stream"])
def test_a_bad_usage_from_one_persona_is_estimated_and_loses_no_answer(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, bad: Reply, mode: str
) -> None:
    server.script("m-a", bad)
    result = invoke("ask", "-c", agents_file("a", "b"), "--json", mode, "Why?")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout, parse_constant=_no_constants)
    assert document["status"] == "completed"
    assert document["output"] == {"a": "m-a says: Why?", "b": "m-b says: Why?"}
    entry = agent(document)
    assert entry["usage_estimated"] is True
    usage = entry["usage"]
    assert isinstance(usage, dict)
    assert all(isinstance(n, int) and n >= 0 for n in usage.values())


def test_a_stream_that_lost_its_end_is_asked_again(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.script("m-a", Reply(text="the whole answer here", cut_after=2))
    code, document, stderr = ask_json(invoke, agents_file("a"), "--stream")
    assert code == 0
    assert server.count() == 2
    entry = agent(document)
    assert (entry["status"], entry["answer"], entry["attempts"]) == ("ok", "m-a says: Why?", 2)
    assert "a: incomplete_stream, retrying" in stderr


def test_a_stream_that_never_ends_is_an_error_not_half_an_answer(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.default = Reply(text="the whole answer here", cut_after=2)
    code, document, _ = ask_json(invoke, agents_file("a"), "--stream", "--retries", "1")
    assert code == 1
    assert server.count() == 2
    entry = agent(document)
    assert entry["status"] == "error"
    # what arrived is kept for display, marked as cut short, and never taken for an answer
    assert (entry["answer"], entry["truncated"]) == ("the whole", True)
    assert document["output"] == {}
    error = entry["error"]
    assert isinstance(error, dict)
    assert (error["type"], error["retryable"]) == ("incomplete_stream", True)


def test_a_daily_quota_closes_the_endpoint_for_the_rest_of_a_batch(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, tmp_path: Path
) -> None:
    server.default = Fault(429, headers={"retry-after": "86400"})  # a spent daily quota
    source = tmp_path / "q.txt"
    source.write_text("".join(f"question {i}\n" for i in range(6)))
    out = tmp_path / "out.jsonl"
    result = invoke("batch", source, "-c", agents_file("a"), "-o", out, "--concurrency", "1")
    assert result.exit_code != 0
    assert server.count() == 1  # not one request per prompt into a closed quota
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 6
    assert all(line["status"] == "error" for line in lines)
    closed = [line for line in lines if "paused this endpoint" in line["error"]["message"]]
    assert len(closed) == 5
    assert all("86400 s" in line["error"]["message"] for line in closed)
