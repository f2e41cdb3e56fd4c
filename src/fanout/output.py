"""Where a command's result goes (``Output``), the exit codes it ends with, and writing to a
stdout whose reader may have gone (``| head``). Light on purpose: the flags are turned into an
``Output`` before anything heavy loads."""

from __future__ import annotations

import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fanout.errors import StdoutClosed

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_PIPE = 141  # stdout was closed by its reader (`| head`): as if SIGPIPE had ended us
EXIT_UNDECIDED = 5  # it ran, but a verdict decided nothing (no quorum, a tie, a split judge)
EXIT_FOR_STATUS = {
    "completed": EXIT_OK,
    "partial": EXIT_PARTIAL,
    "failed": EXIT_FAILED,
    "cancelled": EXIT_INTERRUPTED,
    "interrupted": EXIT_INTERRUPTED,
    "running": EXIT_OK,
}
Mode = Literal["table", "json", "jsonl"]


def exit_for(status: str, decided: bool | None) -> int:
    """A run's exit code: its status's, except that a run that ran (all or in part) and
    whose verdict decided nothing ends with ``EXIT_UNDECIDED``, for a script to test."""
    code = EXIT_FOR_STATUS.get(status, EXIT_OK)
    return EXIT_UNDECIDED if decided is False and code in (EXIT_OK, EXIT_PARTIAL) else code


@dataclass(frozen=True)
class Output:
    """Where the result goes: a table (live on a terminal), one JSON document, or JSON lines."""

    mode: Mode = "table"
    deltas: bool = False  # --jsonl-deltas
    file: Path | None = None  # -o
    timeline: bool = False  # --timeline: after the result (on stderr when stdout is JSON)
    view: str | None = None  # --format: table, columns, md, text; None: columns on a terminal,
    # else Markdown, which pipes and copies cleanly where a box table would be cut


def write_stdout(text: str) -> None:
    """Write the command's output; a reader that has gone ends the command quietly
    (``StdoutClosed``: exit 141). Written to the descriptor until every byte is taken:
    Python's buffered writer drops the rest of a large write unsaid when the reader leaves
    after a partial write, so ``ask --json | head -c 100`` of a 1 MB document exited 0."""
    from fanout.launch import restore

    restore()  # the first frame, if still up, leaves the screen first (as sys.stdout's would)
    try:
        sys.stdout.flush()
        try:
            fd = sys.stdout.fileno()
        except (AttributeError, ValueError, io.UnsupportedOperation):  # not a file (tests)
            sys.stdout.write(text)
            sys.stdout.flush()
            return
        encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
        data = memoryview(text.encode(encoding, getattr(sys.stdout, "errors", None) or "strict"))
        while data:
            data = data[os.write(fd, data) :]
    except BrokenPipeError:
        silence_stdout()
        raise StdoutClosed from None


def silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's own flush at exit cannot complain."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
