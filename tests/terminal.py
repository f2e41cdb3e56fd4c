"""The real ``fanout`` on a pty, its output played on an emulated terminal (pyte) that keeps a
scrollback and has an alternate screen, as xterm, tmux and most terminals do. What a user
would see once the command is over is ``Terminal.main_text()``: the scrollback and the main
screen, whatever was drawn on the alternate screen having gone with it."""

from __future__ import annotations

import re
import signal
import sys
import termios
from collections.abc import Iterator
from copy import deepcopy
from pathlib import Path
from typing import Any

import pexpect
import pyte

ALT_SCREEN = 1049 << 5  # pyte shifts private modes by 5 bits
SYNC_END = "\x1b[?2026l"  # the end of one of the board's frames
CLEAR = "\x1b[H\x1b[2J"  # the board drawn again whole (first, and after a resize)
Size = tuple[int, int]  # rows, columns


class XtermScreen(pyte.HistoryScreen):
    """pyte with what it lacks of a real terminal: the alternate screen (``ESC[?1049h``) and
    lines pushed into the scrollback when the window gets shorter."""

    def __init__(self, columns: int, lines: int) -> None:
        super().__init__(columns, lines, history=5000)
        self.saved: tuple[Any, Any] | None = None
        self.alt_entered = 0

    @property
    def on_alt(self) -> bool:
        return self.saved is not None

    def set_mode(self, *modes: int, **kwargs: Any) -> None:
        if kwargs.get("private") and 1049 in modes:
            self.alt_entered += 1
            if self.saved is None:
                self.saved = (deepcopy(self.buffer), deepcopy(self.cursor))
                self.erase_in_display(2)
            modes = tuple(m for m in modes if m != 1049)
        super().set_mode(*modes, **kwargs)

    def reset_mode(self, *modes: int, **kwargs: Any) -> None:
        if kwargs.get("private") and 1049 in modes:
            if self.saved is not None:
                buffer, cursor = self.saved
                self.saved = None
                self.buffer.clear()
                self.buffer.update(buffer)
                self.cursor = cursor
                self.dirty.update(range(self.lines))
            modes = tuple(m for m in modes if m != 1049)
        super().reset_mode(*modes, **kwargs)

    def index(self) -> None:
        if self.on_alt:  # the alternate screen has no scrollback
            pyte.Screen.index(self)
        else:
            super().index()

    def resize(self, lines: int | None = None, columns: int | None = None) -> None:
        lines = lines or self.lines
        if lines < self.lines and not self.on_alt:
            # xterm keeps the rows that no longer fit above the cursor in its scrollback.
            gone = min(self.lines - lines, self.cursor.y)
            for y in range(gone):
                self.history.top.append(deepcopy(self.buffer[y]))
        super().resize(lines, columns)


class _Feed:
    def __init__(self, stream: pyte.Stream, raw: list[str], log: list[str | Size]) -> None:
        self.stream, self.raw, self.log = stream, raw, log

    def write(self, data: str) -> None:
        self.raw.append(data)
        self.log.append(data)
        self.stream.feed(data)

    def flush(self) -> None:
        pass


class Terminal:
    """``fanout *args`` on a ``rows`` x ``columns`` pty."""

    def __init__(self, args: list[str | Path], rows: int, columns: int, **kwargs: Any) -> None:
        self.screen = XtermScreen(columns, rows)
        self.size = (rows, columns)
        self.raw: list[str] = []
        self.log: list[str | Size] = []  # the output, and each resize where it happened
        self.child = pexpect.spawn(
            sys.executable,
            ["-m", "fanout", *map(str, args)],
            dimensions=(rows, columns),
            encoding="utf-8",
            timeout=30,
            **kwargs,
        )
        self.child.logfile_read = _Feed(pyte.Stream(self.screen), self.raw, self.log)

    def expect(self, pattern: str | list[str]) -> int:
        return int(self.child.expect(pattern))

    def frames_from_now(self, count: int) -> None:
        """Wait for ``count`` frames of the board drawn from now on."""
        mark = len(self.output)
        while self.output[mark:].count(SYNC_END) < count:
            self.expect(re.escape(SYNC_END))

    def frames_drawn(self, count: int) -> None:
        """Wait until the board has drawn at least ``count`` frames since it started."""
        while self.output.count(SYNC_END) < count:
            self.expect(re.escape(SYNC_END))

    def send(self, text: str) -> None:
        self.child.send(text)

    def interrupt(self) -> None:
        self.child.kill(signal.SIGINT)

    def resize(self, rows: int, columns: int) -> None:
        self.screen.resize(rows, columns)
        self.log.append((rows, columns))
        self.child.setwinsize(rows, columns)

    def frames(self) -> Iterator[tuple[int, XtermScreen]]:
        """Every frame of the board, played again from the start on a fresh terminal of the
        first size: the screen as it was at the end of each frame (``ESC[?2026l``), while on
        the alternate screen. After a resize, the frames written before the board noticed it
        (drawn for the old size) are passed over, up to the first drawn again whole."""
        screen = XtermScreen(self.size[1], self.size[0])
        stream = pyte.Stream(screen)
        pending, index, stale = "", 0, False
        for item in [*self.log, ""]:
            if isinstance(item, tuple):
                screen.resize(*item)
                stale = True
                continue
            pending += item
            while SYNC_END in pending:
                frame, pending = pending.split(SYNC_END, 1)
                stream.feed(frame + SYNC_END)
                stale = stale and CLEAR not in frame
                if screen.on_alt and not stale:
                    yield index, screen
                index += 1
        stream.feed(pending)

    def finish(self) -> int | None:
        """Wait for the end; the exit code (None if a signal killed it). ``echo_after``:
        whether the terminal echoed keys once the command was over."""
        self.child.expect(pexpect.EOF)
        self.echo_after = bool(termios.tcgetattr(self.child.child_fd)[3] & termios.ECHO)
        self.child.close()
        return self.child.exitstatus  # type: ignore[no-any-return]

    def close(self) -> None:
        if self.child.isalive():
            self.child.close(force=True)

    @property
    def output(self) -> str:
        return "".join(self.raw)

    def screen_text(self) -> str:
        """The screen as shown now (the alternate one while the board is up)."""
        return "\n".join(line.rstrip() for line in self.screen.display)

    def main_text(self) -> str:
        """The scrollback and the main screen: what stays once the command is over."""
        columns = self.screen.columns
        history = [
            "".join(line[x].data for x in range(columns)).rstrip()
            for line in self.screen.history.top
        ]
        return "\n".join([*history, *(line.rstrip() for line in self.screen.display)]).strip()
