"""The live board: one pane per call, answers streaming in side by side while a run goes on
(stdout is a terminal). Rendering code, so Rich is used here, for the Markdown of the answers.

The board draws itself rather than through ``rich.live``, because it must never break:

* it lives on the terminal's alternate screen, so whatever happens while it is up (keys
  typed, a resize that reflows the lines, Ctrl-C) the final view starts on a clean main
  screen, with nothing of the board above it; the terminal's echo is off meanwhile, and
  everything is restored on every way out (``restore`` is safe from a signal handler);
* a frame is written inside synchronized output (``ESC[?2026h`` … ``l``) and only the lines
  that changed since the last one are written;
* a pane takes only the rows its content needs, up to its share of the screen; panes that do
  not fit are counted on a ``+N more`` line with their states;
* each pane's answer is rendered as Markdown (like the final view) at most a few times a
  second while it streams, and only its tail: what the pane can show;
* everything a server sent (answers, error messages, model names) goes through
  ``render.printable``, so an escape sequence in an answer is shown, never acted on.
"""

from __future__ import annotations

import bisect
import io
import logging
import math
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from types import TracebackType
from typing import Any
from unicodedata import east_asian_width

from rich.cells import cell_len, set_cell_size
from rich.color import ColorSystem
from rich.console import Console
from rich.segment import Segment
from rich.style import Style

from fanout.event import (
    CallDelta,
    CallFallback,
    CallFinished,
    CallRetrying,
    CallSending,
    CallWaiting,
    Event,
    StageStarted,
)
from fanout.launch import give_keys_back, quiet_keys
from fanout.launch import take as take_first_frame
from fanout.models import Agent, Call, CallResult
from fanout.render import printable
from fanout.shapes.panel import PANEL_STAGE

_log = logging.getLogger("fanout")

Clock = Callable[[], float]
Line = list[tuple[int, str]]  # a screen line: pieces (a pane's, the blank after) and their column

MIN_PANE_WIDTH = 38
PANE_ROWS = 3  # a pane's least: its borders and its status line
FRAME_S = 0.125  # 8 frames a second
MARKDOWN_EVERY_S = 0.25  # a streaming answer is rendered again at most this often
_SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
_BORDER = {"ok": "green", "error": "red", "cancelled": "yellow", "skipped": "yellow"}
_COLOR_SYSTEMS = {
    "standard": ColorSystem.STANDARD,
    "256": ColorSystem.EIGHT_BIT,
    "truecolor": ColorSystem.TRUECOLOR,
    "windows": ColorSystem.WINDOWS,
}

# Enter: the alternate screen, cursor hidden, no autowrap (a line one cell too wide is cut,
# never wrapped onto the next). Leave: the reverse.
ENTER = "\x1b[?1049h\x1b[?25l\x1b[?7l\x1b[H\x1b[2J"
LEAVE = "\x1b[?7h\x1b[?25h\x1b[?1049l"
SYNC_BEGIN, SYNC_END = "\x1b[?2026h", "\x1b[?2026l"


