"""The garbage collector while the command starts.

Start-up allocates what lives as long as the command: modules, classes, the openai client's
hundreds of models, the panel. The collector's passes over it find nothing, and cost about
50 ms of the time from launch to the first request (223 young, 21 middle and one full
collection before it). So the ``fanout`` command holds the collector (``hold``) until its run
has started (``settle``), or ``SETTLE_AFTER_S`` at the latest, whatever the command: a server,
a batch or a long chat never runs without it. ``settle`` moves everything start-up made into
the permanent generation, so that the run's own collections do not walk it again either.

Standard library only: ``fanout.launch`` calls ``hold`` before anything else loads. Code that
uses fanout as a library never holds the collector, and its ``settle`` does nothing.
"""

from __future__ import annotations

import gc
import threading

SETTLE_AFTER_S = 2.0

_lock = threading.Lock()
_held = False


def hold() -> threading.Timer | None:
    """Stop the collector until ``settle``, or ``SETTLE_AFTER_S`` (the timer returned settles
    then; None if the collector was not running)."""
    global _held
    with _lock:
        if _held or not gc.isenabled():
            return None
        gc.disable()
        _held = True
    timer = threading.Timer(SETTLE_AFTER_S, settle)
    timer.daemon = True
    timer.start()
    return timer


def settle() -> None:
    """Start-up is over: what it made goes to the permanent generation and the collector runs
    again. Does nothing unless ``hold`` stopped it."""
    global _held
    with _lock:
        if not _held:
            return
        _held = False
        gc.freeze()
        gc.enable()


def held() -> bool:
    """Whether the collector is held (for the tests)."""
    return _held
