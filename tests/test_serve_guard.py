"""``fanout serve`` safe by default: which hosts and origins it answers, what bodies it reads, the
headers of its page, the tokens it takes, and how long a client may take (``guard.py``,
``limits.py``). Real uvicorn servers on 127.0.0.1 (``servehelp``), real sockets."""

from __future__ import annotations

import json
import logging
import os
import resource
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest

from fanout.serve.limits import Limits
from tests.conftest import AgentsFile, Invoke
from tests.fakeserver import FakeOpenAI, Reply
from tests.servehelp import SRC, Serve, Served, serve_process, until


def port_of(served: Served) -> int:
    return int(served.url.rsplit(":", 1)[1])


# -- the Host a request names --------------------------------------------------------------------


def test_a_host_that_is_not_this_server_is_refused(server: FakeOpenAI, serve: Serve) -> None:
    served = serve()
    port = port_of(served)
    with served.client() as client:
        client.post("/api/runs?wait=30", json={"prompt": "A private question"})
        # A DNS-rebinding page reaches 127.0.0.1 under its own name: it reads nothing.
        for method, path in [("GET", "/api/runs"), ("POST", "/api/runs"), ("GET", "/"),
                             ("GET", "/healthz"), ("GET", "/api/agents")]:  # fmt: skip
            refused = client.request(
                method,
                path,
                headers={"host": f"attacker.example:{port}"},
                json={"prompt": "x"} if method == "POST" else None,
            )
            assert refused.status_code == 421, (path, refused.text)
            assert "private question" not in refused.text.lower()
            assert refused.json() == {
                "error": "this server is not 'attacker.example' "
                "(start it with --allowed-host attacker.example)"
            }
        v1 = client.get("/v1/models", headers={"host": "attacker.example"})
        assert v1.status_code == 421
        assert v1.json()["error"]["code"] == "misdirected_request"
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"LOCALHOST.:{port}", "127.0.0.2"):
            assert client.get("/api/runs", headers={"host": host}).status_code == 200, host
    assert len(server.requests) == 3  # the one run asked for, and nothing else


def test_allowed_host_names_the_server_and_links_use_the_host_asked(serve: Serve) -> None:
    served = serve(allowed_hosts=["fanout.lan"])
    port = port_of(served)
    with served.client() as client:
        response = client.post(
            "/api/runs", json={"prompt": "Why?"}, headers={"host": f"fanout.lan:{port}"}
        )
        assert response.status_code == 202, response.text
        run_id = response.json()["id"]
        expected = f"http://fanout.lan:{port}/api/runs/{run_id}"
        assert response.headers["location"] == response.json()["statusQueryGetUri"] == expected
        other = client.post(
            "/api/runs", json={"prompt": "Why?"}, headers={"host": f"evil.lan:{port}"}
        )
        assert other.status_code == 421
        assert "location" not in other.headers


# -- state-changing requests from other origins --------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "allowed"),
    [
        ({"origin": "http://evil.example"}, False),
        ({"origin": "null"}, False),
        ({"sec-fetch-site": "cross-site"}, False),
        ({"sec-fetch-site": "same-site"}, False),
        ({"origin": "http://127.0.0.1:1"}, False),  # same host, another port: another origin
        ({"sec-fetch-site": "same-origin"}, True),
        ({"sec-fetch-site": "none"}, True),
        ({}, True),  # curl, the openai client
    ],
)
def test_state_changing_requests_from_other_origins_are_refused(
    server: FakeOpenAI, serve: Serve, headers: dict[str, str], allowed: bool
) -> None:
    served = serve()
    chat = {"model": "fanout", "messages": [{"role": "user", "content": "x"}]}
    with served.client() as client:
        responses = [
            client.post("/api/runs", json={"prompt": "Why?"}, headers=headers),
            client.post(
                "/api/runs", content="Why?", headers={**headers, "content-type": "text/plain"}
            ),
            client.post(
                "/api/multiagent/run",
                content="Why?",
                headers={**headers, "content-type": "text/plain"},
            ),
            client.post("/api/runs/nope/terminate", headers=headers),
            client.delete("/api/runs/nope", headers=headers),
        ]
        v1 = client.post("/v1/chat/completions", json=chat, headers=headers)
        listed = client.get("/api/runs", headers=headers)  # reading is for CORS to allow
    if allowed:
        assert [r.status_code for r in responses] == [202, 202, 202, 404, 404]
        assert v1.status_code == 200
        return
    for response in responses:
        assert response.status_code == 403, response.text
        assert "may not send requests to this server" in response.json()["error"]
    assert v1.status_code == 403 and v1.json()["error"]["code"] == "cross_site"
    assert listed.status_code == 200 and listed.json() == {"runs": []}
    assert server.requests == []


