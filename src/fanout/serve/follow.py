"""A run followed through the history: one this worker is not running (another worker is,
or nobody any more). Its event stream is what ``replay_lines`` makes of the stored document,
read again every ``FOLLOW_S``: each line once, in the order it appeared (a call's end when it
is recorded), ``run_finished`` when the run is. No deltas: those only the running worker has.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio

from fanout.serve.events import EventLog, JsonObject
from fanout.serve.runs import NotFound, is_finished, replay_lines

FOLLOW_S = 0.25
# How a call ends while its run goes on ("cancelled" is how a call not yet ended is recorded).
ENDED = ("ok", "error", "skipped")


class StoredRun:
    """A ``Followable`` over the stored document of a run."""

    def __init__(self, document: JsonObject, load: Callable[[], Awaitable[JsonObject]]) -> None:
        self.lines = EventLog()
        self.over = False
        self._load = load
        self._told: set[tuple[str, str]] = set()
        self._take(document)

    async def changed(self, seconds: float) -> None:
        await anyio.sleep(min(seconds, FOLLOW_S))
        try:
            document = await self._load()
        except NotFound:  # purged meanwhile
            self.over = True
            return
        self._take(document)

    def _take(self, document: JsonObject) -> None:
        finished = is_finished(document)
        for line in replay_lines(document):
            key = _key(line)
            if key in self._told:
                continue
            result = line.get("result")
            if not finished and isinstance(result, dict) and result.get("status") not in ENDED:
                continue  # a call still pending: its end comes later
            self._told.add(key)
            self.lines.append(line)
        self.over = finished


def _key(line: JsonObject) -> tuple[str, str]:
    kind = str(line.get("type"))
    if kind == "stage_started":
        return kind, str(line.get("stage"))
    if kind.endswith("_finished") and kind != "run_finished":
        return "call", str(line.get("call_id"))
    return kind, ""
