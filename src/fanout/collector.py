"""The garbage collector while the command starts.

Start-up allocates what lives as long as the command: modules, classes, the openai client's
hundreds of models, the panel. The collector's passes over it find nothing, and cost about
50 ms of the time from launch to the first request (223 young, 21 middle and one full
collection before it). So the ``fanout`` command holds the collector (``hold``) until its run
has started (``settle``), or ``SETTLE_AFTER_S`` at the latest, whatever the command: a server,
a batch or a long chat never runs without it, nor a process forked meanwhile (a server's
worker lets it go as it starts). ``settle`` moves everything start-up made into
the permanent generation, so that the run's own collections do not walk it again either
(start-up's own garbage cycles too, ~600 KiB for ``fanout ask``: collecting them first would
cost the walk this saves).

Standard library only: ``fanout.launch`` calls ``hold`` before anything else loads. Code that
uses fanout as a library never holds the collector, and its ``settle`` does nothing.
"""

from __future__ import annotations

import gc
import os
import threading

SETTLE_AFTER_S = 2.0
# A server's or a batch's calls leave a few short-lived containers each; their youngest
# generation is collected every GEN0 of them instead of every 700 (CPython's default). In
# ``fanout serve`` under a burst, the default meant a full collection every ~1.3 s, 100-290 ms
# each over the runs it keeps, stalling every request meanwhile.
GEN0 = 50_000

_lock = threading.Lock()
_held = False
_timer: threading.Timer | None = None


def hold() -> threading.Timer | None:
    """Stop the collector until ``settle``, or ``SETTLE_AFTER_S`` (the timer returned settles
    then; None if the collector was not running)."""
    global _held, _timer
    with _lock:
        if _held or not gc.isenabled():
            return None
        gc.disable()
        _held = True
        _timer = threading.Timer(SETTLE_AFTER_S, settle)  # (a forked child has none: below)
        _timer.daemon = True
        _timer.start()
        return _timer


def settle() -> None:
    """Start-up is over: what it made goes to the permanent generation and the collector runs
    again. Does nothing unless ``hold`` stopped it."""
    global _held, _timer
    with _lock:
        if not _held:
            return
        _held = False
        gc.freeze()
        gc.enable()
        timer, _timer = _timer, None
    if timer is not None and timer is not threading.current_thread():
        timer.cancel()  # no thread left behind (a server forks its workers next)
        timer.join()


def collect_young_every(allocations: int) -> None:
    """The youngest generation collected every ``allocations`` (net) instead of every 700: for
    a process that keeps much and makes many short-lived objects (a server, a batch)."""
    gc.set_threshold(allocations, *gc.get_threshold()[1:])


def _in_forked_child() -> None:
    """A process forked while the collector is held (``serve --workers``) has no timer thread
    to let it go, and maybe a lock taken by a thread that is not there: it starts afresh."""
    global _lock, _timer
    _lock = threading.Lock()
    _timer = None  # the parent's thread: not in this process
    settle()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_in_forked_child)


def held() -> bool:
    """Whether the collector is held (for the tests)."""
    return _held
