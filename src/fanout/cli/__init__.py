"""The ``fanout`` command: parse flags, call the core, render, map errors to exit codes.

One module per command (``ask``, ``chat``, ``batch``, ``runs``, ``flow``, ``serve``) on the
root of ``app``; ``options`` holds the flags they share, ``flags`` turns flags into what the command
drivers take. The heavy modules (engine, provider, Rich) load only when a command runs.

Exit codes: 0 every persona answered · 3 some failed (partial) · 5 it ran but decided nothing
(no quorum, a tie) · 1 all failed or a runtime error · 2 usage or configuration error · 130
interrupted (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

from fanout.cli import ask, batch, catalog, chat, serve, shapes  # noqa: F401  (each registers its commands)
from fanout.cli.app import app
from fanout.cli.cache import cache_app
from fanout.cli.eval import eval_app
from fanout.cli.flow import flow_app
from fanout.cli.runs import runs_app

# The groups of commands, in the order --help lists them (after the commands of their own).
app.add_typer(runs_app, name="runs")
app.add_typer(flow_app, name="flow")
app.add_typer(eval_app, name="eval")
app.add_typer(cache_app, name="cache")

__all__ = ["app", "main"]


def main() -> None:
    """The command line (``fanout.launch.main`` calls it once the signal handlers are in
    place; an older console script calls it directly, and gets them here)."""
    from fanout.interrupt import install

    install()
    app()