@dataclass
class Pane:
    """What one call's pane shows; updated from events, drawn a few times a second."""

    name: str
    model: str
    title: str = ""  # the stage's id, for calls after the first stage
    state: str = "queued"
    answer: GrowingText = field(default_factory=lambda: GrowingText())
    version: int = 0  # counts the changes of the text, for the rendering cache
    generation: int = 0  # counts the times the text was replaced rather than added to
    attempt: int = 0
    max_attempts: int = 0
    retry_reason: str = ""
    retry_until: float | None = None
    wait_until: float | None = None  # when the rate limiter expects to let it go
    started_at: float | None = None  # its first wait or attempt: the pane's clock
    sent_at: float | None = None  # the current attempt
    first_token_at: float | None = None
    finished_at: float | None = None
    chunks: int = 0
    result: CallResult | None = None

    @property
    def text(self) -> str:
        return str(self.answer)

    def set_text(self, text: str) -> None:
        if len(text) != self.answer.length or text != self.text:
            self.answer = GrowingText(text)
            self.version += 1
            self.generation += 1

    def add_text(self, piece: str) -> None:
        """A streamed piece: costs the same however long the answer already is."""
        if piece:
            self.answer.append(piece)
            self.version += 1

    def status_line(self, now: float) -> tuple[str, str]:
        """The pane's state in words, and its style."""
        spin = _SPINNER[int(now * 10) % len(_SPINNER)]
        if self.state == "retrying" and self.retry_until is not None:
            left = max(self.retry_until - now, 0.0)
            return (
                f"↻ {printable(self.retry_reason)}, retry {self.attempt + 1}/"
                f"{self.max_attempts} in {left:.1f} s",
                "yellow",
            )
        result = self.result
        if result is not None:
            tries = f" · {result.attempts} attempts" if result.attempts > 1 else ""
            if result.status == "ok" and result.cached:
                return "✓ cached (nothing sent)", "green"
            if result.status == "ok" and result.truncated:
                return f"✓ done · truncated (max_tokens){tries}", "yellow"
            if result.status == "ok":
                return f"✓ done{tries}", "green"
            if result.error is not None:
                return f"✗ {printable(result.error.message)}{tries}", "red"
            return result.status, "yellow"
        if self.state == "waiting":
            until = ""
            if self.wait_until is not None:
                until = f", {max(self.wait_until - now, 0.0):.1f} s"
            return f"{spin} waiting for the rate limit{until}{self._attempt()}", "yellow"
        if self.state == "sending":
            return f"{spin} asking…{self._attempt()}", "cyan"
        if self.state == "streaming":
            return f"{spin} streaming{self._attempt()}", "cyan"
        return ("· queued", "dim") if self.state == "queued" else (self.state, "")

    def _attempt(self) -> str:
        if self.attempt <= 1:
            return ""
        of = f"/{self.max_attempts}" if self.max_attempts else ""
        return f" · attempt {self.attempt}{of}"

    def stats(self, now: float, width: int) -> str:
        """Time to first token, tokens/s, tokens and time since the call began (its first wait
        or attempt): the least useful go first when the pane is too narrow for all four."""
        ttft = rate = count = elapsed = ""
        if self.sent_at is not None and self.first_token_at is not None:
            ttft = f"ttft {self.first_token_at - self.sent_at:.2f}s"
        tokens = self.chunks
        if self.result is not None and self.result.usage.output_tokens:
            tokens = self.result.usage.output_tokens
        if self.first_token_at is not None and tokens > 1:
            span = (self.finished_at or now) - self.first_token_at
            rate = f"{tokens / span:.0f} tok/s" if span > 0 else ""
        count = f"{tokens} tok" if tokens else ""
        if count and self.result is not None and self.result.usage.reasoning_tokens:
            count += f" ({self.result.usage.reasoning_tokens} reasoning)"
        if self.result is not None and self.result.latency_s is not None:
            elapsed = f"{self.result.latency_s:.2f}s"
        elif self.started_at is not None:
            end = self.finished_at if self.finished_at is not None else now
            elapsed = f"{end - self.started_at:.1f}s"
        for parts in ([ttft, rate, count, elapsed], [ttft, rate, elapsed], [ttft, elapsed]):
            line = " · ".join(p for p in parts if p)
            if len(line) <= width:
                return line
        return elapsed[:width]


@dataclass
class _Body:
    """A pane's answer rendered for one width: its lines (with escape codes), and for which
    version of the text. The blocks that are over (up to ``done``: after a blank line outside
    a code block) are rendered once, into ``settled``; only the block still growing is
    rendered again, and of each only the tail a pane can show. ``lines`` reads the text's new
    lines only: a render costs the same however long the answer already is."""

    width: int
    version: int
    generation: int
    at: float
    done: int  # where the blocks rendered into ``settled`` end
    fence: str  # the code fence open at ``done`` ("": none), when the text was cut inside one
    lines_read: _Lines
    settled: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


@dataclass
class _Row:
    panes: list[tuple[str, Pane]]
    widths: list[int]
    body: bool
    wanted: int = PANE_ROWS
    height: int = PANE_ROWS


