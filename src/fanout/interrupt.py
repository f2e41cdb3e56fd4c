"""Ctrl-C and SIGTERM: the first one cancels the run (its answers so far kept), a second one,
whenever it comes, ends the process at once with 130 (the terminal given back first)."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import anyio

EXIT_INTERRUPTED = 130
SIGNALS = (signal.SIGINT, signal.SIGTERM)

_HARD_EXIT: list[Callable[[], None]] = []


def on_hard_exit(restore: Callable[[], None]) -> None:
    """Have ``restore`` (quick, safe twice, safe in a signal handler) called before a second
    signal ends the process."""
    _HARD_EXIT.append(restore)


def forget_hard_exit(restore: Callable[[], None]) -> None:
    """``restore`` has been done: a second signal need not call it."""
    with suppress(ValueError):
        _HARD_EXIT.remove(restore)


def exit_at_once(signum: int, frame: object) -> None:
    """The second SIGINT/SIGTERM: the user insists. Give the terminal back and end now with
    130: no clean-up, no traceback, no "Exception ignored" from a thread being joined."""
    for restore in reversed(_HARD_EXIT):
        with suppress(Exception):  # nothing may stop this exit
            restore()
    os._exit(EXIT_INTERRUPTED)


async def interruptibly(
    body: Callable[[], Awaitable[None]],
    cleanup: Callable[[], Awaitable[None]] | None = None,
    *,
    stop: anyio.Event | None = None,
) -> bool:
    """Run ``body`` until it ends, or SIGINT/SIGTERM (or ``stop``) cancels it, then
    ``cleanup`` (shielded). Returns whether it was cut short. From the first signal on, a
    second one, whenever it comes (during the clean-up, the final view, the history's last
    write), ends the process at once with 130."""
    import asyncio  # the loop anyio.run runs on: signals are handed to it thread-safely

    import anyio

    from fanout.engine import unwrap_fanout_error

    loop = asyncio.get_running_loop()
    interrupted = False
    work = anyio.CancelScope()

    def on_signal(signum: int, frame: object) -> None:
        nonlocal interrupted
        if interrupted:
            exit_at_once(signum, frame)
        interrupted = True
        # From now until the process ends, the next signal is the last word.
        for number in SIGNALS:
            signal.signal(number, exit_at_once)
        loop.call_soon_threadsafe(work.cancel)

    main_thread = threading.current_thread() is threading.main_thread()
    previous = {n: signal.signal(n, on_signal) for n in SIGNALS} if main_thread else {}
    try:
        async with anyio.create_task_group() as tg:

            async def watch_stop(flag: anyio.Event) -> None:
                nonlocal interrupted
                await flag.wait()
                interrupted = True
                work.cancel()

            if stop is not None:
                tg.start_soon(watch_stop, stop)
            try:
                with work:
                    await body()
            finally:
                if cleanup is not None:
                    with anyio.CancelScope(shield=True):
                        await cleanup()
            tg.cancel_scope.cancel()
    except ExceptionGroup as group:
        # A task group wraps what the work raised; a FanoutError reaches the CLI as itself.
        error = unwrap_fanout_error(group)
        if error is not None:
            raise error from None
        raise
    finally:
        if not interrupted:
            for number, handler in previous.items():
                signal.signal(number, handler)
    return interrupted
