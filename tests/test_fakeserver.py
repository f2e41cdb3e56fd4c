"""Tests of the fake OpenAI server itself, driven by the real openai client and http.client."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from tests.fakeserver import EmptyChoices, FakeOpenAI, Fault, Hang, Malformed, Reply, Reset, Trickle

USER = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    """A private server per test (overrides conftest's shared one: several tests stop it)."""
    with FakeOpenAI() as srv:
        yield srv


@pytest.fixture
def client(server: FakeOpenAI) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0) as cli:
        yield cli


def ask(client: openai.OpenAI, model: str = "m", **kwargs: Any) -> Any:
    return client.chat.completions.create(model=model, messages=USER, **kwargs)  # type: ignore[arg-type]


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run fn in a thread; the dict gets "result" or "error"."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = fn()
        except BaseException as exc:
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def post(server: FakeOpenAI, body: bytes) -> tuple[int, str | None, bytes]:
    """POST body to /v1/chat/completions on a fresh connection; (status, content-type, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("POST", "/v1/chat/completions", body=body)
        resp = conn.getresponse()
        return resp.status, resp.getheader("content-type"), resp.read()
    finally:
        conn.close()


def test_default_reply_and_recording(server: FakeOpenAI, client: openai.OpenAI) -> None:
    resp = ask(client, "model-a")
    assert resp.object == "chat.completion"
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content == "model-a says: hello there"
    assert resp.choices[0].finish_reason == "stop"
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (2, 4)
    assert resp.usage.total_tokens == 6
    [rec] = server.requests
    assert (rec.model, rec.path, rec.body["messages"]) == ("model-a", "/v1/chat/completions", USER)
    assert rec.headers["authorization"] == "Bearer test"
    assert rec.finished is not None and rec.finished >= rec.started
    assert server.count() == server.count("model-a") == 1 and server.count("other") == 0


def test_reply_overrides(server: FakeOpenAI, client: openai.OpenAI) -> None:
    usage = {"prompt_tokens": 7, "completion_tokens": 8, "total_tokens": 15}
    server.default = Reply(text="fixed", headers={"x-fake": "yes"}, usage=usage)
    raw_resp = client.chat.completions.with_raw_response.create(model="m", messages=USER)  # type: ignore[arg-type]
    assert raw_resp.headers["x-fake"] == "yes"
    resp = raw_resp.parse()
    assert resp.choices[0].message.content == "fixed"
    assert resp.usage is not None and resp.usage.total_tokens == 15


def test_script_is_consumed_in_order_per_model(server: FakeOpenAI, client: openai.OpenAI) -> None:
    server.script("model-a", Fault(status=429, headers={"retry-after": "0.05"}), Reply(text="hi"))
    with pytest.raises(openai.RateLimitError) as info:
        ask(client, "model-a")
    assert info.value.response.headers["retry-after"] == "0.05"
    assert info.value.body == {
        "message": "fake 429 error",
        "type": "rate_limit_error",
        "param": None,
        "code": None,
    }
    assert ask(client, "model-b").choices[0].message.content == "model-b says: hello there"
    assert ask(client, "model-a").choices[0].message.content == "hi"
    assert ask(client, "model-a").choices[0].message.content == "model-a says: hello there"
    assert server.count("model-a") == 3 and server.count("model-b") == 1


def test_fault_variants(server: FakeOpenAI, client: openai.OpenAI) -> None:
    server.script("m", Fault(429, code="insufficient_quota"), Fault(), Fault(400, body="nope"))
    with pytest.raises(openai.RateLimitError) as quota:
        ask(client)
    assert quota.value.code == "insufficient_quota"
    with pytest.raises(openai.InternalServerError):
        ask(client)
    with pytest.raises(openai.BadRequestError) as bad:
        ask(client)
    assert bad.value.response.text == "nope"


def test_streaming_with_usage(server: FakeOpenAI, client: openai.OpenAI) -> None:
    server.default = Reply(text="alpha beta  gamma", chunk_delay=0.01)
    stream = ask(client, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "alpha beta  gamma"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert len({c.id for c in chunks}) == 1
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (2, 3)
    assert server.requests[0].finished is not None


def test_streaming_without_usage(client: openai.OpenAI) -> None:
    chunks = list(ask(client, stream=True))
    assert all(c.choices and c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "m says: hello there"


def stream_body(server: FakeOpenAI, **extra: Any) -> bytes:
    """The raw body of a streamed answer (chunked framing removed by http.client)."""
    body = {"model": "m", "messages": USER, "stream": True, **extra}
    status, ctype, data = post(server, json.dumps(body).encode())
    assert (status, ctype) == (200, "text/event-stream")
    return data


def test_a_cut_stream_ends_cleanly_without_finish_reason_usage_or_done(
    server: FakeOpenAI,
) -> None:
    server.default = Reply(text="one two three", cut_after=1)
    data = stream_body(server, stream_options={"include_usage": True})
    events = [json.loads(e[6:]) for e in data.decode().split("\n\n") if e]
    assert [e["choices"][0]["delta"].get("content") for e in events] == ["", "one "]
    assert all(e["choices"][0]["finish_reason"] is None and not e["usage"] for e in events)


def test_stream_end_markers_can_be_left_out(server: FakeOpenAI) -> None:
    server.script("m", Reply(send_done=False), Reply(finish_reason=None))
    no_done = stream_body(server).decode()
    assert "[DONE]" not in no_done and '"finish_reason": "stop"' in no_done
    no_reason = stream_body(server).decode()
    assert "[DONE]" in no_reason and '"finish_reason": "stop"' not in no_reason


def test_raw_usage_is_spliced_in_verbatim(server: FakeOpenAI) -> None:
    raw = '{"prompt_tokens": 1, "completion_tokens": 1e400, "total_tokens": NaN}'
    server.default = Reply(raw_usage=raw)
    _, _, whole = post(server, json.dumps({"model": "m", "messages": USER}).encode())
    assert b'"usage": ' + raw.encode() in whole
    streamed = stream_body(server, stream_options={"include_usage": True})
    assert b'"usage": ' + raw.encode() in streamed


def test_refusing_response_format_answers_400_only_when_it_is_asked(server: FakeOpenAI) -> None:
    server.default = Reply(refuse_response_format=True)
    shaped = {"model": "m", "messages": USER, "response_format": {"type": "json_object"}}
    status, _, data = post(server, json.dumps(shaped).encode())
    assert status == 400 and b"response_format" in data
    status, _, _ = post(server, json.dumps({"model": "m", "messages": USER}).encode())
    assert status == 200


def test_malformed_can_be_any_body_under_any_content_type(server: FakeOpenAI) -> None:
    server.default = Malformed(body="<html>hi</html>", content_type="text/html")
    assert post(server, b'{"model": "m"}') == (200, "text/html", b"<html>hi</html>")


def test_reset_raises_connection_error(server: FakeOpenAI, client: openai.OpenAI) -> None:
    server.script("m", Reset())
    with pytest.raises(openai.APIConnectionError) as info:
        ask(client)
    assert not isinstance(info.value, openai.APITimeoutError)
    assert ask(client).choices[0].message.content  # the client recovers on a new connection
    server.script("m", Reset())
    with pytest.raises(ConnectionResetError):  # a real RST, not a clean close
        post(server, b'{"model": "m"}')


def test_malformed_raises(server: FakeOpenAI, client: openai.OpenAI) -> None:
    server.script("m", Malformed(), Malformed())
    with pytest.raises(Exception):  # noqa: B017 - the client raises a bare JSONDecodeError
        ask(client)
    assert post(server, b'{"model": "m"}') == (200, "application/json", b"{not json")


def test_empty_choices(server: FakeOpenAI, client: openai.OpenAI) -> None:
    server.script("m", EmptyChoices())
    assert ask(client).choices == []


@pytest.mark.parametrize("step", [Hang(), Trickle(interval=5.0)], ids=["hang", "trickle"])
def test_stalls_hit_client_timeout(
    server: FakeOpenAI, client: openai.OpenAI, step: Hang | Trickle
) -> None:
    server.script("m", step)
    with pytest.raises(openai.APITimeoutError):
        ask(client, timeout=0.5)


def test_max_in_flight_counts_concurrent_requests(
    server: FakeOpenAI, client: openai.OpenAI
) -> None:
    n = 20
    server.default = Reply(latency=1.0)  # long enough for all n to overlap, even on a busy box
    barrier = threading.Barrier(n)

    def one() -> str:
        barrier.wait()
        return str(ask(client).choices[0].message.content)

    runs = [in_thread(one) for _ in range(n)]
    for thread, _ in runs:
        thread.join(30)
    assert [out.get("result") for _, out in runs] == ["m says: hello there"] * n
    assert server.max_in_flight == n
    assert all(r.finished is not None for r in server.requests)


def test_gate_holds_replies_until_n_in_flight(server: FakeOpenAI, client: openai.OpenAI) -> None:
    server.default = Reply(gate=3)
    runs = [in_thread(lambda: ask(client)) for _ in range(3)]
    for thread, _ in runs:
        thread.join(30)
    assert [out.get("result") is not None for _, out in runs] == [True] * 3
    assert server.max_in_flight == 3
    assert ask(client).choices  # once reached, the gate stays open
    server.reset()
    server.default = Reply(gate=2, gate_timeout=0.05)
    with pytest.raises(openai.BadRequestError, match="never in flight together"):
        ask(client)  # a lone request: the gate gives up with a 400 rather than hanging


def test_handles_200_concurrent_requests(server: FakeOpenAI, client: openai.OpenAI) -> None:
    n = 200
    server.default = Hang()
    runs = [in_thread(lambda: ask(client, timeout=60)) for _ in range(n)]
    server.wait_for_requests(n, timeout=30)
    assert server.max_in_flight == n
    server.default = Reply()  # later requests are answered while 200 are still hanging
    assert ask(client, "other").choices[0].message.content == "other says: hello there"
    server.stop()
    for thread, _ in runs:
        thread.join(30)
    assert all(isinstance(out.get("error"), openai.APIConnectionError) for _, out in runs)


def test_wait_for_requests(server: FakeOpenAI, client: openai.OpenAI) -> None:
    server.script("m", Hang())
    with pytest.raises(TimeoutError):
        server.wait_for_requests(1, timeout=0.01)
    thread, out = in_thread(lambda: ask(client))
    server.wait_for_requests(1)
    [rec] = server.requests
    assert rec.finished is None  # still being handled
    server.stop()
    thread.join(10)
    assert isinstance(out["error"], openai.APIConnectionError)


def test_stop_releases_hung_request(server: FakeOpenAI, client: openai.OpenAI) -> None:
    server.default = Hang()
    thread, out = in_thread(lambda: ask(client, timeout=60))
    server.wait_for_requests(1)
    server.stop()
    thread.join(10)
    assert not thread.is_alive()
    assert isinstance(out["error"], openai.APIConnectionError)
    assert not isinstance(out["error"], openai.APITimeoutError)
    assert server.requests[0].finished is not None


def test_reset_clears_state(server: FakeOpenAI, client: openai.OpenAI) -> None:
    server.script("m", Fault(500))
    server.script("hung", Hang())
    server.default = EmptyChoices()
    ask(client, "other")
    thread, out = in_thread(lambda: ask(client, "hung"))
    server.wait_for_requests(2)
    server.reset()
    assert (server.requests, server.count(), server.max_in_flight) == ([], 0, 0)
    assert ask(client).choices[0].message.content == "m says: hello there"
    assert server.max_in_flight == 1  # the request still hanging from before reset() is ignored
    server.stop()
    thread.join(10)
    assert isinstance(out["error"], openai.APIConnectionError)


def test_http_edges(server: FakeOpenAI) -> None:
    # One keep-alive connection throughout: errors must not break it.
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    body = json.dumps({"model": "m", "messages": USER})
    conn.request("POST", "/chat/completions", body=body)
    resp = conn.getresponse()
    assert resp.status == 200 and json.loads(resp.read())["choices"][0]["message"]["content"]
    conn.request("GET", "/v1/assistants")
    resp = conn.getresponse()
    assert resp.status == 404 and json.loads(resp.read())["error"]["type"] == "not_found_error"
    server.models = ["m-1", "m-2"]  # GET /v1/models lists what the test says it serves
    conn.request("GET", "/v1/models")
    resp = conn.getresponse()
    assert [m["id"] for m in json.loads(resp.read())["data"]] == ["m-1", "m-2"]
    conn.request("POST", "/v1/embeddings", body=body)
    resp = conn.getresponse()
    assert resp.status == 404 and "error" in json.loads(resp.read())
    for bad in (b"not json", b"[1, 2]", b'{"messages": []}'):
        conn.request("POST", "/v1/chat/completions", body=bad)
        resp = conn.getresponse()
        assert resp.status == 400 and "error" in json.loads(resp.read())
    conn.close()
    assert server.count() == 1  # only the accepted chat request was recorded