class LiveBoard:
    """One pane per call, answers streaming in side by side (stdout is a terminal).

    Columns when they fit, stacked when they don't; each pane shows the tail of its answer
    while it streams. A pane appears when its stage starts; once a later stage starts, the
    earlier ones shrink to their status lines and the new one gets the room. The board is
    on the alternate screen: once the run ends, the final view is printed on the main one.
    """

    wants_deltas = True

    def __init__(
        self,
        console: Console,
        agents: Sequence[Agent] = (),
        clock: Clock | None = None,
    ) -> None:
        self.console = console
        # Stages in the order they started, each with its panes by call id. Agents given up
        # front are the first stage's, queued until it starts.
        self.stages: list[dict[str, Pane]] = []
        if agents:
            self.stages.append({f"{PANEL_STAGE}/{a.name}": Pane(a.name, a.model) for a in agents})
        self._panes: dict[str, Pane] = dict(self.stages[0]) if self.stages else {}
        self._declared = bool(agents)  # the panel's panes are a guess until it starts
        self._clock = clock or time.monotonic
        self._state_lock = threading.Lock()  # events (the event loop) against frames (a thread)
        # Frames against restore, which a signal handler may call while this very thread is
        # in restore already: reentrant.
        self._write_lock = threading.RLock()
        self._bodies: dict[str, _Body] = {}
        self._markdown = _MarkdownRenderer(console)
        self._color = None if console.color_system is None else console.color_system
        self._no_color = console.no_color
        self._shown: list[Line] = []
        self._shown_size: tuple[int, int] | None = None
        self._fd: int | None = None
        self._stdin_fd: int | None = None
        self._saved_termios: list[Any] | None = None
        self._up = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.bytes_written = 0
        self.frames_written = 0

    @property
    def panes(self) -> dict[str, Pane]:
        """Every pane, by call id."""
        return self._panes

    # -- the terminal ------------------------------------------------------------------------

    def __enter__(self) -> LiveBoard:
        try:
            self._fd = self.console.file.fileno()
        except (AttributeError, OSError, ValueError):
            self._fd = None
        handed = take_first_frame()
        if handed is None:
            self._quiet_keys()
            self._up = True
            self._write(ENTER)
        else:  # the screen the command put up at launch, its keys already quiet
            self._stdin_fd, self._saved_termios = handed
            self._up = True
            self._write("\x1b[H\x1b[2J")
        self.refresh()
        self._thread = threading.Thread(target=self._run, name="fanout-live", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.restore()

    def restore(self) -> None:
        """Leave the alternate screen, show the cursor, drop the keys typed meanwhile and give
        the keys their echo back. Safe to call twice, and from a signal handler while a frame
        is being drawn."""
        self._stop.set()
        with self._write_lock:
            if self._up:
                self._write_now(LEAVE)  # then marked down: cut short, it is written again
                self._up = False
        saved, self._saved_termios = self._saved_termios, None
        if saved is not None and self._stdin_fd is not None:
            give_keys_back(self._stdin_fd, saved)

    def _quiet_keys(self) -> None:
        """Turn off the echo of keys typed while the board is up (``launch.quiet_keys``)."""
        quieted = quiet_keys()
        if quieted is not None:
            self._stdin_fd, self._saved_termios = quieted

    def _run(self) -> None:
        while not self._stop.wait(FRAME_S):
            self.refresh()

    def refresh(self) -> None:
        """Draw a frame: the lines that changed since the last one. Never raises: the board
        is an observer, and cannot break the run."""
        try:
            columns, rows = self._size()
            with self._state_lock:
                lines = self.frame_cells(columns, rows)
            update = self.update(lines, (columns, rows))
            if update:
                with self._write_lock:
                    if self._up:
                        self._write_now(update)
        except Exception:
            _log.debug("the live board failed to draw", exc_info=True)

    def _size(self) -> tuple[int, int]:
        if self._fd is not None:
            try:
                size = os.get_terminal_size(self._fd)
                return size.columns, size.lines
            except OSError:
                pass
        return self.console.width, self.console.height

    def update(self, lines: Sequence[str | Line], size: tuple[int, int]) -> str:
        """What turns the screen last drawn into ``lines`` (each a string, or its panes' cells
        side by side): only the pieces that changed, inside synchronized output; everything
        again after a resize. Empty if nothing changed.

        Every piece is written at its own column (``ESC[y;xH``): a piece may end in an erase
        (``ESC[nX``), which blanks cells without moving the cursor, so a piece can never be
        trusted to leave the cursor where the next one starts. After a changed piece holding
        wide characters (CJK, emoji), the next one is written again too: should the terminal
        measure one of them wider than we do, the border beside it is put back rather than
        left overwritten."""
        parts: list[str] = []
        if size != self._shown_size:
            parts.append("\x1b[H\x1b[2J")
            self._shown, self._shown_size = [], size
        shown = self._shown
        new: list[Line] = [[(0, line)] if isinstance(line, str) else line for line in lines]
        for y, line in enumerate(new):
            before = shown[y] if y < len(shown) else None
            if before == line:
                continue
            if before is None:
                parts.append(f"\x1b[{y + 1};1H\x1b[2K")
                parts.extend(f"\x1b[{y + 1};{x + 1}H{cell}\x1b[0m" for x, cell in line)
                continue
            # Both lines tile the whole width: a piece found at the same column with the
            # same text is already on the screen; every other piece is written.
            kept = set(before)
            rewrite = False
            for x, cell in line:
                if rewrite or (x, cell) not in kept:
                    parts.append(f"\x1b[{y + 1};{x + 1}H{cell}\x1b[0m")
                rewrite = (x, cell) not in kept and _wide(cell)
        for y in range(len(new), len(shown)):
            parts.append(f"\x1b[{y + 1};1H\x1b[2K")
        self._shown = new
        if not parts:
            return ""
        self.frames_written += 1
        return SYNC_BEGIN + "".join(parts) + SYNC_END

    def _write(self, text: str) -> None:
        with self._write_lock:
            self._write_now(text)

    def _write_now(self, text: str) -> None:
        data = text.encode("utf-8", "replace")
        self.bytes_written += len(data)
        if self._fd is None:
            self.console.file.write(text)
            self.console.file.flush()
            return
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._fd, view) :]
            except InterruptedError:
                continue
            except OSError:
                return

    # -- events ------------------------------------------------------------------------------

    def handle(self, event: Event) -> None:
        with self._state_lock:
            self._handle(event, self._clock())

    def _handle(self, event: Event, now: float) -> None:
        if isinstance(event, StageStarted):
            self._add_stage(event.stage, event.kind, event.calls)
            return
        call: Call | None = getattr(event, "call", None)
        pane = self._panes.get(call.call_id) if call is not None else None
        if pane is None:
            return
        if isinstance(event, CallWaiting):
            pane.state = "waiting"
            pane.started_at = now if pane.started_at is None else pane.started_at
            pane.wait_until = None if event.wait_s is None else now + event.wait_s
        elif isinstance(event, CallSending):
            pane.state, pane.attempt, pane.sent_at = "sending", event.attempt, now
            pane.started_at = now if pane.started_at is None else pane.started_at
            pane.chunks, pane.first_token_at, pane.retry_until = 0, None, None
            pane.wait_until = None
            pane.set_text("")
        elif isinstance(event, CallDelta):
            if pane.first_token_at is None:
                pane.first_token_at = now
            pane.state = "streaming"
            pane.add_text(event.text)
            pane.chunks += 1
        elif isinstance(event, CallFallback):
            pane.model = event.to_model  # the next attempt is this model's
        elif isinstance(event, CallRetrying):
            pane.state = "retrying"
            pane.attempt, pane.max_attempts = event.attempt, event.max_attempts
            pane.retry_reason, pane.retry_until = event.reason, now + event.wait_s
        elif isinstance(event, CallFinished):
            pane.result, pane.finished_at, pane.state = event.result, now, event.result.status
            if event.result.answer is not None:
                pane.set_text(event.result.answer)

    def _add_stage(self, stage: str, kind: str, calls: Sequence[Call]) -> None:
        if not calls:
            return
        if self._declared and stage == PANEL_STAGE:  # its real calls replace the guessed panes
            self._declared = False
            guessed = self.stages.pop()
            self._panes = {}
            panes = {
                c.call_id: guessed.get(c.call_id) or Pane(c.name, c.agent.model) for c in calls
            }
        else:
            title = "" if not self.stages else stage  # by its id: a flow's "draft", "review"
            panes = {c.call_id: Pane(c.name, c.agent.model, title=title) for c in calls}
        self.stages.append(panes)
        self._panes.update(panes)

    # -- the layout ----------------------------------------------------------------------------

    def frame(self, width: int, height: int) -> list[str]:
        """The board as at most ``height`` lines of ``width`` cells each (with escape codes
        when the console has colours)."""
        return [
            _ERASED.sub(lambda m: " " * int(m[1]), "".join(cell for _, cell in line))
            for line in self.frame_cells(width, height)
        ]

    def frame_cells(self, width: int, height: int) -> list[Line]:
        """``frame``, each line as its panes' pieces and the column each starts at."""
        now = self._clock()
        if not self.stages or width < 4 or height < 1:
            return []
        rows: list[_Row] = []
        for index, stage in enumerate(self.stages):
            panes = list(stage.items())
            body = index == len(self.stages) - 1  # earlier stages shrink to their status
            columns = self._columns(width, len(panes))
            widths = _split(width, columns)
            # The most a pane of this stage could show: what it renders need be no longer.
            share = max(height // math.ceil(len(panes) / columns) - PANE_ROWS, 1)
            for start in range(0, len(panes), columns):
                row = _Row(panes[start : start + columns], widths, body)
                if body:
                    row.wanted = max(
                        PANE_ROWS + len(self._body(key, pane, w - 4, share, now))
                        for (key, pane), w in zip(row.panes, widths, strict=False)
                    )
                rows.append(row)
        shown, hidden = _fit(rows, height)
        lines: list[Line] = []
        for row in shown:
            drawn = [
                self._pane(key, pane, w, row.height, now, body=row.body)
                for (key, pane), w in zip(row.panes, row.widths, strict=False)
            ]
            starts = [sum(row.widths[:i]) for i in range(len(drawn) + 1)]
            blank = [(starts[-1], " " * (width - starts[-1]))] if starts[-1] < width else []
            for pieces in zip(*drawn, strict=True):
                line = [(x + dx, cell) for x, piece in zip(starts, pieces, strict=False)
                        for dx, cell in piece]  # fmt: skip
                lines.append([*line, *blank])
        if hidden:
            lines.append([(0, self._more_line(hidden, width, now))])
        return lines

    def _columns(self, width: int, count: int) -> int:
        """As many columns as fit, balanced: 5 panes on room for 4 make rows of 3 and 2."""
        fit = max(1, min(count, width // MIN_PANE_WIDTH))
        rows = math.ceil(count / fit)
        return math.ceil(count / rows)

    def _more_line(self, hidden: list[Pane], width: int, now: float) -> str:
        """``+2 more: epsilon ⠋ streaming · zeta ✓ done``: panes with no room, and how they are."""
        states = " · ".join(f"{printable(p.name)} {p.status_line(now)[0]}" for p in hidden)
        return self._paint(set_cell_size(f"+{len(hidden)} more: {states}", width), "bold yellow")

    def _pane(
        self, key: str, pane: Pane, width: int, height: int, now: float, *, body: bool
    ) -> list[Line]:
        """One pane: ``height`` lines of ``width`` cells, each in pieces (borders, status,
        answer, figures) that change apart, so a frame rewrites only the piece that did."""
        if width < 4:  # too narrow to draw: blank
            return [[(0, " " * width)]] * height
        border = _BORDER.get(pane.state, "blue")
        inner = width - 4
        name, model = printable(pane.name), printable(pane.model)
        title = f"{printable(pane.title)} · " if pane.title else ""
        label = set_cell_size(f" {title}{name} · {model} ", inner).rstrip()
        label = f"{label} " if label else ""
        top = (
            self._paint("╭─", border)
            + self._paint(label, "bold")
            + self._paint("─" * max(width - 3 - cell_len(label), 0) + "╮", border)
        )
        stats = pane.stats(now, max(width - 6, 0))
        stats = f" {stats} " if stats else ""
        at = width - 2 - cell_len(stats)
        bottom: Line = [(0, self._paint("╰" + "─" * (at - 1), border))]
        if stats:
            bottom.append((at, self._paint(stats, "dim")))
        bottom.append((width - 2, self._paint("─╯", border)))
        left, right = self._paint("│", border) + " ", " " + self._paint("│", border)
        status, style = pane.status_line(now)
        status = set_cell_size(status, inner).rstrip(" ")
        status = self._paint(status, style) + _erase(inner - cell_len(status))
        lines: list[Line] = [[(0, top)], [(0, left), (2, status), (width - 2, right)]]
        room = height - PANE_ROWS
        text = self._body(key, pane, inner, room, now)[-room:] if body and room > 0 else []
        text = [_erase_padding(line) for line in text]
        text += [_erase(inner)] * (room - len(text))
        lines.extend([(0, left), (2, line), (width - 2, right)] for line in text)
        lines.append(bottom)
        return lines

    def _body(self, key: str, pane: Pane, width: int, rows: int, now: float) -> list[str]:
        """The pane's answer as Markdown, ``width`` cells wide, at least its last ``rows``
        lines: rendered again only when its text changed, and while it streams at most every
        ``MARKDOWN_EVERY_S``. Each block is rendered once, when it is over; only the one
        still streaming is rendered again; of either, only the tail a pane can show. A new
        text (another attempt) or width starts from the text's tail."""
        if not pane.answer.length:
            self._bodies.pop(key, None)
            return []
        body = self._bodies.get(key)
        if body is not None and body.width == width and body.generation == pane.generation:
            if body.version == pane.version:
                return body.lines
            if pane.result is None and now - body.at < MARKDOWN_EVERY_S:
                return body.lines
        else:
            body = self._bodies[key] = _fresh_body(pane, width, rows, now)
        # A tail of this many characters fills the pane: what it cannot show is not rendered.
        answer, chars, keep = pane.answer, max(rows, 1) * width, max(rows, 1) * 2
        read = body.lines_read
        read.read(answer, chars)
        if read.over > body.done:
            block = body.fence + answer.slice(body.done, read.over)
            lines = self._markdown.lines(printable(markdown_tail(block, chars)), width)
            gap = [" " * width] if body.settled and lines else []
            body.settled = [*body.settled, *gap, *lines][-keep:]
            body.done, body.fence = read.over, ""
        live = self._markdown.lines(printable(read.growing(answer, chars)), width)
        gap = [" " * width] if body.settled and live else []
        body.lines = [*body.settled, *gap, *live][-keep:]
        body.version, body.at = pane.version, now
        return body.lines

    def _paint(self, text: str, style: str) -> str:
        if self._color is None or not text:
            return text
        return _style(style, self._no_color).render(text, color_system=_COLOR_SYSTEMS[self._color])


class _MarkdownRenderer:
    """Markdown into lines of exactly ``width`` cells, with the escape codes of the board's
    console (none without colours)."""

    def __init__(self, console: Console) -> None:
        self._console = Console(
            file=io.StringIO(),
            width=console.width,
            color_system=console.color_system,  # type: ignore[arg-type]
            no_color=console.no_color,
            force_terminal=True,
            highlight=False,
            soft_wrap=False,
            emoji=False,
            markup=False,
        )
        self._color = None if console.color_system is None else _COLOR_SYSTEMS[console.color_system]
        self._no_color = console.no_color

    def lines(self, text: str, width: int) -> list[str]:
        from rich.markdown import Markdown  # 40 ms to import: only once there is an answer

        options = self._console.options.update(width=width, height=None)
        rendered = self._console.render_lines(Markdown(text), options, pad=True)
        while rendered and not "".join(s.text for s in rendered[-1]).strip():
            rendered.pop()  # Markdown's closing blank lines: the pane has better use for rows
        return [self._ansi(line) for line in rendered]

    def _ansi(self, segments: Iterable[Segment]) -> str:
        if self._no_color:
            segments = Segment.remove_color(segments)
        if self._color is None:
            return "".join(s.text for s in segments if not s.control)
        return "".join(
            s.style.render(s.text, color_system=self._color) if s.style else s.text
            for s in segments
            if not s.control
        )


@lru_cache(maxsize=64)
def _style(definition: str, no_color: bool) -> Style:
    style = Style.parse(definition)
    return Style(bold=style.bold, dim=style.dim) if no_color else style


def markdown_tail(text: str, chars: int) -> str:
    """The end of ``text``, about ``chars`` long, cut at a paragraph where one is near (else at
    a line, else a space), still inside a code block if the cut falls in one."""
    if len(text) <= chars:
        return text
    limit = len(text) - chars
    start = text.rfind("\n\n", max(limit - chars, 0), limit)
    if start < 0:
        start = text.rfind("\n", max(limit - chars, 0), limit)
    if start < 0:
        start = max(text.rfind(" ", 0, limit), 0)
    tail = text[start:].lstrip("\n ")
    if text.count("```", 0, start) % 2:
        tail = "```\n" + tail
    return tail


_ERASED = re.compile(r"\x1b\[(\d+)X")


def _wide(text: str) -> bool:
    """Whether ``text`` holds a character terminals may not all measure alike: East Asian wide
    or full-width, or from the emoji planes (and their joiners and variation selectors)."""
    return not text.isascii() and any(
        ord(c) >= 0x1100
        and (east_asian_width(c) in "WF" or ord(c) >= 0x1F000 or c in "\u200d\ufe0f")
        for c in text
    )


def _erase(cells: int) -> str:
    """Blank ``cells`` cells from the cursor on (ECH: 5 bytes instead of a run of spaces)."""
    return f"\x1b[{cells}X" if cells > 4 else " " * max(cells, 0)


def _erase_padding(line: str) -> str:
    """A rendered line with its padding (plain spaces at its end) erased rather than
    written."""
    text = line.rstrip(" ")
    return text + _erase(len(line) - len(text))


_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")


class GrowingText:
    """Text that grows by pieces. Appending costs the same however long it already is (a
    string joined anew for each piece costs its whole length), and a slice of its end is read
    in the time of the slice's length: the pieces are kept in blocks, each more than twice the
    size of the next, so there are few of them and a character is copied a few times at most.
    """

    def __init__(self, text: str = "") -> None:
        self._blocks: list[str] = [text] if text else []
        self._starts: list[int] = [0] if text else []
        self.length = len(text)

    def append(self, piece: str) -> None:
        blocks, starts = self._blocks, self._starts
        blocks.append(piece)
        starts.append(self.length)
        self.length += len(piece)
        while len(blocks) > 1 and len(blocks[-2]) <= 2 * len(blocks[-1]):
            last = blocks.pop()
            starts.pop()
            blocks[-1] += last

    def slice(self, start: int, end: int | None = None) -> str:
        """``text[start:end]``, in the time of its length."""
        end = self.length if end is None else min(end, self.length)
        start = max(start, 0)
        if start >= end:
            return ""
        first = bisect.bisect_right(self._starts, start) - 1
        last = bisect.bisect_right(self._starts, end - 1) - 1
        parts = self._blocks[first : last + 1]
        head, tail = start - self._starts[first], end - self._starts[last]
        if first == last:
            return parts[0][head:tail]
        return "".join([parts[0][head:], *parts[1:-1], parts[-1][:tail]])

    def __str__(self) -> str:
        text = "".join(self._blocks)
        self._blocks, self._starts = ([text], [0]) if text else ([], [])
        return text


@dataclass
class _Lines:
    """An answer's lines read so far, once each: where its blocks that are over end (after a
    blank line outside a code block), which code fence is open, and where the last few lines
    start (with the fence open at each), to show the tail of a long block still growing."""

    at: int  # the start of the first line not read yet (not over yet)
    over: int  # where the blocks that are over end
    fence: str = ""  # the fence of the code block open at ``at`` ("": none)
    starts: deque[tuple[int, str]] = field(default_factory=deque)  # since ``over``

    def read(self, answer: GrowingText, chars: int) -> None:
        """Read the lines completed since the last time."""
        fresh = answer.slice(self.at)
        end = fresh.rfind("\n")
        if end < 0:
            return
        at, fence, starts = self.at, self.fence, self.starts
        for line in fresh[:end].split("\n"):
            starts.append((at, fence))
            at += len(line) + 1
            marker = _FENCE.match(line)
            if fence:
                if marker and _closes(marker, line, fence):
                    fence = ""
            elif marker:
                fence = marker[1]
            elif not line.strip():
                self.over = at
                starts.clear()
        self.at, self.fence = at, fence
        while len(starts) > 1 and starts[1][0] <= answer.length - 2 * chars:
            starts.popleft()

    def growing(self, answer: GrowingText, chars: int) -> str:
        """The block still growing (after ``over``), or its tail when it is long: from a line
        start, inside its code block if the line is in one."""
        start, fence = self.over, ""
        for at, open_fence in self.starts:
            if at > answer.length - chars:
                break
            start, fence = at, open_fence
        opening = f"{fence}\n" if fence else ""
        return markdown_tail(opening + answer.slice(start), chars)


def _closes(marker: re.Match[str], line: str, fence: str) -> bool:
    """Whether a fence line closes the code block ``fence`` opened: the same character, at
    least as many, nothing after."""
    run = marker[1]
    return run[0] == fence[0] and len(run) >= len(fence) and not line[marker.end() :].strip()


def _fresh_body(pane: Pane, width: int, rows: int, now: float) -> _Body:
    """A body that starts at the tail of the pane's text: all it can show."""
    text = pane.text
    start = len(text) - len(markdown_tail(text, max(rows, 1) * width * 2))
    fence = "```\n" if text.count("```", 0, start) % 2 else ""
    lines = _Lines(start, start, fence.strip())
    return _Body(width, -1, pane.generation, now, done=start, fence=fence, lines_read=lines)


def _split(width: int, columns: int) -> list[int]:
    """``width`` cells in ``columns`` columns, the first ones a cell wider when it does not
    divide."""
    base, extra = divmod(width, columns)
    return [base + (1 if i < extra else 0) for i in range(columns)]


def _fit(rows: list[_Row], height: int) -> tuple[list[_Row], list[Pane]]:
    """Which rows are shown and how tall each is, and the panes left out. Every row shown
    gets at least ``PANE_ROWS``; what is left goes to the rows whose content wants it, evenly
    (a one-line answer takes four rows, not a share of the screen). When not every row fits,
    one line says how many panes are left out: the latest stage's rows are kept first."""
    if PANE_ROWS * len(rows) <= height:
        shown, hidden = list(rows), []
        room = height
    else:
        room = height - 1  # the "+N more" line
        latest = [r for r in rows if r.body]
        earlier = [r for r in rows if not r.body]
        chosen: list[_Row] = []
        for row in [*latest, *reversed(earlier)]:
            if PANE_ROWS * (len(chosen) + 1) > room:
                break
            chosen.append(row)
        shown = [r for r in rows if any(r is c for c in chosen)]
        hidden = [p for r in rows if not any(r is c for c in chosen) for _, p in r.panes]
    for row in shown:
        row.height = PANE_ROWS
    spare = room - PANE_ROWS * len(shown)
    while spare > 0:
        hungry = [r for r in shown if r.wanted > r.height]
        if not hungry:
            break
        share = max(spare // len(hungry), 1)
        for row in hungry:
            grant = min(share, row.wanted - row.height, spare)
            row.height += grant
            spare -= grant
            if spare == 0:
                break
    return shown, hidden
