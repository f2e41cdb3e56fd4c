"""What the ``fanout`` command does before its first request (issue 22's launch to first
request): it loads the module of the command that runs and no other, and the garbage collector
waits until the run has started (``fanout.collector``). The time itself is measured by
``bench/startup.py``, not asserted here."""

from __future__ import annotations

import gc
import importlib
import os
import pkgutil
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer

import fanout
import fanout.cli
from fanout import collector
from fanout.cli import app
from fanout.cli.app import COMMANDS
from fanout.jobs import quiet_collector
from tests.conftest import AgentsFile, Invoke
from tests.fakeserver import FakeOpenAI

COMMAND_MODULES = {spec.split(":")[0] for spec in COMMANDS.values()}


# The real command (fanout.launch.main, as the console script runs it) in a fresh
# interpreter, which writes the modules it has loaded to a file as it exits.
WATCHED = """
import atexit, sys
def written():
    with open(path, "w") as out:
        out.write("\\n".join(sorted(sys.modules)))
atexit.register(written)
path, sys.argv = sys.argv[1], ["fanout", *sys.argv[2:]]
from fanout.launch import main
main()
"""


def imported_by(tmp_path: Path, *args: str) -> set[str]:
    """The modules the real ``fanout`` command loads to run ``args``."""
    modules = tmp_path / "modules.txt"
    subprocess.run(
        [sys.executable, "-c", WATCHED, str(modules), *args],
        capture_output=True,
        env={**os.environ, "FANOUT_HOME": str(tmp_path)},
        check=False,
    )
    return set(modules.read_text(encoding="utf-8").split())


def test_ask_loads_its_own_command_module_and_no_other(
    server: FakeOpenAI, agents_file: AgentsFile, tmp_path: Path
) -> None:
    loaded = imported_by(tmp_path, "ask", "-c", str(agents_file()), "--json", "Why?")
    assert server.count() == 3  # it ran
    assert "fanout.cli.ask" in loaded
    assert COMMAND_MODULES & loaded == {"fanout.cli.ask"}


def test_a_group_loads_its_module_only(tmp_path: Path) -> None:
    loaded = imported_by(tmp_path, "runs", "--help")
    assert COMMAND_MODULES & loaded == {"fanout.cli.runs"}


def test_the_table_names_every_command_each_module_declares() -> None:
    for module in pkgutil.iter_modules(fanout.cli.__path__):
        importlib.import_module(f"fanout.cli.{module.name}")
    declared = {
        info.name or typer.main.get_command_name(getattr(info.callback, "__name__", ""))
        for info in app.registered_commands
    }
    commands = {name for name, spec in COMMANDS.items() if ":" not in spec}
    assert declared == commands
    for name, spec in COMMANDS.items():
        module, _, group = spec.partition(":")
        if group:
            assert isinstance(getattr(importlib.import_module(module), group), typer.Typer), name


def test_help_lists_every_command_in_the_tables_order(invoke: Invoke) -> None:
    result = invoke("--help")
    assert result.exit_code == 0, result.output
    listed = re.findall(r"^│ (\w+) ", result.stdout, re.MULTILINE)
    assert listed == list(COMMANDS)


@pytest.fixture
def held() -> Iterator[None]:
    """The collector held as ``fanout.launch`` holds it; the process's collector as it was
    after the test."""
    assert gc.isenabled()
    collector.hold()
    assert collector.held() and not gc.isenabled()
    try:
        yield
    finally:
        collector.settle()
        gc.unfreeze()
        gc.enable()


def test_a_run_lets_the_collector_go_once_it_has_started(
    held: None, server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    result = invoke("ask", "-c", agents_file(), "--json", "Why?")
    assert result.exit_code == 0, result.output
    assert not collector.held()
    assert gc.isenabled()
    assert gc.get_freeze_count() > 0  # what start-up made is in the permanent generation


def test_a_batch_or_an_eval_lets_the_collector_go(held: None) -> None:
    with quiet_collector():
        assert gc.isenabled() and not collector.held()


def test_the_collector_runs_again_after_a_while_whatever_the_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(collector, "SETTLE_AFTER_S", 0.0)
    timer = collector.hold()
    assert timer is not None
    try:
        timer.join()  # a server or a chat that never settles gets its collector back
        assert gc.isenabled() and not collector.held()
    finally:
        gc.unfreeze()
        gc.enable()


def test_settle_leaves_a_collector_it_did_not_hold_alone() -> None:
    frozen = gc.get_freeze_count()
    gc.disable()  # the program's own choice, not ours
    try:
        assert collector.hold() is None
        collector.settle()
        assert not gc.isenabled()
        assert gc.get_freeze_count() == frozen
    finally:
        gc.enable()


def test_the_command_holds_the_collector_from_launch() -> None:
    code = (
        "import gc, sys\n"
        "sys.argv = ['fanout', '--version']\n"
        "from fanout.launch import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('enabled' if gc.isenabled() else 'held')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines() == [f"fanout {fanout.__version__}", "held"]


def test_a_process_forked_while_the_collector_is_held_lets_it_go() -> None:
    code = (
        "import gc, os, sys\n"
        "from fanout import collector\n"
        "collector.hold()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os._exit(0 if gc.isenabled() and not collector.held() else 1)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "print(os.waitstatus_to_exitcode(status), gc.isenabled())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["0", "False"]  # the child runs it; the parent still holds
