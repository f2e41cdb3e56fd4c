"""files.write_whole: a user's file is replaced whole, or written in place where a rename would
not do what the user meant (a link, a device, no room for a temporary beside it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fanout.files import write_whole
from tests.conftest import AgentsFile, Invoke
from tests.fakeserver import FakeOpenAI

SRC = Path(__file__).resolve().parents[1] / "src"


def test_a_symlink_stays_and_the_file_it_points_at_is_replaced(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    target = shared / "result.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    write_whole(link, "new")
    assert link.is_symlink() and target.read_text() == "new"
    assert sorted(p.name for p in shared.iterdir()) == ["result.json"]


def test_a_hard_linked_file_is_written_in_place(tmp_path: Path) -> None:
    first = tmp_path / "a.json"
    first.write_text("old")
    second = tmp_path / "b.json"
    os.link(first, second)
    write_whole(first, "new")
    assert second.read_text() == "new"  # still the same file


def test_a_name_too_long_for_a_temporary_beside_it_is_written_in_place(tmp_path: Path) -> None:
    directory = tmp_path / "out"
    directory.mkdir()
    target = directory / ("x" * 250 + ".json")
    write_whole(target, "doc")
    assert target.read_text() == "doc"
    assert [p.name for p in directory.iterdir()] == [target.name]


def test_permissions_are_kept_and_exclusive_refuses_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "agents.yaml"
    target.write_text("mine")
    target.chmod(0o640)
    write_whole(target, "new")
    assert (target.stat().st_mode & 0o777, target.read_text()) == (0o640, "new")
    with pytest.raises(FileExistsError):
        write_whole(target, "again", exclusive=True)
    assert target.read_text() == "new"


def test_ask_o_dev_stdout_goes_to_stdout_even_when_it_is_a_file(
    server: FakeOpenAI, agents_file: AgentsFile, tmp_path: Path
) -> None:
    # /dev/stdout is a link to the process's own stdout: replacing it would write elsewhere.
    captured = tmp_path / "captured.txt"
    with captured.open("w") as stdout:
        done = subprocess.run(
            [sys.executable, "-m", "fanout", "ask", "-c", str(agents_file("a")), "--no-log",
             "-o", "/dev/stdout", "--format", "text", "Why?"],
            stdout=stdout, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(SRC)}, timeout=60,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = captured.read_text()
    start = text.index("{")
    document, _ = json.JSONDecoder().raw_decode(text[start:])
    assert document["output"] == {"a": "m-a says: Why?"}


def test_ask_o_through_a_symlink_keeps_the_link(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, tmp_path: Path
) -> None:
    target = tmp_path / "kept.json"
    target.write_text("{}")
    link = Path.cwd() / "run.json"
    link.symlink_to(target)
    result = invoke("ask", "-c", agents_file("a"), "--no-log", "-o", link, "Why?")
    assert result.exit_code == 0, result.output
    assert link.is_symlink()
    assert json.loads(target.read_text())["output"] == {"a": "m-a says: Why?"}