def test_the_dashboards_own_origin_and_the_cors_origin_may_post(serve: Serve) -> None:
    served = serve()
    with served.client() as client:
        own = client.post("/api/runs", json={"prompt": "Why?"}, headers={"origin": served.url})
        assert own.status_code == 202, own.text
    origin = "https://app.example"
    with serve(cors=origin, token="a-long-token").client() as client:
        auth = {"authorization": "Bearer a-long-token"}
        allowed = client.post(
            "/api/runs", json={"prompt": "Why?"}, headers={**auth, "origin": origin}
        )
        assert allowed.status_code == 202, allowed.text
        assert allowed.headers["access-control-allow-origin"] == origin
        other = client.post(
            "/api/runs", json={"prompt": "Why?"}, headers={**auth, "origin": "https://x.example"}
        )
        assert other.status_code == 403


# -- bodies: JSON where JSON is meant --------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [None, "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/html"],
)
def test_json_routes_want_json(server: FakeOpenAI, serve: Serve, content_type: str | None) -> None:
    body = json.dumps({"prompt": "Why?"}).encode()
    chat = json.dumps({"model": "fanout", "messages": [{"role": "user", "content": "x"}]})
    headers = {} if content_type is None else {"content-type": content_type}
    with serve().client() as client:
        runs = client.post("/api/runs", content=body, headers=headers)
        sample = client.post("/api/multiagent/run", content=body, headers=headers)
        v1 = client.post("/v1/chat/completions", content=chat.encode(), headers=headers)
        v1_text = client.post(
            "/v1/chat/completions", content=chat.encode(), headers={"content-type": "text/plain"}
        )
    for response in (runs, sample):
        assert response.status_code == 415, response.text
        assert "Content-Type: application/json" in response.json()["error"]
        assert "text/plain" in response.json()["error"]
    for response in (v1, v1_text):
        assert response.status_code == 415
        assert response.json()["error"]["code"] == "unsupported_media_type"
    assert server.requests == []


def test_the_samples_route_takes_json_too(serve: Serve) -> None:
    with serve().client() as client:
        response = client.post(
            "/api/multiagent/run",
            json={"prompt": "Why?", "agents": ["chemist"], "wait_for_response": True},
        )
    assert response.status_code == 200, response.text
    assert response.json()["output"] == {"chemist": "m-chemist says: Why?"}
    assert response.json()["input"] == "Why?"


# -- the page's headers --------------------------------------------------------------------------


def test_the_page_comes_with_a_csp_and_no_framing(serve: Serve) -> None:
    with serve().client() as client:
        page = client.get("/")
        data = client.get("/api/runs")
        script = client.get("/static/dashboard.js")
    csp = page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
    assert "default-src 'none'" in csp and "unsafe-inline" not in csp
    for response in (page, data, script):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["x-frame-options"] == "DENY"
    assert data.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"


