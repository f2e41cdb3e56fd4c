"""What the server keeps of a run's events: its ``--jsonl`` lines, each serialized once for
every reader (SSE clients, a streaming ``/v1`` answer), counted in bytes.

A call's deltas are the bulk of it: a line per piece of text costs ~200 bytes of envelope
around a few characters. So deltas nobody has read yet are merged into their call's last
unread delta line (its text grows; it keeps its id and first timestamp). A line is frozen the
moment it is read, and a later piece starts a new line, so every reader still sees each piece
exactly once, in order, and ids never change under a reconnecting reader. With no reader at
all, a call's answer is one delta line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Protocol

from fanout.export import json_line

JsonObject = dict[str, object]  # a line, as JSON has it

_BLOCK = 256  # pieces of text joined into one string at a time (memory stays linear)


class Line:
    """One event line: its ``kind`` (``type``), the call it is about, and its JSON."""

    __slots__ = ("_base", "_blocks", "_json", "_pieces", "call_id", "kind")

    def __init__(self, line: JsonObject) -> None:
        call_id = line.get("call_id")
        self.kind = str(line.get("type"))
        self.call_id = None if call_id is None else str(call_id)
        self._json: str | None = None
        self._base: JsonObject | None = None
        self._blocks: list[str] = []
        self._pieces: list[str] = []
        if self.kind == "delta":
            self._base = line
            self._pieces.append(str(line.get("text", "")))
        else:
            self._json = json_line(line)

    @property
    def open(self) -> bool:
        """A delta nobody has read: more text of its call may still join it."""
        return self._json is None

    def extend(self, text: str) -> None:
        self._pieces.append(text)
        if len(self._pieces) >= _BLOCK:
            self._blocks.append("".join(self._pieces))
            self._pieces.clear()

    @property
    def json(self) -> str:
        """The line as JSON; reading it freezes it."""
        if self._json is None:
            assert self._base is not None
            text = "".join([*self._blocks, *self._pieces])
            self._json = json_line({**self._base, "text": text})
            self._base, self._blocks, self._pieces = None, [], []
        return self._json

    def value(self) -> JsonObject:
        value: JsonObject = json.loads(self.json)
        return value


class EventLog:
    """A run's lines so far, in order (index = SSE id), and their size in bytes."""

    def __init__(self) -> None:
        self._lines: list[Line] = []
        self._open: dict[str, Line] = {}  # call id -> its unread delta line
        self.size = 0

    def __len__(self) -> int:
        return len(self._lines)

    def __getitem__(self, index: int) -> Line:
        return self._lines[index]

    def __iter__(self) -> Iterator[Line]:
        return iter(self._lines)

    def extend_delta(self, call_id: str, text: str) -> bool:
        """Add a delta's text to its call's unread delta line; False if there is none."""
        line = self._open.get(call_id)
        if line is None or not line.open:
            return False
        line.extend(text)
        self.size += len(text)
        return True

    def append(self, line: JsonObject) -> Line:
        kept = Line(line)
        self._lines.append(kept)
        if kept.call_id is not None:
            if kept.kind == "delta":
                self._open[kept.call_id] = kept
            else:  # a retry, the call's end...: its next text starts a line of its own
                self._open.pop(kept.call_id, None)
        self.size += 200 if kept.open else len(kept.json)
        return kept


class Followable(Protocol):
    """What an event stream reads: a run's lines so far, whether it is over, and a way to
    wait for more."""

    @property
    def lines(self) -> EventLog: ...

    @property
    def over(self) -> bool: ...

    async def changed(self, seconds: float) -> None: ...
