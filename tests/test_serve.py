"""``fanout serve`` through a real uvicorn server on 127.0.0.1, against the loopback LLM server:
every route and status code, the samples' routes, the openai client, the guard, recovery."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from fanout.shapes import SHAPES, Shape
from fanout.shapes.panel import PanelStage
from tests.conftest import SENTINEL_KEY, AgentsFile, Invoke
from tests.fakeserver import FakeOpenAI, Fault, Hang, Reply
from tests.servehelp import Serve, serve_process, until


def events_of(response: httpx.Response) -> list[dict[str, Any]]:
    """The SSE frames of a streamed response, as {id, event, data} dicts."""
    frames, frame = [], {}
    for line in response.iter_lines():
        if not line:
            if "data" in frame:
                frames.append(frame)
            frame = {}
        elif line.startswith(("id:", "event:", "data:")):
            key, _, value = line.partition(":")
            frame[key] = json.loads(value) if key == "data" else value.strip()
    return frames


def finished(client: httpx.Client, run_id: str) -> dict[str, Any]:
    """Poll the status route until it answers 200 (the run is over)."""
    response = until(
        lambda: (r := client.get(f"/api/runs/{run_id}")).status_code == 200 and r,
        what=f"run {run_id} to finish",
    )
    return dict(response.json())


def call_state(client: httpx.Client, run_id: str, name: str, state: str) -> bool:
    calls = client.get(f"/api/runs/{run_id}").json()["customStatus"]["calls"]
    return bool(calls.get(name) == state)


# -- runs API ------------------------------------------------------------------------------------


def test_post_run_answers_202_with_location_and_links(serve: Serve) -> None:
    with serve().client() as client:
        response = client.post("/api/runs", json={"prompt": "What is temperature?"})
        assert response.status_code == 202, response.text
        body = response.json()
        run_id = body["id"]
        base = f"{client.base_url}/api/runs/{run_id}".replace("//api", "/api")
        assert response.headers["location"] == body["statusQueryGetUri"] == base
        assert response.headers["retry-after"] == "1"
        assert body["terminatePostUri"] == f"{base}/terminate"
        assert body["purgeHistoryDeleteUri"] == base
        assert body["eventsUri"] == f"{base}/events"
        status = finished(client, run_id)
    assert status["instanceId"] == run_id
    assert status["name"] == "panel"
    assert status["runtimeStatus"] == "Completed"
    assert status["createdTime"] and status["lastUpdatedTime"]
    assert status["input"]["prompt"] == "What is temperature?"
    assert status["customStatus"]["done"] == status["customStatus"]["total"] == 3
    assert status["customStatus"]["calls"] == dict.fromkeys(
        ["physicist", "chemist", "biologist"], "ok"
    )
    assert status["output"] == {
        name: f"m-{name} says: What is temperature?"
        for name in ("physicist", "chemist", "biologist")
    }


def test_status_is_202_with_location_while_running(server: FakeOpenAI, serve: Serve) -> None:
    release = threading.Event()
    server.default = Reply(hold=release)
    try:
        with serve().client() as client:
            run_id = client.post("/api/runs", json={"prompt": "Why?"}).json()["id"]
            server.wait_for_requests(3)
            response = client.get(f"/api/runs/{run_id}")
            assert response.status_code == 202
            assert response.headers["location"].endswith(f"/api/runs/{run_id}")
            assert response.headers["retry-after"] == "1"
            assert response.json()["runtimeStatus"] == "Running"
            release.set()
            assert finished(client, run_id)["runtimeStatus"] == "Completed"
    finally:
        release.set()


def test_text_plain_prompt_with_wait_answers_200_when_done(serve: Serve) -> None:
    with serve().client() as client:
        response = client.post(
            "/api/runs?wait=30",
            content="Why is ice slippery?",
            headers={"content-type": "text/plain"},
        )
        assert response.status_code == 200, response.text
        assert response.json()["runtimeStatus"] == "Completed"
        assert response.json()["input"]["prompt"] == "Why is ice slippery?"
        response = client.post(
            "/api/runs",
            json={"prompt": "Why?", "agents": ["chemist"]},
            headers={"x-ms-wait-for-response": "true"},
        )
        assert response.status_code == 200
        assert response.json()["output"] == {"chemist": "m-chemist says: Why?"}


def test_synthesize_and_options_as_ask_has_them(server: FakeOpenAI, serve: Serve) -> None:
    with serve().client() as client:
        body = {"prompt": "Why?", "agents": "physicist,chemist", "synthesize": True,
                "timeout": 30, "retries": 0, "concurrency": 2, "model": "m-shared"}  # fmt: skip
        status = client.post("/api/runs?wait=30", json=body).json()
    assert status["runtimeStatus"] == "Completed"
    assert set(status["customStatus"]["calls"]) == {"physicist", "chemist", "synthesizer"}
    assert status["customStatus"]["final"].startswith("m-shared says:")
    assert {r.model for r in server.requests} == {"m-shared"}


def test_document_is_the_json_document_and_runs_are_in_the_cli_history(
    serve: Serve, invoke: Invoke
) -> None:
    with serve().client() as client:
        run_id = client.post("/api/runs?wait=30", json={"prompt": "Why?"}).json()["instanceId"]
        document = client.get(f"/api/runs/{run_id}/document").json()
        listed = client.get("/api/runs").json()["runs"]
    assert document["schema_version"] == 2
    assert document["run_id"] == run_id
    assert document["status"] == "completed"
    assert document["output"]["physicist"] == "m-physicist says: Why?"
    assert [r["instanceId"] for r in listed] == [run_id]
    assert listed[0]["runtimeStatus"] == "Completed"
    # The CLI sees the server's run in the same history, with the same document.
    result = invoke("runs", "list", "--json")
    assert result.exit_code == 0, result.output
    assert [r["run_id"] for r in json.loads(result.stdout)["runs"]] == [run_id]
    shown = json.loads(invoke("runs", "show", run_id, "--json").stdout)
    assert shown["output"] == document["output"]
    assert shown["stages"] == document["stages"]


def test_events_replay_then_live_and_match_the_jsonl_events(
    server: FakeOpenAI, serve: Serve, agents_file: AgentsFile, invoke: Invoke
) -> None:
    release = threading.Event()
    server.script("m-chemist", Reply(hold=release))
    try:
        with serve().client() as client:
            run_id = client.post("/api/runs", json={"prompt": "Why?"}).json()["id"]
            until(lambda: call_state(client, run_id, "physicist", "ok"), what="physicist")
            with client.stream("GET", f"/api/runs/{run_id}/events") as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                release.set()  # past events are replayed first, then the live ones follow
                frames = events_of(response)
    finally:
        release.set()
    types = [f["event"] for f in frames]
    assert types[0] == "run_started" and types[-1] == "run_finished"
    assert [int(f["id"]) for f in frames] == list(range(len(frames)))
    assert all(f["data"]["type"] == f["event"] for f in frames)
    assert frames[-1]["data"]["document"]["status"] == "completed"
    finished_agents = {f["data"]["agent"] for f in frames if f["event"] == "agent_finished"}
    assert finished_agents == {"physicist", "chemist", "biologist"}
    # The same lines as `fanout ask --jsonl --jsonl-deltas`: same types, same keys per type.
    result = invoke("ask", "-c", agents_file(), "--jsonl", "--jsonl-deltas", "--no-log", "Why?")
    jsonl = [json.loads(line) for line in result.stdout.splitlines()]
    keys = {line["type"]: set(line) for line in jsonl}
    assert {f["event"] for f in frames} == set(keys)
    for frame in frames:
        assert set(frame["data"]) == keys[frame["event"]], frame["event"]


def test_events_resume_after_last_event_id_and_replay_stored_runs(serve: Serve) -> None:
    served = serve()
    with served.client() as client:
        run_id = client.post("/api/runs?wait=30", json={"prompt": "Why?"}).json()["instanceId"]
        with client.stream("GET", f"/api/runs/{run_id}/events") as response:
            every = events_of(response)
        with client.stream(
            "GET", f"/api/runs/{run_id}/events", headers={"last-event-id": "2"}
        ) as response:
            rest = events_of(response)
        with client.stream("GET", f"/api/runs/{run_id}/events?deltas=false") as response:
            no_deltas = events_of(response)
    assert rest == every[3:]
    assert [f["event"] for f in no_deltas] == [f["event"] for f in every if f["event"] != "delta"]
    served.stop()
    # Another server on the same history replays the stored run (without its deltas).
    with serve().client() as client:
        with client.stream("GET", f"/api/runs/{run_id}/events") as response:
            replayed = events_of(response)
        assert client.get(f"/api/runs/{run_id}").json()["runtimeStatus"] == "Completed"
    assert replayed[0]["event"] == "run_started" and replayed[-1]["event"] == "run_finished"
    assert replayed[-1]["data"]["document"]["output"] == every[-1]["data"]["document"]["output"]


def test_terminate_keeps_every_answer_that_arrived(server: FakeOpenAI, serve: Serve) -> None:
    server.script("m-chemist", Hang())
    server.script("m-biologist", Hang())
    with serve().client() as client:
        run_id = client.post("/api/runs", json={"prompt": "Why?"}).json()["id"]
        until(lambda: call_state(client, run_id, "physicist", "ok"), what="physicist")
        response = client.post(f"/api/runs/{run_id}/terminate")
        assert response.status_code == 202, response.text
        status = finished(client, run_id)
        assert status["runtimeStatus"] == "Terminated"
        assert status["output"] == {"physicist": "m-physicist says: Why?"}
        assert status["customStatus"]["calls"]["chemist"] == "cancelled"
        again = client.post(f"/api/runs/{run_id}/terminate")
        assert again.status_code == 410
        assert "already finished" in again.json()["error"]


def test_purge_deletes_the_run(server: FakeOpenAI, serve: Serve) -> None:
    release = threading.Event()
    with serve().client() as client:
        done = client.post("/api/runs?wait=30", json={"prompt": "Why?"}).json()["instanceId"]
        server.default = Reply(hold=release)
        try:
            running = client.post("/api/runs", json={"prompt": "Why?"}).json()["id"]
            assert client.delete(f"/api/runs/{running}").status_code == 409
        finally:
            release.set()
        response = client.delete(f"/api/runs/{done}")
        assert response.status_code == 200
        assert response.json() == {"instancesDeleted": 1}
        assert client.get(f"/api/runs/{done}").status_code == 404
        assert client.delete(f"/api/runs/{done}").status_code == 404
        finished(client, running)
        assert [r["instanceId"] for r in client.get("/api/runs").json()["runs"]] == [running]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/runs/nope"),
        ("GET", "/api/runs/nope/document"),
        ("GET", "/api/runs/nope/events"),
        ("POST", "/api/runs/nope/terminate"),
        ("DELETE", "/api/runs/nope"),
        ("GET", "/api/multiagent/status/nope"),
        ("GET", "/no/such/route"),
    ],
)
def test_unknown_runs_and_routes_are_404(serve: Serve, method: str, path: str) -> None:
    with serve().client() as client:
        response = client.request(method, path)
    assert response.status_code == 404
    assert isinstance(response.json()["error"], str)


# -- the durable-orchestration samples' routes ----------------------------------------------------


def test_samples_routes_exactly(serve: Serve) -> None:
    with serve().client() as client:
        response = client.post(
            "/api/multiagent/run",
            content="What is temperature?",
            headers={"content-type": "text/plain"},
        )
        assert response.status_code == 202
        started = response.json()
        assert list(started) == ["message", "prompt", "instanceId", "statusQueryGetUri"]
        assert started["message"] == "Multi-agent concurrent orchestration started."
        assert started["prompt"] == "What is temperature?"
        instance = started["instanceId"]
        assert started["statusQueryGetUri"] == (
            f"{served_base(client)}/api/multiagent/status/{instance}"
        )
        status = until(
            lambda: (
                (s := client.get(started["statusQueryGetUri"]).json())["runtimeStatus"]
                == "Completed"
                and s
            ),
            what="Completed",
        )
        empty = client.post(
            "/api/multiagent/run", content="  ", headers={"content-type": "text/plain"}
        )
    assert list(status) == [
        "instanceId", "runtimeStatus", "createdTime", "lastUpdatedTime", "input", "output"
    ]  # fmt: skip
    assert status["instanceId"] == instance
    assert status["input"] == "What is temperature?"
    assert status["output"] == {
        name: f"m-{name} says: What is temperature?"
        for name in ("physicist", "chemist", "biologist")
    }
    assert empty.status_code == 400
    assert empty.json() == {"error": "Prompt is required"}


def served_base(client: httpx.Client) -> str:
    return str(client.base_url).rstrip("/")


# -- the OpenAI-compatible face, with the official client as the caller ---------------------------


def test_openai_client_lists_models_for_every_shape(
    serve: Serve, request: pytest.FixtureRequest
) -> None:
    echo = Shape("echo", "Every persona answers.", lambda options: [PanelStage()], flag="--echo")
    SHAPES.add(echo)
    request.addfinalizer(lambda: SHAPES.remove("echo"))
    served = serve()
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)
    listed = [m.id for m in client.models.list()]
    assert listed[0] == "fanout" and "fanout/echo" in listed
    assert "fanout/route" in listed  # every shape that runs from a prompt alone
    assert "fanout/flow" not in listed  # a flow needs its definition
    with served.client() as http:  # and the runs API takes the shape as an option
        status = http.post("/api/runs?wait=30", json={"prompt": "Hi", "echo": True}).json()
        assert status["name"] == "echo" and status["runtimeStatus"] == "Completed"
        both = http.post("/api/runs", json={"prompt": "Hi", "echo": True, "vote": True})
        assert both.status_code == 400


def test_openai_client_chat_completion(server: FakeOpenAI, serve: Serve) -> None:
    served = serve()
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)
    completion = client.chat.completions.create(
        model="fanout",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "First question?"},
            {"role": "assistant", "content": "An answer."},
            {"role": "user", "content": "What is temperature?"},
        ],
        temperature=0.2,
    )
    document = (completion.model_extra or {})["fanout"]
    synthesis = document["synthesis"]
    assert completion.object == "chat.completion"
    assert completion.model == "fanout"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == synthesis["answer"]
    assert completion.choices[0].finish_reason == "stop"
    assert document["output"]["physicist"] == "m-physicist says: What is temperature?"
    calls = [c for s in document["stages"] for c in s["calls"]]
    assert len(calls) == 4
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == sum(c["usage"]["input_tokens"] for c in calls)
    assert completion.usage.completion_tokens == sum(c["usage"]["output_tokens"] for c in calls)
    assert completion.usage.total_tokens == document["usage"]["total_tokens"] > 0
    # Run options ride in a "fanout" object.
    only = client.chat.completions.create(
        model="fanout",
        messages=[{"role": "user", "content": "Why?"}],
        extra_body={"fanout": {"agents": ["chemist"]}},
    )
    assert list((only.model_extra or {})["fanout"]["output"]) == ["chemist"]


def test_openai_client_streams_the_synthesis(server: FakeOpenAI, serve: Serve) -> None:
    server.default = Reply(chunk_delay=0.001)
    served = serve()
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model="fanout",
        messages=[{"role": "user", "content": "What is temperature?"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    last = chunks[-1]
    document = (last.model_extra or {})["fanout"]
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1  # streamed
    assert text == document["synthesis"]["answer"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert last.usage is not None
    assert last.usage.total_tokens == document["usage"]["total_tokens"] > 0


def test_openai_client_errors(serve: Serve) -> None:
    served = serve()
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="no user message"):
        client.chat.completions.create(
            model="fanout", messages=[{"role": "system", "content": "x"}]
        )
    with pytest.raises(openai.BadRequestError, match="unknown parameter"):
        client.chat.completions.create(
            model="fanout", messages=[{"role": "user", "content": "x"}], extra_body={"bogus": 1}
        )
    with pytest.raises(openai.BadRequestError, match="unknown agent"):
        client.chat.completions.create(
            model="fanout",
            messages=[{"role": "user", "content": "x"}],
            extra_body={"fanout": {"agents": ["nobody"]}},
        )


# -- safe by default ------------------------------------------------------------------------------


def test_token_guards_every_route_but_healthz(serve: Serve) -> None:
    token = "s3cret-token-value"
    served = serve(token=token)
    with served.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        for method, path in [("GET", "/api/runs"), ("POST", "/api/runs"), ("GET", "/v1/models"),
                             ("GET", "/api/runs/x"), ("POST", "/api/multiagent/run")]:  # fmt: skip
            denied = client.request(method, path)
            assert denied.status_code == 401, path
            assert denied.headers["www-authenticate"] == "Bearer"
            wrong = client.request(method, path, headers={"authorization": "Bearer nope"})
            assert wrong.status_code == 401
            assert token not in denied.text + wrong.text
        ok = client.post(
            "/api/runs?wait=30",
            json={"prompt": "Why?"},
            headers={"authorization": f"Bearer {token}"},
        )
        assert ok.status_code == 200
    chat = openai.OpenAI(base_url=f"{served.url}/v1", api_key=token, max_retries=0)
    assert next(m.id for m in chat.models.list()) == "fanout"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{served.url}/v1", api_key="wrong", max_retries=0).models.list()


def test_without_a_token_no_header_is_needed(serve: Serve) -> None:
    with serve().client() as client:
        assert client.get("/api/runs").status_code == 200


def test_body_over_one_megabyte_is_413(serve: Serve) -> None:
    big = b"x" * (1024 * 1024 + 1)

    def chunked() -> Iterator[bytes]:  # no content-length: counted as it arrives
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    with serve().client() as client:
        declared = client.post("/api/runs", content=big, headers={"content-type": "text/plain"})
        streamed = client.post(
            "/api/runs", content=chunked(), headers={"content-type": "text/plain"}
        )
        chat = client.post(
            "/v1/chat/completions", content=big, headers={"content-type": "application/json"}
        )
        fits = client.post("/api/runs?wait=30", content=b"Why?" + b" " * 1000)
    for response in (declared, streamed):
        assert response.status_code == 413
        assert "over 1048576 bytes" in response.json()["error"]
    assert chat.status_code == 413
    assert "over 1048576 bytes" in chat.json()["error"]["message"]  # OpenAI's shape on /v1
    assert fits.status_code == 415  # no content type: JSON or text expected; the size was fine


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "malformed JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b"\xff\xfe", "malformed JSON"),
        (json.dumps({"prompt": "Why?", "temperature": 1}).encode(), "unknown option 'temperature'"),
        (json.dumps({"prompt": "Why?", "agents": ["nobody"]}).encode(), "unknown agent 'nobody'"),
        (json.dumps({"prompt": "   "}).encode(), "the prompt is empty"),
        (json.dumps({"agents": ["chemist"]}).encode(), "the prompt is empty"),
        (json.dumps({"prompt": "Why?", "synthesize": "yes"}).encode(), "synthesize"),
        (json.dumps({"prompt": "Why?", "timeout": -1}).encode(), "timeout"),
        (json.dumps({"prompt": "Why?", "retries": 1.5}).encode(), "retries"),
        (json.dumps({"prompt": "Why?", "agents": []}).encode(), "agents"),
        (b'{"prompt": "Why?", "timeout": NaN}', "timeout"),
        (json.dumps({"prompt": "Why?", "vote": {"qourum": 0.6}}).encode(), "'qourum'"),
    ],
)
def test_bad_requests_are_400_with_one_line(serve: Serve, body: bytes, message: str) -> None:
    with serve().client() as client:
        response = client.post(
            "/api/runs", content=body, headers={"content-type": "application/json"}
        )
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]
    assert "\n" not in response.text and "Traceback" not in response.text


def test_bad_query_values_are_400(serve: Serve) -> None:
    with serve().client() as client:
        assert client.post("/api/runs?wait=soon", json={"prompt": "x"}).status_code == 400
        assert client.post("/api/runs?wait=-1", json={"prompt": "x"}).status_code == 400
        assert client.get("/api/runs?limit=0").status_code == 400
        assert client.get("/api/runs?limit=many").status_code == 400
        assert client.put("/api/runs").status_code == 405


def test_max_runs_gives_429_with_retry_after(server: FakeOpenAI, serve: Serve) -> None:
    release = threading.Event()
    server.default = Reply(hold=release)
    try:
        with serve(max_runs=1, max_queued=0).client() as client:
            first = client.post("/api/runs", json={"prompt": "Why?"})
            assert first.status_code == 202
            refused = client.post("/api/runs", json={"prompt": "Why?"})
            assert refused.status_code == 429
            assert refused.headers["retry-after"] == "1"
            assert "--max-runs" in refused.json()["error"]
            release.set()
            finished(client, first.json()["id"])
            assert client.post("/api/runs", json={"prompt": "Why?"}).status_code == 202
    finally:
        release.set()


def test_cors_only_when_asked(serve: Serve) -> None:
    origin = "http://dashboard.example"
    with serve().client() as client:
        plain = client.get("/api/runs", headers={"origin": origin})
        assert not any(h.startswith("access-control-") for h in plain.headers)
    with serve(cors=origin, token="a-long-token").client() as client:
        preflight = client.options(
            "/api/runs",
            headers={
                "origin": origin,
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == origin
        allowed = client.get(
            "/api/runs", headers={"origin": origin, "authorization": "Bearer a-long-token"}
        )
        assert allowed.headers["access-control-allow-origin"] == origin
        other = client.get(
            "/api/runs",
            headers={"origin": "http://evil.example", "authorization": "Bearer a-long-token"},
        )
        assert "access-control-allow-origin" not in other.headers


def test_non_loopback_bind_needs_a_token(invoke: Invoke, agents_file: AgentsFile) -> None:
    result = invoke("serve", "--host", "0.0.0.0", "-c", agents_file())
    assert result.exit_code == 2
    assert "--token" in result.stderr and "FANOUT_SERVE_TOKEN" in result.stderr


def test_keys_never_appear_in_responses_or_logs(
    server: FakeOpenAI, agents_file: AgentsFile, tmp_path: Path
) -> None:
    # A misbehaving proxy echoes the key back in its error message.
    server.script("m-chemist", Fault(401, body={"error": {"message": f"bad key {SENTINEL_KEY}"}}))
    config = agents_file("physicist", "chemist", defaults={"api_key_env": "FANOUT_TEST_KEY"})
    env = {"FANOUT_TEST_KEY": SENTINEL_KEY, "FANOUT_HOME": str(tmp_path / "home")}
    proc, url = serve_process("-c", str(config), env=env)
    texts = []
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            run_id = client.post("/api/runs?wait=30", json={"prompt": "Why?"}).json()["instanceId"]
            for path in (f"/api/runs/{run_id}", f"/api/runs/{run_id}/document", "/api/runs",
                         f"/api/runs/{run_id}/events", "/api/agents", "/v1/models"):  # fmt: skip
                texts.append(client.get(path).text)
            texts.append(
                client.post(
                    "/v1/chat/completions",
                    json={"model": "fanout", "messages": [{"role": "user", "content": "x"}]},
                ).text
            )
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert server.requests[0].headers["authorization"] == f"Bearer {SENTINEL_KEY}"
    assert any("bad key" in text for text in texts)
    for text in [*texts, out, err]:
        assert "SENTINEL" not in text
    assert proc.returncode == 0, err


# -- restart recovery -----------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "stopped"])
def test_runs_cut_by_a_dying_server_show_failed_interrupted_with_their_answers(
    server: FakeOpenAI, agents_file: AgentsFile, tmp_path: Path, signum: signal.Signals
) -> None:
    server.script("m-chemist", Hang())
    server.script("m-biologist", Hang())
    config = str(agents_file())
    env = {"FANOUT_HOME": str(tmp_path / "home")}
    proc, url = serve_process("-c", config, env=env)
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            run_id = client.post("/api/runs", json={"prompt": "Why?"}).json()["id"]
            until(lambda: call_state(client, run_id, "physicist", "ok"), what="physicist")
            server.wait_for_requests(3)
        proc.send_signal(signum)
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    again, url = serve_process("-c", config, env=env)
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            response = client.get(f"/api/runs/{run_id}")
            listed = client.get("/api/runs").json()["runs"]
            sample = client.get(f"/api/multiagent/status/{run_id}").json()
    finally:
        again.send_signal(signal.SIGINT)
        again.communicate(timeout=30)
    assert response.status_code == 200
    status = response.json()
    assert status["runtimeStatus"] == "Failed"
    assert status["customStatus"]["interrupted"] is True
    assert status["customStatus"]["status"] == "interrupted"
    assert status["output"] == {"physicist": "m-physicist says: Why?"}
    assert listed[0]["instanceId"] == run_id and listed[0]["runtimeStatus"] == "Failed"
    assert sample["runtimeStatus"] == "Failed"
    assert sample["output"] == {"physicist": "m-physicist says: Why?"}
