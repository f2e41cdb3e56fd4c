"""Ctrl-C and SIGTERM, from the first moment a command runs to its last.

The first signal is *noted*, never raised in the middle of whatever runs (an import half done
leaves a module broken: ``partially initialized module 'yaml'``): the command looks at
``checkpoint()`` before the run exists, the run's loop (``interruptibly``) cancels its work
when it hears it, and the process ends with 130. Only where the command waits on something that
may never come (a prompt on stdin, the local model starting) does the signal raise
``KeyboardInterrupt`` at once (``raising()``). A second signal, whenever it comes, ends the
process at once with 130, the terminal given back first (``on_hard_exit``).

Loaded before anything else by the command line (``fanout.cli.main``), so it imports nothing
beyond ``signal`` and ``os``.
"""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager, suppress

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator
    from signal import _HANDLER
    from types import FrameType

    import anyio

EXIT_INTERRUPTED = 130
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _State:
    pending = False  # a first signal has come
    raising = 0  # inside raising(): a signal raises KeyboardInterrupt
    previous: dict[int, _HANDLER] | None = None  # the handlers before install(); None: not ours
    listeners: list[Callable[[], None]] = []  # noqa: RUF012 - one process, one list
    hard_exit: list[Callable[[], None]] = []  # noqa: RUF012


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if _State.pending:
        exit_at_once(signum, frame)
    _State.pending = True
    for listener in list(_State.listeners):
        listener()
    if _State.raising:
        raise KeyboardInterrupt


def install() -> bool:
    """SIGINT and SIGTERM are fanout's from now on (the main thread only: elsewhere a no-op).
    Returns whether this call installed them (not already installed, and on the main thread)."""
    if _State.previous is not None:
        return False
    previous: dict[int, _HANDLER] = {}
    try:
        for number in SIGNALS:
            previous[number] = signal.signal(number, _on_signal)
    except ValueError:  # not the main thread: the caller's signals are not ours to take
        return False
    _State.previous = previous
    _State.pending = False
    return True


def uninstall() -> None:
    """The handlers that were there before ``install()`` back, and no signal pending."""
    previous, _State.previous = _State.previous, None
    for number, handler in (previous or {}).items():
        signal.signal(number, handler)
    _State.pending = False


@contextmanager
def handled() -> Iterator[None]:
    """For the length of a command (or of a run driven from Python): fanout's handlers, if
    they are not in place already; the caller's come back after it, unless a signal came (then
    a second one still ends the process at once, however late)."""
    ours = install()
    try:
        yield
    finally:
        if ours and not _State.pending:
            uninstall()


def hand_over() -> None:
    """From here on, signals are someone else's (uvicorn's, which restores ours after it): the
    default handlers back, and a signal already noted raised now as ``KeyboardInterrupt``."""
    pending = _State.pending
    uninstall()
    if pending:
        raise KeyboardInterrupt


def requested() -> bool:
    """Whether a signal has come."""
    return _State.pending


def checkpoint() -> None:
    """A safe point before the run exists: a signal that came ends the command here."""
    if _State.pending:
        raise KeyboardInterrupt


@contextmanager
def raising() -> Iterator[None]:
    """A wait that may never end (a prompt on stdin, the local model loading): a signal,
    already come or coming, raises ``KeyboardInterrupt`` in it at once."""
    checkpoint()
    _State.raising += 1
    try:
        yield
    finally:
        _State.raising -= 1


@contextmanager
def listening(listener: Callable[[], None]) -> Iterator[None]:
    """``listener`` (quick, safe in a signal handler) is called when the first signal comes."""
    _State.listeners.append(listener)
    try:
        yield
    finally:
        _State.listeners.remove(listener)


def on_hard_exit(restore: Callable[[], None]) -> None:
    """Have ``restore`` (quick, safe twice, safe in a signal handler) called before a second
    signal ends the process."""
    _State.hard_exit.append(restore)


def forget_hard_exit(restore: Callable[[], None]) -> None:
    """``restore`` has been done: a second signal need not call it."""
    if restore in _State.hard_exit:
        _State.hard_exit.remove(restore)


def exit_at_once(signum: int, frame: FrameType | None) -> None:
    """The second SIGINT/SIGTERM: the user insists. Give the terminal back and end now with
    130: no clean-up, no traceback, no "Exception ignored" from a thread being joined."""
    for restore in reversed(_State.hard_exit):
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
    ``cleanup`` (shielded). Returns whether it was cut short. A signal that came before
    (while the command loaded) cuts it short at once."""
    import asyncio  # the loop anyio.run runs on: signals are handed to it thread-safely

    import anyio

    from fanout.engine import unwrap_fanout_error

    loop = asyncio.get_running_loop()
    work = anyio.CancelScope()
    finished = False

    def cancel_soon() -> None:
        loop.call_soon_threadsafe(work.cancel)

    try:
        with handled(), listening(cancel_soon):
            if requested():
                work.cancel()
            async with anyio.create_task_group() as tg:

                async def watch_stop(flag: anyio.Event) -> None:
                    await flag.wait()
                    work.cancel()

                if stop is not None:
                    tg.start_soon(watch_stop, stop)
                try:
                    with work:
                        await body()
                        finished = True
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
    return not finished
