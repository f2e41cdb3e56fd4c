"""The ``fanout`` command: parse flags, call the core, render, map errors to exit codes.

One module per command (``ask``, ``chat``, ``batch``, ``runs``, ``flow``, ``serve``) on the
root of ``app``, imported when its command runs (``app.COMMANDS``); ``options`` holds the flags
they share, ``flags`` turns flags into what the command drivers take. The heavy modules
(engine, provider, Rich) load only when a command runs.

Exit codes: 0 every persona answered · 3 some failed (partial) · 5 it ran but decided nothing
(no quorum, a tie) · 1 all failed or a runtime error · 2 usage or configuration error · 130
interrupted (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

from fanout.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    """The command line (``fanout.launch.main`` calls it once the signal handlers are in
    place; an older console script calls it directly, and gets them here)."""
    from fanout.interrupt import install

    install()
    app()