# -- tokens and flags ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "fragments"),
    [
        (["--token", " " * 8], {}, ["--token is blank"]),
        ([], {"FANOUT_SERVE_TOKEN": " " * 8}, ["--token is blank"]),
        (["--token", "pässwörd-long"], {}, ["printable ASCII"]),
        (["--token", "two words here"], {}, ["printable ASCII"]),
        (["--cors", "*"], {}, ["--cors '*'", "--token"]),
        (["--cors", "not an origin"], {}, ["--cors"]),
        (["--allowed-host", "a b"], {}, ["--allowed-host"]),
    ],
)
def test_flags_that_cannot_work_are_refused(
    invoke: Invoke,
    agents_file: AgentsFile,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: dict[str, str],
    fragments: list[str],
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    result = invoke("serve", "--port", "0", "-c", agents_file(), *args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.startswith("fanout: error: ") and result.stderr.count("\n") == 1
    for fragment in fragments:
        assert fragment in result.stderr


def test_a_token_on_the_command_line_is_warned_about(
    agents_file: AgentsFile, tmp_path: Path
) -> None:
    config = str(agents_file())
    flagged, _ = serve_process("-c", config, "--token", "a-long-token")
    flagged.send_signal(signal.SIGINT)
    _, flagged_err = flagged.communicate(timeout=30)
    quiet, _ = serve_process("-c", config, env={"FANOUT_SERVE_TOKEN": "a-long-token"})
    quiet.send_signal(signal.SIGINT)
    _, quiet_err = quiet.communicate(timeout=30)
    assert "--token can be read by other users" in flagged_err
    assert "FANOUT_SERVE_TOKEN" in flagged_err
    assert "a-long-token" not in flagged_err
    assert quiet_err == ""


@pytest.mark.parametrize("damage", ["a file as FANOUT_HOME", "a damaged history.db"])
def test_a_history_that_cannot_open_is_one_line_before_the_url(
    agents_file: AgentsFile, tmp_path: Path, damage: str
) -> None:
    home = tmp_path / "home"
    if damage == "a file as FANOUT_HOME":
        home.write_text("not a directory\n")
    else:
        home.mkdir()
        (home / "history.db").write_bytes(b"SQLite format 3\x00" + b"\x13" * 4096)
    result = subprocess.run(
        [sys.executable, "-m", "fanout", "serve", "--port", "0", "-c", str(agents_file())],
        env={**os.environ, "PYTHONPATH": SRC, "FANOUT_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 1, result
    assert result.stdout == ""
    assert result.stderr.startswith("fanout: error: ") and result.stderr.count("\n") == 1
    assert "history" in result.stderr and "Traceback" not in result.stderr


# -- how long a client may take, how many may connect ----------------------------------------------

QUICK = Limits(header_timeout_s=0.3, body_timeout_s=0.3, write_timeout_s=0.3, keep_alive_s=5)


def connect(served: Served, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port_of(served)))
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (``socket.timeout`` if it never does)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_a_connection_that_sends_no_headers_is_closed(serve: Serve) -> None:
    served = serve(limits=QUICK)
    silent = connect(served)
    assert read_all(silent).startswith(b"HTTP/1.1 408 ")
    # A byte now and then does not keep it open either (slowloris).
    slow = connect(served)
    sent = 0
    with pytest.raises(OSError):
        for byte in b"GET /api/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 10_000:
            slow.sendall(bytes([byte]))
            sent += 1
            time.sleep(0.02)  # the client under test is slow: that is the point
            slow.setblocking(False)
            try:
                if slow.recv(65536) == b"":
                    raise ConnectionResetError("closed by the server")
            except BlockingIOError:
                pass
            finally:
                slow.setblocking(True)
    assert sent < 10_000
    with served.client() as client:  # and the server still answers
        assert client.get("/healthz").status_code == 200


def test_a_body_that_stops_arriving_gets_408(serve: Serve) -> None:
    served = serve(limits=QUICK)
    sock = connect(served)
    sock.sendall(
        b"POST /api/runs HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        b'content-length: 100\r\n\r\n{"prompt":'
    )
    answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"did not arrive within 0.3 s" in answer


def test_an_event_stream_nobody_reads_is_dropped(server: FakeOpenAI, serve: Serve) -> None:
    # A long answer, so its replay fills every buffer between us and a client that never reads.
    server.default = Reply(text=("x" * 65536 + " ") * 120)
    served = serve(limits=QUICK)
    with served.client() as client:
        body = {"prompt": "Why?", "agents": ["chemist"]}
        run_id = client.post("/api/runs?wait=60", json=body).json()["instanceId"]
    connections = served.app.state.connections
    sock = connect(served, rcvbuf=4096)
    sock.sendall(f"GET /api/runs/{run_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    until(lambda: len(connections) == 1, what="the stream to start")
    until(lambda: len(connections) == 0, what="the server to drop the stream nobody reads")
    with served.client() as client:
        assert client.get("/healthz").status_code == 200


def test_past_the_connection_cap_the_idle_ones_make_room(serve: Serve) -> None:
    served = serve(limits=Limits(max_connections=20))
    idle = [connect(served) for _ in range(40)]
    connections = served.app.state.connections
    until(lambda: len(connections) <= 20, what="the cap")
    with served.client() as client:
        assert client.get("/healthz").status_code == 200
        assert client.post("/api/runs?wait=30", json={"prompt": "Why?"}).status_code == 200
    closed = 0
    for sock in idle[:10]:  # the oldest went first
        sock.settimeout(30)
        closed += sock.recv(1) == b""
        sock.close()
    assert closed == 10


def _lower_open_files(limit: int) -> Callable[[], None]:
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return preexec


def test_a_thousand_idle_connections_under_ulimit_1024(
    server: FakeOpenAI, agents_file: AgentsFile, tmp_path: Path
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1300:
        if hard != resource.RLIM_INFINITY and hard < 1300:
            pytest.skip("this test opens 1,100 connections: needs ulimit -n 1300")
        resource.setrlimit(resource.RLIMIT_NOFILE, (1300, hard))
    token = "a-long-token-value"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fanout", "serve", "--port", "0", "-c", str(agents_file())],
        env={
            **os.environ,
            "PYTHONPATH": SRC,
            "FANOUT_HOME": str(tmp_path / "home"),
            "FANOUT_SERVE_TOKEN": token,
        },
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_lower_open_files(1024),
    )
    idle: list[socket.socket] = []
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[2].rstrip("/")
        port = int(url.rsplit(":", 1)[1])
        for _ in range(1100):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            idle.append(sock)
        auth = {"authorization": f"Bearer {token}"}
        with httpx.Client(base_url=url, timeout=30, headers=auth) as client:
            for _ in range(3):
                assert client.get("/healthz").status_code == 200
                ran = client.post("/api/runs?wait=30", json={"prompt": "Why?"})
                assert ran.status_code == 200, ran.text
                assert ran.json()["runtimeStatus"] == "Completed"
    finally:
        for sock in idle:
            sock.close()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert "Too many open files" not in err and "Traceback" not in err, err[-3000:]
    assert proc.returncode == 0, err[-3000:]


# -- the openai client sees OpenAI's errors ------------------------------------------------------


def test_v1_errors_are_openai_errors_on_every_status(serve: Serve) -> None:
    served = serve(token="a-long-token", max_runs=1)
    with served.client() as client:
        denied = client.get("/v1/models")
        unknown = client.get("/v1/nothing", headers={"authorization": "Bearer a-long-token"})
    for response in (denied, unknown):
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, response.text
    assert denied.status_code == 401 and denied.json()["error"]["type"] == "authentication_error"
    assert unknown.status_code == 404
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="wrong-token", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="unauthorized"):
        client.models.list()


def test_a_client_leaving_an_event_stream_leaves_no_noise(
    server: FakeOpenAI, serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    server.default = Reply(text="word " * 20_000)
    served = serve()
    with served.client() as client:
        body = {"prompt": "Why?", "agents": ["chemist"]}
        run_id = client.post("/api/runs?wait=60", json=body).json()["instanceId"]
    connections = served.app.state.connections
    for _ in range(5):
        sock = connect(served)
        sock.sendall(f"GET /api/runs/{run_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # gone mid-stream, with a reset
        until(lambda: len(connections) == 0, what="the server to see the client go")
    with served.client() as client:
        assert client.get("/healthz").status_code == 200
    noise = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert noise == []


def test_replay_memory_is_bounded_by_bytes(server: FakeOpenAI, serve: Serve) -> None:
    server.default = Reply(text="word " * 20_000)  # 100 KB answers, a line per word
    served = serve()
    manager = served.app.state.manager
    manager.replay_bytes = 1_200_000
    with served.client() as client:
        ids = [
            client.post(
                "/api/runs?wait=60", json={"prompt": f"Q{i}", "agents": ["chemist"]}
            ).json()["instanceId"]
            for i in range(4)
        ]
        kept = [run for run in manager.live_runs() if run.over]
        assert sum(run.size for run in kept) <= manager.replay_bytes
        assert [run.id for run in kept] == ids[-len(kept) :] and 0 < len(kept) < 4
        # The forgotten ones are still answered, from the history (without their deltas).
        with client.stream("GET", f"/api/runs/{ids[0]}/events") as response:
            kinds = [line for line in response.iter_lines() if line.startswith("event:")]
        assert kinds[-1] == "event: run_finished" and "event: delta" not in kinds


def test_a_long_answer_behind_a_proxy_is_not_cut_by_the_header_timeout(
    server: FakeOpenAI, serve: Serve
) -> None:
    release = threading.Event()
    server.default = Reply(hold=release)
    served = serve(limits=QUICK)
    # A local proxy forwards the client's address: the connection is still the proxy's own.
    proxied = {"x-forwarded-for": "203.0.113.7", "x-forwarded-proto": "https"}
    answers: list[httpx.Response] = []

    def wait_for_the_answer() -> None:
        with served.client() as client:
            answers.append(
                client.post("/api/runs?wait=30", json={"prompt": "Why?"}, headers=proxied)
            )

    waiting = threading.Thread(target=wait_for_the_answer)
    waiting.start()
    server.wait_for_requests(3)
    time.sleep(4 * QUICK.header_timeout_s)  # the timeout under test must have come and gone
    release.set()
    waiting.join(30)
    assert answers and answers[0].status_code == 200, answers
    assert answers[0].json()["runtimeStatus"] == "Completed"
