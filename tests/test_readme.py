"""The README a newcomer starts from: a one-screen tour first, every command in it one that
fanout takes as written, and the set-up commands the ones CI runs."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.conftest import Invoke

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def tour() -> list[str]:
    """The tour's command lines (without their comments)."""
    section = README.split("## A tour", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    return [line.split("  #", 1)[0].strip() for line in section.strip().splitlines()]


def test_the_tour_comes_first_and_fits_one_screen() -> None:
    lines = README.splitlines()
    assert lines.index("## A tour") < 10  # after the title and one sentence
    commands = [c for c in tour() if c.startswith("fanout ")]
    assert len(commands) >= 10
    end = next(i for i, line in enumerate(lines) if line.startswith("Everything below"))
    assert end < 40  # the tour and what it needs, in one screen
    assert all(len(line) <= 100 for line in lines[: end + 1])


@pytest.mark.parametrize("command", [c for c in tour() if c.startswith("fanout ")])
def test_every_tour_command_is_one_fanout_takes(invoke: Invoke, command: str) -> None:
    # Its words checked as the command line would be, then its help shown, nothing run.
    words = shlex.split(command)[1:]
    result = invoke(*words, "--help")
    assert result.exit_code == 0, (command, result.output)
    assert "Usage: fanout" in result.stdout


def test_the_set_up_commands_are_the_ones_ci_runs() -> None:
    setup = README.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```sh\n(.+?)\n```", setup)
    assert commands[0].startswith("python3 -m venv .venv && .venv/bin/pip install '.[local]'")
    assert commands[1] in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert tour()[0].split(" && .")[0] in commands[0]
