"""What a user sees of the live board, read back from a screen: the screen (pyte's, or the text
``tmux capture-pane`` prints) parsed into panes' boxes, and a check that every box is whole
and holds its own answer.

A screen is a list of rows, each a list of one string per column: the character drawn there,
``""`` for the right half of a wide one (as pyte keeps it). ``check_board`` raises
``BoardError`` naming the row, the column and what is wrong, with the screen, so a failing
frame reads like the terminal it came from.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import pyte
from wcwidth import wcwidth

Screen = list[list[str]]

BOX_CHARS = set("╭╮╰╯│")  # a pane's corners and sides: never inside a pane, never outside one
STATUS = re.compile(
    r"· queued"
    r"|[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏] (streaming|asking…|waiting for the rate limit(, [\d.]+ s)?)"
    r"( · attempt \d+(/\d+)?)?"
    r"|✓ done( · truncated \(max_tokens\))?( · \d+ attempts)?"
    r"|[✗↻] .*|cancelled|skipped"
)
MORE = re.compile(r"\+(\d+) more: ")
WORD = re.compile(r"\w+")


class BoardError(AssertionError):
    pass


@dataclass
class Box:
    """One pane as drawn: its corners' rows and columns, its title and its inner lines."""

    top: int
    left: int
    bottom: int
    right: int
    title: str
    lines: list[str] = field(default_factory=list)  # between the borders, padding included

    @property
    def name(self) -> str:
        """The persona's name: the title is ``[Stage · ]name · model``."""
        parts = self.title.split(" · ")
        return parts[-2] if len(parts) >= 2 else parts[0]


@dataclass
class Board:
    boxes: list[Box]
    more: int = 0  # panes counted on the "+N more" line
    more_line: str = ""


def pyte_screen(screen: pyte.Screen) -> Screen:
    """The cells of a pyte screen."""
    return [[screen.buffer[y][x].data for x in range(screen.columns)] for y in range(screen.lines)]


def text_screen(lines: Iterable[str], columns: int) -> Screen:
    """The cells of a screen given as text (``tmux capture-pane -p``): a wide character takes
    two columns."""
    rows: Screen = []
    for line in lines:
        row: list[str] = []
        for char in line:
            width = wcwidth(char)
            if width == 0 and row:
                row[-1] += char  # a combining mark joins the character before it
                continue
            row.append(char)
            if width == 2:
                row.append("")
        rows.append((row + [" "] * columns)[:columns])
    return rows


def show(screen: Screen) -> str:
    ruler = "".join(str(x % 10) for x in range(len(screen[0]) if screen else 0))
    return "\n".join([ruler, *("".join(row) for row in screen)])


def _fail(screen: Screen, y: int, x: int, what: str) -> BoardError:
    return BoardError(f"row {y}, column {x}: {what}\n{show(screen)}")


def parse_board(screen: Screen) -> Board:
    """The boxes on ``screen``, each checked whole: a top ``╭─…╮``, rows with ``│`` at both its
    columns, a bottom ``╰─…╯`` under the top corners; nothing but blanks outside the boxes,
    except one ``+N more`` line under them."""
    height = len(screen)
    width = len(screen[0]) if screen else 0
    owned = [[False] * width for _ in range(height)]
    boxes: list[Box] = []
    for y in range(height):
        for x in range(width):
            if screen[y][x] != "╭" or owned[y][x]:
                continue
            box = _box(screen, y, x)
            for yy in range(box.top, box.bottom + 1):
                for xx in range(box.left, box.right + 1):
                    owned[yy][xx] = True
            boxes.append(box)
    board = Board(boxes)
    for y in range(height):
        outside = "".join(screen[y][x] for x in range(width) if not owned[y][x])
        if not outside.strip():
            continue
        line = "".join(screen[y])
        more = MORE.match(line)
        if more and not any(owned[y]) and not board.more_line:
            board.more, board.more_line = int(more[1]), line.rstrip()
            if any(not "".join(r).strip() == "" for r in screen[y + 1 :]):
                raise _fail(screen, y + 1, 0, "something under the '+N more' line")
            continue
        x = next(x for x in range(width) if not owned[y][x] and screen[y][x].strip())
        raise _fail(screen, y, x, f"{screen[y][x]!r} outside every pane")
    _check_rows(screen, boxes)
    return board


