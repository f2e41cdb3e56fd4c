"""``fanout cache``: the response cache: what it holds, and clearing it."""

from __future__ import annotations

import json
import os
import sys

import typer

from fanout.cli.app import Command, Group, errors_to_exit
from fanout.cli.options import JsonOption

cache_app = typer.Typer(
    cls=Group,
    help="The response cache (--cache): how many answers it holds and its size; clear it.",
    invoke_without_command=True,
)


@cache_app.callback(invoke_without_command=True)
def cache_show(ctx: typer.Context, json_output: JsonOption = False) -> None:
    """Show where the response cache is, how many answers it holds (per model) and its size.

    Example: fanout cache --json | jq .answers
    """
    if ctx.invoked_subcommand is not None:
        return
    from fanout.cache import ResponseCache, cache_path

    with errors_to_exit():
        stats = ResponseCache.shared(cache_path(os.environ)).stats()
        if json_output:
            document = {
                "path": stats.path,
                "answers": stats.answers,
                "bytes": stats.bytes,
                "models": stats.models,
            }
            sys.stdout.write(json.dumps(document, indent=2) + "\n")
            return
        lines = [
            f"Response cache: {stats.path}",
            f"{stats.answers:,} answer{'s' if stats.answers != 1 else ''} · {_size(stats.bytes)}",
        ]
        width = max((len(m) for m in stats.models), default=0)
        lines += [f"  {model.ljust(width)}  {count:,}" for model, count in stats.models.items()]
        sys.stdout.write("\n".join(lines) + "\n")


@cache_app.command("clear", cls=Command)
def cache_clear() -> None:
    """Remove every answer from the response cache.

    Example: fanout cache clear
    """
    from fanout.cache import ResponseCache, cache_path

    with errors_to_exit():
        cache = ResponseCache.shared(cache_path(os.environ))
        cleared = cache.clear()
        typer.echo(
            f"cleared {cleared:,} answer{'s' if cleared != 1 else ''} from {cache.path}", err=True
        )


def _size(count: int) -> str:
    """``4.2 MB``: a size on disk as people read it."""
    size = float(count)
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:,.0f} {unit}" if unit == "bytes" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{size:,.1f} GB"  # pragma: no cover
