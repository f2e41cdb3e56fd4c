"""One way in: the CLI and the server start runs through the same API with the same recorder,
so a run is recorded the same whoever started it, and ``runs retry`` asks what the run asked."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from fanout.history import History, history_path
from tests.conftest import Invoke
from tests.fakeserver import FakeOpenAI, Fault, Reply
from tests.servehelp import serve_in_thread

# The judge's verdict (read in both orders): it decides, so a run ends with 0, not 5.
VERDICT = Reply(text='{"reasoning": "r", "winner": "A"}')


@pytest.fixture
def roles_file(tmp_path: Path, server: FakeOpenAI) -> Path:
    """Two personas, and a judge and a synthesizer each on a model of their own."""
    document = {
        "defaults": {"base_url": server.base_url},
        "agents": [
            {"name": "a", "model": "m-a", "instructions": "You are a."},
            {"name": "b", "model": "m-b", "instructions": "You are b."},
        ],
        "judge": {"model": "m-judge"},
        "synthesizer": {"model": "m-merge"},
    }
    path = tmp_path / "agents.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def _stored(run_id: str) -> Any:
    with History(history_path(os.environ)) as history:
        return history.load(history.resolve(run_id))


def _served_run(config: Path, body: dict[str, Any]) -> str:
    served = serve_in_thread(config)
    try:
        with served.client() as client:
            status = client.post("/api/runs?wait=30", json=body).json()
    finally:
        served.stop()
    return str(status["instanceId"])


def test_a_judge_run_started_by_the_server_is_retried_on_its_own_judge(
    server: FakeOpenAI, roles_file: Path, invoke: Invoke
) -> None:
    server.script("m-judge", Fault(500))
    run_id = _served_run(roles_file, {"prompt": "Why?", "judge": True, "retries": 0})
    assert _stored(run_id).document["status"] == "partial"
    server.reset()
    server.script("m-judge", VERDICT, VERDICT)
    result = invoke("runs", "retry", run_id, "--json")
    assert result.exit_code == 0, result.output
    assert [r.model for r in server.requests] == ["m-judge"]
    assert server.requests[0].path.startswith("/v1")
    assert json.loads(result.stdout)["status"] == "completed"


def test_the_cli_and_the_server_record_a_run_the_same(
    server: FakeOpenAI, roles_file: Path, invoke: Invoke
) -> None:
    server.script("m-judge", *[VERDICT] * 4)  # two runs, each judged in both orders
    asked = invoke("ask", "-c", roles_file, "--judge", "-s", "--json", "Why?")
    assert asked.exit_code == 0, asked.output
    by_cli = _stored(json.loads(asked.stdout)["run_id"])
    by_server = _stored(
        _served_run(roles_file, {"prompt": "Why?", "judge": True, "synthesize": True})
    )
    assert by_server.agents == by_cli.agents
    assert by_server.synthesizer == by_cli.synthesizer
    assert by_server.settings["roles"] == by_cli.settings["roles"]
    assert by_server.settings["roles"]["judge"]["model"] == "m-judge"
    assert by_server.synthesizer is not None and by_server.synthesizer["model"] == "m-merge"
