"""``fanout serve``: nothing accepted is lost, hostile bodies are one line, and OpenAI's clients
get the errors they understand (streamed ones included). Real servers, real clients."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

import anyio
import httpx
import openai
import pytest

from tests.conftest import AgentsFile
from tests.fakeserver import FakeOpenAI, Fault, Hang, Reply
from tests.servehelp import Serve, serve_process, until

# -- a 202 means the run is recorded --------------------------------------------------------------


def test_every_run_accepted_before_a_kill_is_there_after_a_restart(
    server: FakeOpenAI, agents_file: AgentsFile, tmp_path: Path
) -> None:
    server.default = Hang()
    config = str(agents_file())
    env = {"FANOUT_HOME": str(tmp_path / "home")}
    proc, url = serve_process("-c", config, "--max-runs", "400", env=env)
    accepted: list[str] = []

    async def post_all() -> None:
        limits = httpx.Limits(max_connections=300)
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

            async def post(i: int) -> None:
                try:
                    response = await client.post("/api/runs", json={"prompt": f"Q{i}"})
                except httpx.HTTPError:
                    return  # the server died under it: not accepted
                if response.status_code == 202:
                    accepted.append(response.json()["id"])
                    if len(accepted) == 1:
                        os.kill(proc.pid, signal.SIGKILL)  # right after the first 202

            async with anyio.create_task_group() as tg:
                for i in range(300):
                    tg.start_soon(post, i)

    try:
        anyio.run(post_all)
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    assert accepted
    again, url = serve_process("-c", config, env=env)
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            statuses = {run_id: client.get(f"/api/runs/{run_id}") for run_id in accepted}
    finally:
        again.send_signal(signal.SIGINT)
        again.communicate(timeout=30)
    lost = [run_id for run_id, response in statuses.items() if response.status_code != 200]
    assert lost == []
    for response in statuses.values():
        assert response.json()["runtimeStatus"] == "Failed"
        assert response.json()["customStatus"]["interrupted"] is True


# -- hostile bodies ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[" * 100_000, "nested too deeply"),
        (b'{"prompt": "Why?", "timeout": ' + b"9" * 400 + b"}", "timeout"),
        (b'{"prompt": "Why?", "timeout": 1' + b"0" * 5000 + b"}", "malformed JSON"),
        (b'{"prompt": "Why?", "concurrency": ' + b"9" * 400 + b"}", "concurrency"),
        (b'{"prompt": "Why?", "max_cost": 1e999}', "max_cost"),
        (b'{"prompt": "' + b"\\ud800" + b'"}', "prompt"),
    ],
)
def test_hostile_json_is_400_with_one_line(serve: Serve, body: bytes, message: str) -> None:
    served = serve()
    with served.client() as client:
        runs = client.post("/api/runs", content=body, headers={"content-type": "application/json"})
        chat = client.post(
            "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
        )
        assert client.get("/healthz").status_code == 200  # the same connection, still good
    assert runs.status_code == 400, runs.text
    assert message in runs.json()["error"]
    assert "\n" not in runs.text and "Traceback" not in runs.text
    assert chat.status_code == 400
    assert set(chat.json()["error"]) == {"message", "type", "param", "code"}


# -- OpenAI's errors -----------------------------------------------------------------------------


def test_v1_is_refused_with_a_rate_limit_error_and_retry_after(
    server: FakeOpenAI, serve: Serve
) -> None:
    release = threading.Event()
    server.default = Reply(hold=release)
    served = serve(max_runs=1, max_queued=0)
    try:
        with served.client() as http:
            http.post("/api/runs", json={"prompt": "Why?", "agents": ["chemist"]})
            server.wait_for_requests(1)
            refused = http.post(
                "/v1/chat/completions",
                json={"model": "fanout", "messages": [{"role": "user", "content": "x"}]},
            )
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        error = refused.json()["error"]
        assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
        assert set(error) == {"message", "type", "param", "code"}
        client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.RateLimitError, match="--max-runs"):
            client.chat.completions.create(
                model="fanout", messages=[{"role": "user", "content": "x"}]
            )
    finally:
        release.set()


@pytest.mark.parametrize("model", ["fanout", "fanout/vote"])
def test_a_streamed_answer_that_every_persona_failed_raises_in_the_client(
    server: FakeOpenAI, serve: Serve, model: str
) -> None:
    server.default = Fault(500)
    served = serve()
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="x", max_retries=0)
    messages: Any = [{"role": "user", "content": "Why?"}]
    options = {"fanout": {"retries": 0}}
    with pytest.raises(openai.APIStatusError) as whole:
        client.chat.completions.create(model=model, messages=messages, extra_body=options)
    assert whole.value.status_code == 502
    stream = client.chat.completions.create(
        model=model, messages=messages, stream=True, extra_body=options
    )
    with pytest.raises(openai.APIError, match="no call answered"):
        for _ in stream:
            pass


def test_a_failed_run_says_why_in_the_samples_status(server: FakeOpenAI, serve: Serve) -> None:
    server.default = Fault(401, body={"error": {"message": "bad key"}})
    with serve().client() as client:
        started = client.post(
            "/api/multiagent/run", json={"prompt": "Why?", "agents": ["chemist", "physicist"]}
        ).json()
        status = until(
            lambda: (
                (s := client.get(started["statusQueryGetUri"]).json())["runtimeStatus"] == "Failed"
                and s
            ),
            what="Failed",
        )
    assert status["output"] == {}
    assert status["error"].startswith("no call answered (chemist: ")
    assert "bad key" in status["error"] and "physicist" in status["error"]
    assert json.dumps(status).count("\n") == 0


# -- a gateway: traces continued, a queue before refusing -----------------------------------------


def test_a_callers_traceparent_is_continued(server: FakeOpenAI, serve: Serve) -> None:
    trace_id, span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    parent = {"traceparent": f"00-{trace_id}-{span_id}-01"}
    served = serve()
    with served.client() as client:
        status = client.post(
            "/api/runs?wait=30", json={"prompt": "Why?", "agents": ["chemist"]}, headers=parent
        ).json()
        document = client.get(f"/api/runs/{status['instanceId']}/document").json()
        chat = client.post(
            "/v1/chat/completions",
            json={"model": "fanout", "messages": [{"role": "user", "content": "x"}]},
            headers=parent,
        ).json()
        fresh = client.post("/api/runs?wait=30", json={"prompt": "Why?"}).json()
    assert status["customStatus"]["trace_id"] == trace_id
    assert document["trace_id"] == trace_id and document["parent_span_id"] == span_id
    assert chat["fanout"]["trace_id"] == trace_id
    upstream = {r.headers["traceparent"].split("-")[1] for r in server.requests[:1]}
    assert upstream == {trace_id}
    assert fresh["customStatus"]["trace_id"] not in (None, trace_id)


def test_runs_past_max_runs_wait_as_pending_then_run(server: FakeOpenAI, serve: Serve) -> None:
    release = threading.Event()
    server.default = Reply(hold=release)
    served = serve(max_runs=1, max_queued=2)
    try:
        with served.client() as client:
            body = {"prompt": "Why?", "agents": ["chemist"]}
            running = client.post("/api/runs", json=body).json()["id"]
            server.wait_for_requests(1)
            queued = [client.post("/api/runs", json=body) for _ in range(2)]
            refused = client.post("/api/runs", json=body)
            assert [r.status_code for r in queued] == [202, 202]
            assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
            assert "--max-queued" in refused.json()["error"]
            waiting = queued[0].json()["id"]
            assert client.get(f"/api/runs/{waiting}").json()["runtimeStatus"] == "Pending"
            terminated = client.post(f"/api/runs/{queued[1].json()['id']}/terminate")
            assert terminated.status_code == 202  # taken out of the queue at once
            gone = until(
                lambda: (
                    (r := client.get(f"/api/runs/{queued[1].json()['id']}")).status_code == 200
                    and r.json()
                ),
                what="the queued run to be terminated",
            )
            assert gone["runtimeStatus"] == "Terminated"
            assert len(server.requests) == 1  # the queued runs have not asked anything yet
            release.set()
            assert until(
                lambda: client.get(f"/api/runs/{waiting}").json()["runtimeStatus"] == "Completed",
                what="the queued run to run",
            )
            assert client.get(f"/api/runs/{running}").json()["runtimeStatus"] == "Completed"
    finally:
        release.set()


def test_a_persona_asked_alone_streams_as_it_answers(server: FakeOpenAI, serve: Serve) -> None:
    release = threading.Event()
    server.default = Reply(text="Heat flows from hot to cold.", hold=release)
    served = serve()
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="x", max_retries=0)
    try:
        stream = client.chat.completions.create(
            model="fanout",
            messages=[{"role": "user", "content": "Why?"}],
            stream=True,
            extra_body={"fanout": {"agents": ["chemist"], "synthesize": False}},
        )
        pieces = []
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
                if not release.is_set():
                    # The first words are here while the answer's last piece is held back.
                    assert "cold." not in "".join(pieces)
                    release.set()
    finally:
        release.set()
    assert "".join(pieces) == "Heat flows from hot to cold."
    whole = client.chat.completions.create(
        model="fanout",
        messages=[{"role": "user", "content": "Why?"}],
        extra_body={"fanout": {"agents": ["chemist"], "synthesize": False}},
    )
    assert whole.choices[0].message.content == "Heat flows from hot to cold."
