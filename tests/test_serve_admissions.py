"""A burst of runs is accepted before its runs take the CPU (issue 23): a run accepted with a
``202`` starts once the server has stopped accepting such runs for a moment, or after
``admissions.FIRST_S`` at the latest; a run whose client waits for the answer never waits.
The burst's figures (every 202 of 1,000, status polls meanwhile) are ``bench/serve.py``'s."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from fanout.config import load_panel
from fanout.serve import admissions
from fanout.serve.admissions import Admissions
from fanout.serve.runs import RunManager
from tests.conftest import AgentsFile
from tests.fakeserver import FakeOpenAI

pytestmark = pytest.mark.anyio

BODY = {"prompt": "Why?", "agents": ["chemist"]}


async def test_quiet_waits_while_runs_are_being_accepted() -> None:
    gate = Admissions()
    await gate.quiet(most=60)  # nothing being accepted: at once
    waited = anyio.Event()

    async def waiter() -> None:
        await gate.quiet(most=60)
        waited.set()

    async with anyio.create_task_group() as tg, gate.admitting():
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        assert not waited.is_set() and gate.busy == 1
        # the last one accepted: quiet a moment later, and the waiter goes
    assert waited.is_set() and gate.busy == 0


async def test_a_new_admission_restarts_the_quiet_period() -> None:
    gate = Admissions()
    async with gate.admitting():
        pass  # its timer is set: quiet in QUIET_S, unless another run comes
    first = gate._ended
    async with gate.admitting():
        gate._settle(first)  # what the first one's timer does when it fires
        assert gate.busy == 1 and not gate._quiet.is_set()
    gate._settle(first)  # a stale timer, after the second one ended: still not quiet
    assert not gate._quiet.is_set()
    gate._settle(gate._ended)  # the second one's timer
    assert gate._quiet.is_set()


async def test_no_more_than_at_once_runs_are_accepted_at_a_time() -> None:
    gate = Admissions()
    release = anyio.Event()

    async def admit() -> None:
        async with gate.admitting():
            await release.wait()

    async with anyio.create_task_group() as tg:
        for _ in range(admissions.AT_ONCE + 3):
            tg.start_soon(admit)
        await anyio.wait_all_tasks_blocked()
        assert gate.busy == admissions.AT_ONCE  # the other three wait for one to end
        release.set()
    assert gate.busy == 0


async def test_a_steady_stream_of_admissions_holds_a_run_back_for_a_bounded_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(admissions, "FIRST_S", 0.0)
    gate = Admissions()
    async with gate.admitting():
        await gate.quiet()  # returns although runs are still being accepted


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FANOUT_HOME", str(tmp_path))
    return tmp_path


async def test_an_accepted_run_starts_after_the_burst_and_a_waited_one_at_once(
    server: FakeOpenAI, agents_file: AgentsFile, home: Path
) -> None:
    manager = RunManager(load_panel(agents_file()))
    async with manager.running():
        async with manager.admissions.admitting():  # another run of the burst is being accepted
            accepted = await manager.start(BODY)
            await anyio.wait_all_tasks_blocked()
            assert not accepted.started and server.count() == 0  # pending: the burst first
            waited = await manager.start(BODY, durable=False)  # /v1: its client waits, it goes
            await waited.answered.wait()
            held = await manager.start(BODY, waited=True)  # ?wait=: recorded, and it goes
            await held.answered.wait()
            assert server.count() == 2 and not accepted.started
        await accepted.done.wait()
        assert server.count() == 3
        assert accepted.report is not None and accepted.report.stages[0].calls[0].status == "ok"


async def test_a_refused_request_is_not_an_accepted_run() -> None:
    gate = Admissions()
    with pytest.raises(ValueError):
        async with gate.admitting():
            raise ValueError("429: too many runs in flight")  # refused: nothing accepted
    assert gate._ended == 0 and gate.busy == 0  # it restarts no wait
    await gate.quiet(most=60)  # and the gate opens (at once: nothing was ever accepted)
