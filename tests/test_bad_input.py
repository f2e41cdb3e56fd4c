"""Bad input never gets a traceback: one line on stderr naming the flag, file or value, exit 2,
nothing on stdout, and no request sent (issue 11: flags, prompts, environment, output paths)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fanout.errors import ConfigError
from fanout.local import local_everyone
from tests.conftest import AgentsFile, Invoke, assert_usage_error
from tests.fakeserver import FakeOpenAI

# --- FANOUT_LOCAL has one reading ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "everyone"),
    [
        *[("", False), ("0", False), ("false", False), ("No", False), (" off ", False)],
        *[("1", True), ("true", True), ("YES", True), ("on", True)],
    ],
)
def test_fanout_local_values(value: str, everyone: bool) -> None:
    assert local_everyone({"FANOUT_LOCAL": value}) is everyone


def test_fanout_local_unset_is_off() -> None:
    assert local_everyone({}) is False


def test_fanout_local_false_leaves_the_rest_of_the_panel_where_it_is(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = agents_file("a", "b", extra={"b": {"base_url": "local"}})
    monkeypatch.setenv("FANOUT_LOCAL", "false")
    result = invoke("ask", "-c", config, "--dry-run", "--json", "Why?")
    assert result.exit_code == 0, result.output
    calls = {c["name"]: c["base_url"] for c in json.loads(result.stdout)["calls"]}
    assert calls == {"a": server.base_url, "b": "local"}


@pytest.mark.parametrize("command", ["ask", "batch"])
def test_fanout_local_that_is_neither_yes_nor_no_is_a_usage_error(
    server: FakeOpenAI,
    agents_file: AgentsFile,
    invoke: Invoke,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    command: str,
) -> None:
    monkeypatch.setenv("FANOUT_LOCAL", "maybe")
    config = agents_file("a")
    if command == "ask":
        result = invoke("ask", "-c", config, "Why?")
    else:
        source = tmp_path / "q.txt"
        source.write_text("Why?\n")
        result = invoke("batch", source, "-c", config)
    assert_usage_error(result, "$FANOUT_LOCAL", "'maybe'")
    assert server.count() == 0


def test_local_everyone_error_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        local_everyone({"FANOUT_LOCAL": "2"})
