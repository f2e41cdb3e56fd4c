"""Shared fixtures: an isolated environment, the loopback test server and agents files."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner, Result

from fanout.cli import app
from tests.fakeserver import FakeOpenAI

SENTINEL_KEY = "sk-test-SENTINEL-0123456789abcdef"


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No real key, no user config, no stray agents.yaml: every test starts from nothing."""
    for var in (
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "OPENAI_ORG_ID",
        "OPENAI_PROJECT_ID",
        "OPENAI_ADMIN_KEY",
        "FANOUT_CONFIG",
        "FANOUT_HOME",  # the history goes to XDG_DATA_HOME below
        "FANOUT_LOCAL",
        "NO_COLOR",
        "TRACEPARENT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv("COLUMNS", "120")
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    return workdir


@pytest.fixture(scope="session")
def _session_server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
def server(_session_server: FakeOpenAI) -> Iterator[FakeOpenAI]:
    """The OpenAI-compatible loopback server, with a clean script and record for each test."""
    _session_server.reset()
    yield _session_server
    _session_server.reset()


AgentsFile = Callable[..., Path]


@pytest.fixture
def agents_file(tmp_path: Path, server: FakeOpenAI) -> AgentsFile:
    """Write an agents file whose personas (model ``m-<name>``) all talk to the test server."""

    def write(
        *names: str,
        defaults: dict[str, Any] | None = None,
        synthesizer: dict[str, Any] | None = None,
        extra: dict[str, dict[str, Any]] | None = None,
    ) -> Path:
        agents = []
        for name in names or ("physicist", "chemist", "biologist"):
            agent: dict[str, Any] = {
                "name": name,
                "model": f"m-{name}",
                "description": f"the {name}",
                "instructions": f"You are a {name}.",
            }
            agent.update((extra or {}).get(name, {}))
            agents.append(agent)
        document: dict[str, Any] = {
            "defaults": {"base_url": server.base_url, **(defaults or {})},
            "agents": agents,
        }
        if synthesizer is not None:
            document["synthesizer"] = synthesizer
        path = tmp_path / "agents.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
        return path

    return write


Invoke = Callable[..., Result]


@pytest.fixture
def invoke() -> Invoke:
    """Run the real ``fanout`` command in-process; stdout and stderr are kept apart."""

    def run(*args: str | Path, input: str | None = None) -> Result:
        return CliRunner().invoke(app, [str(a) for a in args], input=input)

    return run


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def assert_usage_error(result: Result, *fragments: str) -> str:
    """Bad input's one promise: exit 2, nothing on stdout, one ``fanout: error:`` line on
    stderr holding every fragment, no traceback. Returns the line."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == "", result.stdout
    message = result.stderr
    assert message.startswith("fanout: error: "), message
    assert message.count("\n") == 1 and message.endswith("\n"), message
    assert "Traceback" not in message
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.fixture
def serve(agents_file: AgentsFile) -> Iterator[Callable[..., Any]]:
    """Start ``fanout serve`` in a thread (default: the test panel), stopped after the test:
    ``serve(config=None, **create_app options) -> Served`` (tests.servehelp)."""
    from tests.servehelp import Served, serve_in_thread  # the serve extra: only when asked

    started: list[Served] = []

    def start(config: Path | None = None, **options: Any) -> Served:
        served = serve_in_thread(config or agents_file(), **options)
        started.append(served)
        return served

    yield start
    for served in started:
        served.stop()
