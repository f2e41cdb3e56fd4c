"""The ``fanout`` command's entry point: a first frame on screen before anything heavy loads.

A run shown live (``fanout ask`` on a terminal) spends its first few hundred milliseconds
importing the CLI, Rich, the agents file's models and the HTTP client before the live board
draws. So when the command line asks for a run that will be shown live, this module, which
imports nothing but the standard library, puts the terminal on the alternate screen with one
status line at once; the live board takes that screen over (``take``) and draws its panes on
it. Whatever ends the command before the board does (a usage error, a missing key, Ctrl-C),
the screen and the keys' echo are given back before the error is printed (``restore``).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping, Sequence

try:
    import termios
except ImportError:  # Windows: no first frame
    termios = None  # type: ignore[assignment]

# The alternate screen, cursor hidden, no autowrap; the reverse (as the live board's).
ENTER = "\x1b[?1049h\x1b[?25l\x1b[?7l\x1b[H\x1b[2J"
LEAVE = "\x1b[?7h\x1b[?25h\x1b[?1049l"
STATUS = "\x1b[1;1H\x1b[2m· asking the panel…\x1b[0m"

# The commands besides ask that show a run live; the flags after which no live board is shown
# (a document, a plan, the help).
_LIVE_COMMANDS = {("flow", "run"), ("runs", "retry"), ("runs", "synth")}
_NOT_LIVE = {"--json", "--jsonl", "--dry-run", "--help", "-h", "--version"}


Saved = list[int | list[bytes | int]]  # a terminal's settings, as termios gives them


class _Screen:
    """The alternate screen this module put up, until the board takes it or it is left."""

    def __init__(self) -> None:
        self.up = False
        self.stdin_fd: int | None = None
        self.saved: Saved | None = None


_screen = _Screen()


def shows_live(
    argv: Sequence[str], environ: Mapping[str, str], stdout_tty: bool, stdin_tty: bool
) -> bool:
    """Whether this command line runs with the live board: an ``ask`` (by name, or a question
    that is not a bare word, or flags first), a flow run, a retry or a synthesis, on a terminal
    that can draw, with no flag that prints something else instead, and no prompt to be typed
    on the terminal (``-``)."""
    if not stdout_tty or environ.get("TERM", "").lower() in ("dumb", "unknown"):
        return False
    if not argv or any(a in _NOT_LIVE or a.startswith(("--json=", "--jsonl=")) for a in argv):
        return False
    if stdin_tty and "-" in argv:
        return False
    first = argv[0]
    if tuple(argv[:2]) in _LIVE_COMMANDS:
        return True
    return first == "ask" or first.startswith("-") or not first.replace("-", "").isalnum()


class _LeaveFirst:
    """``sys.stdout`` or ``sys.stderr`` while the first frame is up: whatever is printed
    before the board takes the screen (an error, a warning) leaves it first, so that it stays
    on the main screen to be read."""

    def __init__(self, stream: object) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        restore()
        return int(self._stream.write(text))  # type: ignore[attr-defined]

    def writelines(self, lines: Sequence[str]) -> None:
        restore()
        self._stream.writelines(lines)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)


def paint() -> None:
    """The first frame: the alternate screen and one status line; keys typed from now on are
    not echoed (as while the board is up)."""
    try:
        fd = sys.stdout.fileno()
        _quiet_keys()
        os.write(fd, (ENTER + STATUS).encode())
    except (OSError, ValueError):
        return
    _screen.up = True
    sys.stdout = _LeaveFirst(sys.stdout)
    sys.stderr = _LeaveFirst(sys.stderr)


def take() -> tuple[int | None, Saved | None] | None:
    """The live board takes the screen over: ``None`` if it is not up, else the keys' saved
    settings (the board gives them back when it ends)."""
    if not _screen.up:
        return None
    _screen.up = False
    handed = _screen.stdin_fd, _screen.saved
    _screen.stdin_fd = _screen.saved = None
    return handed


def restore() -> None:
    """Leave the screen if the board never took it: before an error is printed, and at exit."""
    if not _screen.up:
        return
    _screen.up = False
    with contextlib.suppress(OSError, ValueError):
        os.write(sys.stdout.fileno(), LEAVE.encode())
    fd, saved = _screen.stdin_fd, _screen.saved
    if fd is not None and saved is not None:
        give_keys_back(fd, saved)


def quiet_keys() -> tuple[int, Saved] | None:
    """Turn off the echo of keys typed on the terminal (Enter would move the cursor under a
    full-screen view's feet; Ctrl-C still works): the terminal's descriptor and the settings
    to give back, or None when stdin is no terminal. The first frame and the live board both
    use it."""
    if termios is None:
        return None
    try:
        fd = sys.stdin.fileno()
        if not os.isatty(fd):
            return None
        saved = termios.tcgetattr(fd)
        quiet = termios.tcgetattr(fd)
        quiet[3] &= ~(termios.ECHO | termios.ECHONL)
        termios.tcsetattr(fd, termios.TCSANOW, quiet)
    except (AttributeError, OSError, ValueError, termios.error):
        return None  # no stdin, or one replaced by something that is not a file
    return fd, saved


def give_keys_back(fd: int, saved: Saved) -> None:
    """Drop the keys typed while they were not shown (they must not run in the shell once
    fanout is over: an Enter among them would run a line unseen), then give the echo back."""
    if termios is None:
        return
    with contextlib.suppress(OSError, termios.error):
        termios.tcflush(fd, termios.TCIFLUSH)
    with contextlib.suppress(OSError, termios.error):
        termios.tcsetattr(fd, termios.TCSANOW, saved)


def _quiet_keys() -> None:
    quieted = quiet_keys()
    if quieted is not None:
        _screen.stdin_fd, _screen.saved = quieted


def main() -> None:
    """Console-script entry point: the signal handlers before anything else (a Ctrl-C while
    the command loads is a cancelled run, never a traceback: ``fanout.interrupt``, standard
    library only too), the first frame when the run is shown live, then the command line."""
    from fanout.collector import hold
    from fanout.interrupt import install, on_hard_exit

    hold()
    install()
    if shows_live(sys.argv[1:], os.environ, _is_tty(sys.stdout), _is_tty(sys.stdin)):
        paint()
        on_hard_exit(restore)  # a second Ctrl-C before the board takes the screen gives it back
    try:
        from fanout.cli import main as cli_main

        cli_main()
    finally:
        restore()


def _is_tty(stream: object) -> bool:
    try:
        return os.isatty(stream.fileno())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False
