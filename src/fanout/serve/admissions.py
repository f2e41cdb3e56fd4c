"""Accepting runs before running them.

A burst of ``POST /api/runs`` is a thousand clients each waiting for a ``202``, while every run
already accepted wants the same CPU for its calls. Taken in turn, the last ``202`` of a burst
of 1,000 (three personas each) came after 1.6-3.5 s, and status polls waited 0.2-0.6 s (p99).
So a run accepted with a ``202`` (nobody is waiting on its connection) starts once the server
has stopped accepting such runs for ``QUIET_S``, or after ``FIRST_S`` at the latest: a steady
stream of them delays each run that long at most, never for ever. A run whose client waits
for the answer (``/v1``, ``?wait=``) neither waits nor holds others back. And at most
``AT_ONCE`` runs are being accepted at a time: with all of a burst's in progress at once, a
status poll waited behind each turn's dozens of them (p50 50-160 ms); with 16, p99 16-18 ms.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import anyio
import anyio.lowlevel

QUIET_S = 0.02  # no run accepted for this long: the burst is over
AT_ONCE = 16  # runs being accepted at a time: a status poll waits behind no more than these
FIRST_S = 2.0  # the longest an accepted run waits for a burst to end


class Admissions:
    """How many runs are being accepted, and whether the server has stopped accepting."""

    def __init__(self) -> None:
        self._slots = anyio.Semaphore(AT_ONCE)
        self._one_at_a_time = anyio.Lock()
        self._busy = 0
        self._quiet = anyio.Event()
        self._quiet.set()
        self._ended = 0  # runs accepted so far: a later one restarts the quiet period
        self._last = -math.inf  # when the last one was accepted (the loop's clock)

    @property
    def busy(self) -> int:
        return self._busy

    @asynccontextmanager
    async def admitting(self) -> AsyncIterator[None]:
        """Around accepting one run (checked, recorded, its ``202`` on its way), ``AT_ONCE``
        at a time."""
        async with self._slots:
            with self._counted():
                yield

    @contextmanager
    def _counted(self) -> Iterator[None]:
        self._busy += 1
        if self._quiet.is_set():
            self._quiet = anyio.Event()
        accepted = False
        try:
            yield
            accepted = True
        finally:
            self._busy -= 1
            loop = asyncio.get_running_loop()
            if accepted:
                self._ended += 1
                self._last = loop.time()
            if self._busy == 0:
                # A refused request (400, 429) accepted nothing: it does not restart the wait.
                wait = max(0.0, self._last + QUIET_S - loop.time())
                loop.call_later(wait, self._settle, self._ended)

    def _settle(self, ended: int) -> None:
        if self._busy == 0 and self._ended == ended:
            self._quiet.set()

    async def quiet(self, most: float | None = None) -> None:
        """Return once no run has been accepted for ``QUIET_S``, or after ``most`` seconds
        (``FIRST_S`` unless given); one waiter a turn of the event loop, so that the runs of
        a burst do not all start in one turn (64 runs' first requests built in one go held a
        status poll up for ~0.25 s)."""
        with anyio.move_on_after(FIRST_S if most is None else most):
            await self._quiet.wait()
        async with self._one_at_a_time:
            await anyio.lowlevel.checkpoint()
