"""A flat pool of calls: the fast path of ``fanout batch`` (a plain panel, every prompt x
persona an independent call) and the phases of ``fanout eval``.

A fixed number of workers (the engine's concurrency) each take the next job from one shared
iterator, make its call through ``Engine.call`` and take the next: a job's call, result and
observer exist only while it runs. Nothing waits in line holding state: a wide panel (1,000
prompts x 100 personas) has no more in memory than a narrow one, and no task, cancel scope or
limiter waiter is made for a call that cannot run yet.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import anyio

from fanout.collector import GEN0, settle
from fanout.engine import Engine, RunTrace
from fanout.event import Observer
from fanout.models import Call, CallResult

J = TypeVar("J")


async def run_pool(
    engine: Engine,
    jobs: Iterator[J],
    start: Callable[[J], tuple[Call, Observer]],
    finish: Callable[[J, CallResult], None],
    *,
    trace: RunTrace | None = None,
) -> None:
    """Make every job's call, at most ``engine.settings.concurrency`` at once. ``start``
    builds a job's call and the observer that hears it; ``finish`` gets its result (a call
    cut short by cancellation never reaches it)."""
    trace = trace or RunTrace.fresh()

    async def worker() -> None:
        for job in jobs:  # one iterator shared by every worker: each job is taken once
            call, observer = start(job)
            result = CallResult.of(call)
            await engine.call(call, result, observer, stream=False, trace=trace)
            finish(job, result)

    async with anyio.create_task_group() as tg:
        for _ in range(max(1, engine.settings.concurrency)):
            tg.start_soon(worker)


@contextmanager
def quiet_collector() -> Iterator[None]:
    """For a long run of calls: everything allocated so far (the imported modules, openai's
    and pydantic's classes, the config) moves to the collector's permanent generation, so no
    collection walks it again, and the youngest generation is collected less often. Without
    this, a full collection walks every object of openai and pydantic: at 100 prompts x 20
    personas that was 13 % of the process's busy time (9 % for a bare loop). Undone on the way
    out. (A held collector, ``fanout.collector``, runs again from here.)"""
    settle()
    before = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(max(before[0], GEN0), *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
