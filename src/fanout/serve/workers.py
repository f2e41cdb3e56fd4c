"""``fanout serve --workers N``: N processes answering on one listening socket, forked once it
is bound (as gunicorn's workers are). The parent only supervises: it passes Ctrl-C and SIGTERM
on to every worker once, and starts a worker again if one dies. What one worker is asked about
another's run reaches it through the shared store (``store.SharedState``, the history)."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from types import FrameType

from fanout.errors import ConfigError

MAX_WORKERS = 64
RESTART_PAUSE_S = 1.0  # before a worker that died is started again
_log = logging.getLogger("fanout.serve")


def supervise(count: int, work: Callable[[int], None]) -> None:
    """Run ``work(index)`` in ``count`` forked processes until Ctrl-C or SIGTERM."""
    if not hasattr(os, "fork"):
        raise ConfigError("--workers needs a system with fork (Linux, macOS)")
    children: dict[int, int] = {}  # pid -> worker index
    stopping = 0  # the signal that stops them, once it came

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = signum
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    for index in range(count):
        children[_spawn(index, work)] = index
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        index = children.pop(pid)
        if stopping:
            continue
        code = os.waitstatus_to_exitcode(status)
        how = f"was killed by signal {-code}" if code < 0 else f"exited with {code}"
        sys.stderr.write(f"fanout serve: worker {index} {how}; starting it again\n")
        time.sleep(RESTART_PAUSE_S)
        if not stopping:
            children[_spawn(index, work)] = index


def _spawn(index: int, work: Callable[[int], None]) -> int:
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        # Its own process group: a Ctrl-C at the terminal reaches the parent alone, which
        # passes it on once (twice would make uvicorn stop at once, not gracefully).
        os.setpgid(0, 0)
        _die_with(parent)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        work(index)
        code = 0
    except KeyboardInterrupt:
        code = 0
    except Exception:
        _log.exception("worker %d failed", index)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _die_with(parent: int) -> None:
    """Have the kernel end this worker if the supervisor dies (kill -9 included), on Linux."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before that took hold
        os._exit(1)
