"""--help at 80 columns (issue 13): options in groups, no line wider than the terminal, choices
shown as choices, numbers without Typer's ``[0.001<=x<=1000000.0]``, no ``<bool>`` anywhere."""

from __future__ import annotations

import re
from typing import Any, get_args

import pytest
import typer
from typer.core import TyperGroup

from fanout import render
from fanout.cli import app, options
from tests.conftest import Invoke, assert_usage_error
from tests.fakeserver import FakeOpenAI


def command_paths(command: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and group of the app, as the words that name it."""
    paths = [path]
    if isinstance(command, TyperGroup):  # the root loads a command's module when it is named
        context = typer.Context(command)
        for name in sorted(command.list_commands(context)):
            paths += command_paths(command.get_command(context, name), (*path, name))
    return paths


ALL_COMMANDS = command_paths(typer.main.get_command(app))


def help_at_80(invoke: Invoke, monkeypatch: pytest.MonkeyPatch, *path: str) -> str:
    monkeypatch.setenv("COLUMNS", "80")
    result = invoke(*path, "--help")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    return result.stdout


def panels(text: str) -> dict[str, str]:
    """Each long option of a help text and the title of the box it is listed in."""
    where: dict[str, str] = {}
    title = ""
    for line in text.splitlines():
        opened = re.match(r"╭─ (.+?) ─", line)
        if opened:
            title = opened.group(1)
        option = re.match(r"│ (--[a-z-]+)", line)
        if option:
            where[option.group(1)] = title
    return where


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=lambda p: " ".join(p) or "fanout")
def test_every_help_fits_80_columns_with_no_bool_and_no_raw_ranges(
    invoke: Invoke, monkeypatch: pytest.MonkeyPatch, path: tuple[str, ...]
) -> None:
    text = help_at_80(invoke, monkeypatch, *path)
    wide = [line for line in text.splitlines() if len(line) > 80]
    assert not wide, wide
    assert "<bool>" not in text
    assert not re.search(r"x<=|x>=|<=x", text), text


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=lambda p: " ".join(p) or "fanout")
def test_no_help_page_names_a_type_instead_of_what_it_takes_or_wraps_prose_early(
    invoke: Invoke, monkeypatch: pytest.MonkeyPatch, path: tuple[str, ...]
) -> None:
    # serve, runs show/retry/synth/export/delete, batch and flow showed <str>, <path>, {file}.
    text = help_at_80(invoke, monkeypatch, *path)
    assert not re.search(r"<(str|path|int|float|file|text|choice)\b[^>]*>", text), text
    usage = next(line for line in text.splitlines() if "Usage:" in line).rstrip()
    words = r"( [A-Z_]+| \[[A-Z_]+\])*( COMMAND \[ARGS\]\.\.\.)?"
    assert re.fullmatch(rf" Usage: fanout[ a-z]* \[OPTIONS\]{words}", usage), usage
    # Wide enough for every paragraph and every flag's help on one line: none goes on to a
    # second (a paragraph broken where its source line was).
    monkeypatch.setenv("COLUMNS", "300")
    wide = invoke(*path, "--help").stdout
    continued = [line for line in wide.splitlines() if re.match(r"│ {12,}\S", line)]
    assert not continued, continued


def test_ask_help_groups_its_options(invoke: Invoke, monkeypatch: pytest.MonkeyPatch) -> None:
    text = help_at_80(invoke, monkeypatch, "ask")
    where = panels(text)
    expected = {
        "--agents": options.GROUP_PANEL,
        "--persona": options.GROUP_PANEL,
        "--config": options.GROUP_PANEL,
        "--model": options.GROUP_PANEL,
        "--vote": options.GROUP_SHAPES,
        "--judge": options.GROUP_SHAPES,
        "--council": options.GROUP_SHAPES,
        "--route": options.GROUP_SHAPES,
        "--orchestrate": options.GROUP_SHAPES,
        "--shape": options.GROUP_SHAPES,
        "--synthesize": options.GROUP_SHAPE_OPTIONS,
        "--option": options.GROUP_SHAPE_OPTIONS,
        "--quorum": options.GROUP_SHAPE_OPTIONS,
        "--json": options.GROUP_OUTPUT,
        "--format": options.GROUP_OUTPUT,
        "--stream": options.GROUP_OUTPUT,
        "--rpm": options.GROUP_LIMITS,
        "--timeout": options.GROUP_LIMITS,
        "--retries": options.GROUP_LIMITS,
        "--max-cost": options.GROUP_COST,
        "--dry-run": options.GROUP_COST,
        "--local": options.GROUP_LOCAL,
        "--local-model": options.GROUP_LOCAL,
        "--no-log": options.GROUP_HISTORY,
        "--traceparent": options.GROUP_HISTORY,
        "--help": "Options",
    }
    assert {flag: where.get(flag) for flag in expected} == expected
    # Every option of ask is in a group, and no group is a single box of everything.
    assert set(where.values()) == {*expected.values()}
    assert max(list(where.values()).count(title) for title in set(where.values())) <= 12


def test_batch_help_groups_its_options_and_shows_via_as_a_choice(
    invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = help_at_80(invoke, monkeypatch, "batch")
    where = panels(text)
    assert where["--persona"] == where["--agents"] == options.GROUP_PANEL
    assert where["--via"] == where["--poll-interval"] == options.GROUP_BATCH_API
    assert where["--rpm"] == options.GROUP_LIMITS
    assert "<direct|openai-batch>" in text


def test_an_unknown_via_is_a_one_line_usage_error(
    server: FakeOpenAI, invoke: Invoke, tmp_path: Any
) -> None:
    source = tmp_path / "q.txt"
    source.write_text("Why?\n")
    message = assert_usage_error(invoke("batch", source, "--via", "pigeon"), "--via", "'pigeon'")
    assert "direct" in message and "openai-batch" in message
    assert "Value error" not in message
    assert server.count() == 0


@pytest.mark.parametrize("value", ["0", "nan", "inf", "-1", "2e6", "many"])
def test_a_bad_rpm_names_the_flag_and_the_value(
    server: FakeOpenAI, invoke: Invoke, value: str
) -> None:
    message = assert_usage_error(invoke("ask", "--rpm", value, "Why?"), "--rpm", repr(value))
    assert "requests a minute" in message
    assert server.count() == 0


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["ask", "--concurrency", "0"], "--concurrency"),
        (["ask", "--concurrency", "1.5"], "--concurrency"),
        (["ask", "--timeout", "0"], "--timeout"),
        (["ask", "--quorum", "1.5"], "--quorum"),
        (["ask", "--best-of", "51"], "--best-of"),
        (["ask", "--format", "svg"], "--format"),
        (["runs", "list", "--status", "done"], "--status"),
        (["runs", "list", "-n", "0"], "-n"),
    ],
)
def test_bad_numbers_and_choices_name_the_flag_and_the_value(
    invoke: Invoke, args: list[str], flag: str
) -> None:
    extra = ["Why?"] if args[0] == "ask" else []
    assert_usage_error(invoke(*args, *extra), flag, repr(args[-1]))


def test_good_numbers_still_pass(server: FakeOpenAI, invoke: Invoke, agents_file: Any) -> None:
    result = invoke(
        "ask", "-c", agents_file("a"), "--rpm", "0.5", "--timeout", "30", "--concurrency",
        "2", "--retries", "0", "--max-cost", "1", "--json", "--dry-run", "Why?",
    )  # fmt: skip
    assert result.exit_code == 0, result.output


def test_the_views_the_cli_offers_are_the_renderer_s() -> None:
    assert get_args(options.View) == render.VIEWS


@pytest.mark.parametrize("path", [(), ("ask",)], ids=["fanout", "ask"])
def test_help_ends_with_short_examples(
    invoke: Invoke, monkeypatch: pytest.MonkeyPatch, path: tuple[str, ...]
) -> None:
    text = help_at_80(invoke, monkeypatch, *path)
    tail = text.rsplit("╰", 1)[-1]  # after the last box
    assert "Examples:" in tail
    examples = [line.strip() for line in tail.splitlines() if "fanout" in line]
    assert len(examples) >= 3
    assert 'fanout ask -p "pirate=You answer like a pirate" "Why is the sea salty?"' in examples