def _box(screen: Screen, top: int, left: int) -> Box:
    width = len(screen[0])
    row = screen[top]
    if left + 1 >= width or row[left + 1] != "─":
        raise _fail(screen, top, left, "a top-left corner not followed by '─'")
    right = next((x for x in range(left + 1, width) if row[x] == "╮"), None)
    if right is None or any(c in BOX_CHARS for c in row[left + 1 : right]):
        raise _fail(screen, top, left, "a top border with no top-right corner")
    title = "".join(row[left + 2 : right]).strip(" ─")
    box = Box(top, left, -1, right, title)
    for y in range(top + 1, len(screen)):
        cells = screen[y]
        if cells[left] == "╰":
            if cells[right] != "╯":
                raise _fail(screen, y, right, f"bottom-right corner missing ({cells[right]!r})")
            bottom = "".join(cells[left + 1 : right])
            if not bottom.startswith("─") or not bottom.endswith("─"):
                raise _fail(screen, y, left, f"a broken bottom border {bottom!r}")
            box.bottom = y
            break
        if cells[left] != "│":
            raise _fail(screen, y, left, f"left border missing ({cells[left]!r})")
        if cells[right] != "│":
            raise _fail(screen, y, right, f"right border missing ({cells[right]!r})")
        inner = cells[left + 1 : right]
        stray = [i for i, c in enumerate(inner) if c in BOX_CHARS]
        if stray:
            raise _fail(screen, y, left + 1 + stray[0], "a border inside a pane")
        if inner[0] != " " or inner[-1] not in (" ", ""):
            raise _fail(screen, y, left + 1, "no padding inside the borders")
        box.lines.append("".join(inner[1:-1]))
    else:
        raise _fail(screen, top, left, "a pane with no bottom border")
    if not box.lines:
        raise _fail(screen, top, left, "a pane with no status line")
    return box


def _check_rows(screen: Screen, boxes: Sequence[Box]) -> None:
    """Panes side by side start at the left edge, touch each other and end on one row."""
    for top in sorted({b.top for b in boxes}):
        row = sorted((b for b in boxes if b.top == top), key=lambda b: b.left)
        if row[0].left != 0:
            raise _fail(screen, top, 0, "the first pane of a row is not at the left edge")
        for before, after in itertools.pairwise(row):
            if after.left != before.right + 1:
                raise _fail(screen, top, after.left, "a gap between panes side by side")
            if after.bottom != before.bottom:
                raise _fail(screen, after.bottom, after.left, "panes of a row end apart")


def words(text: str) -> list[str]:
    return WORD.findall(text)


def check_board(
    screen: Screen,
    answers: Mapping[str, str],
    *,
    panes: int | None = None,
) -> Board:
    """``parse_board``, then: every box is one of ``answers``' personas, shown once; its first
    line is a state; the words in it are its own answer's, in the answer's order, one stretch
    of it (the tail of what streamed so far); ``panes``: how many there are, shown or counted."""
    board = parse_board(screen)
    seen: set[str] = set()
    for box in board.boxes:
        name = box.name
        if name not in answers:
            raise _fail(screen, box.top, box.left, f"a pane titled {box.title!r}")
        if name in seen:
            raise _fail(screen, box.top, box.left, f"{name!r} has two panes")
        seen.add(name)
        status = box.lines[0].rstrip()
        if not STATUS.fullmatch(status):
            raise _fail(screen, box.top + 1, box.left + 2, f"not a state: {status!r}")
        shown = words(" ".join(box.lines[1:]))
        if shown and not _stretch(shown, words(answers[name])):
            raise _fail(
                screen,
                box.top + 2,
                box.left + 2,
                f"{name}'s pane shows words that are not one stretch of its answer: {shown}",
            )
    if panes is not None and len(board.boxes) + board.more != panes:
        raise BoardError(
            f"{len(board.boxes)} panes and {board.more} more, not {panes}\n{show(screen)}"
        )
    return board


def _stretch(shown: list[str], answer: list[str]) -> bool:
    """Whether ``shown`` is a run of consecutive words of ``answer``."""
    first, size = shown[0], len(shown)
    return any(answer[i : i + size] == shown for i, word in enumerate(answer) if word == first)
