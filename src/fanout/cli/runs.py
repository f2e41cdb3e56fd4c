"""``fanout runs``: the history: list, show, export, retry, synth, delete."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from fanout.cli.app import (
    Command,
    Group,
    errors_to_exit,
)
from fanout.cli.flags import (
    check_output,
    check_utf8,
    output_of,
)
from fanout.cli.options import (
    MAX_LIMIT,
    FormatOption,
    JsonlDeltasOption,
    JsonlOption,
    JsonOption,
    NoLogOption,
    OutputOption,
    count_parser,
)


class _RunsGroup(Group):
    """``fanout runs``: its help ends with where the history is (``FANOUT_HOME`` moves it),
    found when the help is asked for, not when the module loads."""

    def get_help(self, ctx: Any) -> str:
        from fanout.history import history_path

        self.epilog = f"History: {history_path(os.environ)} (set FANOUT_HOME to move it)"
        return super().get_help(ctx)


RunStatus = Literal["completed", "partial", "failed", "cancelled", "interrupted", "running"]
runs_app = typer.Typer(
    cls=_RunsGroup,
    help="Past runs: list, search, show, retry, synthesize again or delete them.",
    no_args_is_help=True,
)
RunIdArgument = Annotated[str, typer.Argument(help="A run id, or a unique prefix of one.")]


@runs_app.command("list", cls=Command)
def runs_list(
    limit: Annotated[
        int,
        typer.Option(
            "--limit", "-n", metavar="N", parser=count_parser(1, MAX_LIMIT), help="How many runs."
        ),
    ] = 20,
    json_output: JsonOption = False,
    query: Annotated[
        str | None,
        typer.Option(
            "--query", "-q", metavar="TEXT", help="Only runs whose prompt or an answer holds TEXT."
        ),
    ] = None,
    agent: Annotated[
        str | None,
        typer.Option("--agent", "-a", metavar="NAME", help="Only runs that asked this persona."),
    ] = None,
    status: Annotated[
        RunStatus | None, typer.Option("--status", help="Only runs that ended so.")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since", metavar="WHEN", help="Only runs started since: 30m, 2h, 3d, 1w or a date."
        ),
    ] = None,
    conversation: Annotated[
        str | None,
        typer.Option(
            "--conversation",
            metavar="ID",
            help="Only the turns of this conversation (its id or a run of it; a prefix).",
        ),
    ] = None,
) -> None:
    """List recorded runs, newest first (times are local).

    Examples:

      fanout runs list -q entropy --since 3d

      fanout runs list --agent physicist --status failed

      fanout runs list --json | jq -r '.runs[0].run_id'
    """
    from fanout import stored
    from fanout.history import RunFilter, parse_since

    with errors_to_exit():
        for value, what in ((query, "--query"), (agent, "--agent"), (since, "--since")):
            check_utf8(value, what)
        check_utf8(conversation, "--conversation")
        where = None
        if (query, agent, status, since, conversation) != (None, None, None, None, None):
            when = parse_since(since) if since is not None else None
            where = RunFilter(
                text=query, agent=agent, status=status, since=when, conversation=conversation
            )
        stored.list_runs(limit, json_output, where)


@runs_app.command("delete", cls=Command)
def runs_delete(
    run_id: RunIdArgument,
    force: Annotated[
        bool,
        typer.Option("--force", help="Delete a turn of a conversation that has later turns, too."),
    ] = False,
) -> None:
    """Delete a recorded run (its prompt, answers and document) from the history. A turn of
    a conversation with later turns is refused without --force (they were asked with it).

    Example: fanout runs delete 3f9c
    """
    from fanout import stored

    with errors_to_exit():
        check_utf8(run_id, "the run id")
        full = stored.delete_run(run_id, force=force)
        typer.echo(f"deleted run {full}", err=True)


@runs_app.command("show", cls=Command)
def runs_show(
    run_id: RunIdArgument,
    json_output: JsonOption = False,
    show_timeline: Annotated[
        bool,
        typer.Option(
            "--timeline",
            help="Also draw each call's phases (waiting, back-off, until first token, "
            "streaming) on one time axis.",
        ),
    ] = False,
    view: FormatOption = None,
    agent: Annotated[
        str | None,
        typer.Option(
            "--agent", "-a", metavar="NAME", help="With --raw: the persona whose answer to print."
        ),
    ] = None,
    raw: Annotated[
        bool, typer.Option("--raw", help="Print one persona's answer as it was written.")
    ] = False,
    exit_status: Annotated[
        bool,
        typer.Option(
            "--exit-status", help="Exit with the run's own code (3 partial, 1 failed, 130...)."
        ),
    ] = False,
    turns: Annotated[
        bool,
        typer.Option("--turns", help="Show every turn of the run's conversation, in order."),
    ] = False,
) -> None:
    """Show a recorded run as `ask` showed it, under its prompt, local time and settings;
    --json gives the same document as `ask --json`. Exits 0 once shown (see --exit-status).

    Examples:

      fanout runs show 3f9c

      fanout runs show 3f9c --timeline

      fanout runs show 3f9c -a physicist --raw > physicist.md

      fanout runs show 3f9c --turns
    """
    from fanout import stored

    with errors_to_exit():
        check_utf8(run_id, "the run id")
        check_utf8(agent, "--agent")
        if turns:
            from fanout.chat import show_turns

            show_turns(run_id, json_output, view)
            raise typer.Exit(0)
        code = stored.show_run(
            run_id,
            json_output,
            with_timeline=show_timeline,
            view=view,
            agent=agent,
            raw=raw,
            exit_status=exit_status,
        )
    raise typer.Exit(code)


@runs_app.command("export", cls=Command)
def runs_export(
    run_id: RunIdArgument,
    fmt: Annotated[
        Literal["perfetto", "html"],
        typer.Option(
            "--format",
            "-f",
            help="perfetto: Chrome trace-event JSON for ui.perfetto.dev or chrome://tracing; "
            "html: one self-contained page (answers side by side, verdict, timeline).",
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", metavar="FILE", help="Write to this file (default: stdout)."
        ),
    ] = None,
) -> None:
    """Export a recorded run for other viewers: a Perfetto trace or an HTML page.

    Examples:

      fanout runs export 3f9c --format perfetto -o run.json

      fanout runs export 3f9c --format html -o run.html
    """
    from fanout import stored

    with errors_to_exit():
        check_utf8(run_id, "the run id")
        if output is not None:
            check_output(output)
        code = stored.export_run(run_id, fmt, output)
    raise typer.Exit(code)


@runs_app.command("retry", cls=Command)
def runs_retry(
    run_id: RunIdArgument,
    json_output: JsonOption = False,
    jsonl: JsonlOption = False,
    jsonl_deltas: JsonlDeltasOption = False,
    view: FormatOption = None,
    output: OutputOption = None,
    no_log: NoLogOption = False,
) -> None:
    """Ask again only the personas of a run that failed or were cancelled, with the prompt and
    settings recorded, and fold their answers into the same run.

    Example: fanout runs retry 3f9c
    """
    from fanout import carry

    with errors_to_exit():
        check_utf8(run_id, "the run id")
        out = output_of(json_output, jsonl, jsonl_deltas, output, view)
        code = carry.retry(run_id, output=out, log=not no_log)
    raise typer.Exit(code)


@runs_app.command("synth", cls=Command)
def runs_synth(
    run_id: RunIdArgument,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Synthesize with this model instead.")
    ] = None,
    json_output: JsonOption = False,
    jsonl: JsonlOption = False,
    view: FormatOption = None,
    output: OutputOption = None,
    no_log: NoLogOption = False,
) -> None:
    """Synthesize a recorded run again from its stored answers; no persona is asked again.

    Example: fanout runs synth 3f9c --model gpt-4o
    """
    from fanout import carry

    with errors_to_exit():
        check_utf8(run_id, "the run id")
        check_utf8(model, "--model")
        out = output_of(json_output, jsonl, False, output, view)
        code = carry.synth(run_id, model=model, output=out, log=not no_log)
    raise typer.Exit(code)


@runs_app.command("stats", cls=Command)
def runs_stats(
    json_output: JsonOption = False,
    since: Annotated[
        str | None,
        typer.Option(
            "--since", metavar="WHEN", help="Only runs started since: 30m, 2h, 3d, 1w or a date."
        ),
    ] = None,
) -> None:
    """A leaderboard across the history: each persona's wins in every judge, vote and council
    decision recorded, with a 95 % interval, and its cost per win.

    Example: fanout runs stats --since 1w
    """
    from fanout.runstats import show_stats

    with errors_to_exit():
        show_stats(json_output, since)
