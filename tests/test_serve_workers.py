"""``fanout serve --workers 2``: any worker answers any run's status, events, terminate and
purge (each says who answered in ``Fanout-Worker``; connections go to whichever accepts)."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import AgentsFile
from tests.fakeserver import FakeOpenAI, Hang, Reply
from tests.servehelp import serve_process, until


@pytest.fixture
def two_workers(
    server: FakeOpenAI, agents_file: AgentsFile, tmp_path: Path
) -> Iterator[httpx.Client]:
    proc, url = serve_process(
        "-c", str(agents_file()), "--workers", "2", env={"FANOUT_HOME": str(tmp_path / "home")}
    )
    # A connection per request, so that either worker may take each one.
    fresh = httpx.Limits(max_keepalive_connections=0)
    try:
        with httpx.Client(base_url=url, timeout=30, limits=fresh) as client:
            yield client
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "Traceback" not in err, err


def answered_by(
    client: httpx.Client, wanted: Callable[[str], bool], method: str, path: str, **kwargs: Any
) -> httpx.Response:
    """Ask until the answer comes from a worker ``wanted`` accepts (for requests that change
    nothing: the others were answered too)."""
    for _ in range(400):
        response = client.request(method, path, **kwargs)
        if wanted(response.headers["fanout-worker"]):
            return response
    raise AssertionError(f"no answer from the wanted worker to {method} {path}")


@contextmanager
def connected_to(client: httpx.Client, wanted: Callable[[str], bool]) -> Iterator[httpx.Client]:
    """A client whose one kept-alive connection a worker ``wanted`` accepted (every request
    on it goes to that worker)."""
    for _ in range(400):
        one = httpx.Client(
            base_url=client.base_url, timeout=30, limits=httpx.Limits(max_connections=1)
        )
        try:
            if wanted(one.get("/healthz").headers["fanout-worker"]):
                yield one
                return
        finally:
            one.close()
    raise AssertionError("no connection to the wanted worker")


def test_any_worker_answers_a_runs_status_and_events(
    server: FakeOpenAI, two_workers: httpx.Client
) -> None:
    client = two_workers
    release = threading.Event()
    server.default = Reply(hold=release)
    try:
        started = client.post("/api/runs", json={"prompt": "Why?"})
        assert started.status_code == 202
        run_id, owner = started.json()["id"], started.headers["fanout-worker"]

        def other(worker: str) -> bool:
            return worker != owner

        server.wait_for_requests(3)
        status = answered_by(client, other, "GET", f"/api/runs/{run_id}")
        assert status.status_code == 202
        assert status.json()["runtimeStatus"] == "Running"
        assert set(status.json()["customStatus"]["calls"].values()) == {"pending"}
        for _ in range(400):  # the event stream, from the worker not running the run
            with client.stream("GET", f"/api/runs/{run_id}/events") as stream:
                if stream.headers["fanout-worker"] == owner:
                    continue
                release.set()
                frames = [
                    json.loads(line[5:]) for line in stream.iter_lines() if line.startswith("data:")
                ]
                break
        else:
            raise AssertionError("the other worker never took the stream")
    finally:
        release.set()
    kinds = [f["type"] for f in frames]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    assert sorted(f["agent"] for f in frames if f["type"] == "agent_finished") == [
        "biologist", "chemist", "physicist"
    ]  # fmt: skip
    assert frames[-1]["document"]["status"] == "completed"
    done = answered_by(client, other, "GET", f"/api/runs/{run_id}")
    assert done.status_code == 200 and done.json()["runtimeStatus"] == "Completed"


def test_any_worker_terminates_and_purges_a_run(
    server: FakeOpenAI, two_workers: httpx.Client
) -> None:
    client = two_workers
    server.script("m-hang", Hang(), Hang(), Hang())
    started = client.post("/api/runs", json={"prompt": "Why?", "model": "m-hang"})
    run_id, owner = started.json()["id"], started.headers["fanout-worker"]

    def other(worker: str) -> bool:
        return worker != owner

    def mine(worker: str) -> bool:
        return worker == owner

    server.wait_for_requests(3)
    with connected_to(client, other) as there:
        stop = there.post(f"/api/runs/{run_id}/terminate")
    assert stop.status_code == 202, stop.text
    status = until(
        lambda: (r := client.get(f"/api/runs/{run_id}")).status_code == 200 and r.json(),
        what="the run to be terminated by the worker running it",
    )
    assert status["runtimeStatus"] == "Terminated"
    with connected_to(client, other) as there:
        assert there.post(f"/api/runs/{run_id}/terminate").status_code == 410
    # The worker that ran it holds it in memory; the other one purges it: gone everywhere.
    assert answered_by(client, mine, "GET", f"/api/runs/{run_id}").status_code == 200
    with connected_to(client, other) as there:
        purged = there.delete(f"/api/runs/{run_id}")
    assert purged.json() == {"instancesDeleted": 1}
    until(
        lambda: answered_by(client, mine, "GET", f"/api/runs/{run_id}").status_code == 404,
        what="the worker that ran it to forget it",
    )
    assert answered_by(client, other, "GET", f"/api/runs/{run_id}").status_code == 404
