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


# --- flags: one line, exit 2, never click's box ------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["ask", "--bogus", "Why?"], ["No such option: --bogus", "ask --help"]),
        (["ask", "--concurrency", "many", "Why?"], ["--concurrency"]),
        (["batch"], ["Missing argument", "batch --help"]),
        (["runs", "show"], ["Missing argument"]),
        (["frobnicate"], ["No such command"]),
        (["ask", "--json=yes", "Why?"], ["--json"]),
        (["runs", "list", "-n"], ["-n"]),
    ],
    ids=[
        *["unknown-flag", "not-a-number", "missing-file", "missing-run-id", "unknown-command"],
        *["value-for-a-switch", "missing-value"],
    ],
)
def test_a_usage_error_is_one_line(invoke: Invoke, args: list[str], fragments: list[str]) -> None:
    result = invoke(*args)
    message = assert_usage_error(result, *fragments)
    assert "╭" not in message and "Usage:" not in message


@pytest.mark.parametrize("args", [[], ["runs"]], ids=["fanout", "fanout-runs"])
def test_no_arguments_show_the_help_and_exit_0(invoke: Invoke, args: list[str]) -> None:
    result = invoke(*args)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert "Usage:" in result.stdout and "Commands" in result.stdout
    assert result.stderr == ""


# --- numbers that overflow, or are inf or nan ---------------------------------------------------

HUGE = "99999999999999999999"


@pytest.mark.parametrize(
    "args",
    [
        ["runs", "list", "--limit", HUGE],
        ["runs", "list", "-n", "0"],
        ["ask", "--timeout", "inf", "Why?"],
        ["ask", "--timeout", "nan", "Why?"],
        ["ask", "--max-cost", "nan", "Why?"],
        ["ask", "--max-cost", "inf", "Why?"],
        ["ask", "--max-cost", "1e400", "Why?"],
        ["ask", "--rpm", "inf", "Why?"],
        ["ask", "--rpm", "nan", "Why?"],
        ["ask", "--tpm", "nan", "Why?"],
        ["ask", "--concurrency", "1" + "0" * 30, "Why?"],
        ["ask", "--retries", HUGE, "Why?"],
        ["ask", "--max-retry-after", "inf", "Why?"],
        ["batch", "q.txt", "--poll-interval", "inf"],
        ["batch", "q.txt", "--poll-interval", "nan"],
        ["batch", "q.txt", "--concurrency", HUGE],
    ],
    ids=lambda args: " ".join(a for a in args if a not in ("Why?", "q.txt"))[:40],
)
def test_numbers_out_of_bounds_are_usage_errors(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, args: list[str]
) -> None:
    flag = next(a for a in args if a.startswith("-"))
    result = invoke(*args, "-c", agents_file("a")) if args[0] != "runs" else invoke(*args)
    assert_usage_error(result, flag)
    assert server.count() == 0


# --- text that is not UTF-8 (a surrogate-escaped argument) --------------------------------------

NOT_UTF8 = b"caf\xe9 \xff".decode("utf-8", "surrogateescape")  # what Python makes of the bytes


@pytest.mark.parametrize(
    ("args", "what"),
    [
        (["ask", NOT_UTF8], "the prompt"),
        (["ask", "-a", NOT_UTF8, "Why?"], "--agents"),
        (["ask", "-m", NOT_UTF8, "Why?"], "--model"),
        (["batch", "q.txt", "-m", NOT_UTF8], "--model"),
        (["ask", "--local-model", NOT_UTF8, "Why?"], "--local-model"),
    ],
    ids=["prompt", "agents", "model", "batch-model", "local-model"],
)
def test_an_argument_that_is_not_utf8_is_a_usage_error_before_any_call(
    server: FakeOpenAI,
    agents_file: AgentsFile,
    invoke: Invoke,
    tmp_path: Path,
    args: list[str],
    what: str,
) -> None:
    (Path.cwd() / "q.txt").write_text("Why?\n")
    result = invoke(*args, "-c", agents_file("a", "b"))
    assert_usage_error(result, f"{what} is not UTF-8 text")
    assert server.count() == 0


@pytest.mark.parametrize("command", ["show", "retry", "synth"])
def test_a_run_id_that_is_not_utf8_is_a_usage_error(invoke: Invoke, command: str) -> None:
    assert_usage_error(invoke("runs", command, NOT_UTF8), "the run id is not UTF-8 text")


def test_a_path_that_is_not_utf8_is_named_in_a_printable_line(invoke: Invoke) -> None:
    message = assert_usage_error(invoke("agents", "-c", "gone\n" + NOT_UTF8 + ".yaml"))
    assert "gone\\n" in message and "\\udcff" in message
