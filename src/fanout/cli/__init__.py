"""The ``fanout`` command: parse flags, call the core, render, map errors to exit codes.

One module per command (``ask``, ``chat``, ``batch``, ``runs``, ``flow``, ``serve``) on the
root of ``app``; ``options`` holds the flags they share, ``flags`` turns flags into what the command
drivers take. The heavy modules (engine, provider, Rich) load only when a command runs.

Exit codes: 0 every persona answered · 3 some failed (partial) · 1 all failed or a runtime
error · 2 usage or configuration error · 130 interrupted (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

from fanout.cli import ask, batch, chat, serve  # noqa: F401  (each registers its commands on app)
from fanout.cli.app import app
from fanout.cli.eval import eval_app
from fanout.cli.flow import flow_app
from fanout.cli.runs import runs_app

# The groups of commands, in the order --help lists them (after the commands of their own).
app.add_typer(runs_app, name="runs")
app.add_typer(flow_app, name="flow")
app.add_typer(eval_app, name="eval")

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    app()
