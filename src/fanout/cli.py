"""The ``fanout`` command: parse flags, call the core, render, map errors to exit codes.

Exit codes: 0 every persona answered · 3 some failed (partial) · 1 all failed or a runtime
error · 2 usage or configuration error · 130 interrupted (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fanout import __version__
from fanout.errors import ConfigError, FanoutError

if TYPE_CHECKING:  # the heavy modules load only when a command needs them
    from fanout.models import RunReport
    from fanout.runner import RunSettings

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
_EXIT_FOR_STATUS = {
    "completed": EXIT_OK,
    "partial": EXIT_PARTIAL,
    "failed": EXIT_FAILED,
    "cancelled": EXIT_INTERRUPTED,
}

app = typer.Typer(
    name="fanout",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Agents file. Default: $FANOUT_CONFIG, ./agents.yaml, the user config dir, "
        "then the panel shipped with fanout.",
        show_default=False,
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print one JSON document on stdout and nothing else.")
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fanout {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """Ask a panel of LLM personas one question at once and compare their answers.

    Example: fanout ask "What is temperature?" --agents physicist,chemist
    """


@app.command()
def ask(
    prompt: Annotated[
        str | None,
        typer.Argument(help="The question. Use - (or leave it out) to read it from stdin."),
    ] = None,
    agents: Annotated[
        str | None,
        typer.Option("--agents", "-a", help="Comma-separated personas to ask (default: all)."),
    ] = None,
    config: ConfigOption = None,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Use this model for every persona in this run."),
    ] = None,
    synthesize: Annotated[
        bool, typer.Option("--synthesize", "-s", help="Merge the answers into one.")
    ] = False,
    json_output: JsonOption = False,
    jsonl: Annotated[
        bool,
        typer.Option("--jsonl", help="Print events as JSON lines while the run goes on."),
    ] = False,
    jsonl_deltas: Annotated[
        bool,
        typer.Option("--jsonl-deltas", help="With --jsonl, also every streamed piece of text."),
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Also write the JSON document to this file."),
    ] = None,
    no_stream: Annotated[
        bool,
        typer.Option("--no-stream", help="Ask for whole answers instead of streaming them."),
    ] = False,
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, help="Most calls in flight at once.")
    ] = 8,
    retries: Annotated[
        int, typer.Option("--retries", min=0, help="Retries per persona after a failed attempt.")
    ] = 3,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout", min=0.001, help="Seconds per attempt; a persona's own timeout: wins."
        ),
    ] = 120.0,
    max_retry_after: Annotated[
        float,
        typer.Option(
            "--max-retry-after", min=0, help="Fail at once if a server asks to wait longer."
        ),
    ] = 60.0,
    rpm: Annotated[
        float | None,
        typer.Option("--rpm", min=0.001, help="Requests per minute per endpoint."),
    ] = None,
    tpm: Annotated[
        float | None,
        typer.Option("--tpm", min=1, help="Tokens per minute per endpoint."),
    ] = None,
) -> None:
    """Send one prompt to every persona at once and show the answers side by side.

    Examples:

      fanout ask "What is temperature?"

      fanout ask -a physicist,chemist --synthesize "Why is ice slippery?"

      echo "What is entropy?" | fanout ask --json | jq -r '.output.physicist'

      fanout ask --jsonl "Why?" | jq -c 'select(.type == "agent_finished")'
    """
    from fanout.retry import RetryPolicy
    from fanout.runner import RunSettings

    with _errors_to_exit():
        text = _read_prompt(prompt)
        names = [n.strip() for n in agents.split(",") if n.strip()] if agents else None
        if agents is not None and not names:
            raise ConfigError("--agents: give at least one persona name")
        if json_output and jsonl:
            raise ConfigError("--json and --jsonl: choose one")
        if jsonl_deltas and not jsonl:
            raise ConfigError("--jsonl-deltas goes with --jsonl")
        if output is not None and not output.parent.is_dir():
            raise ConfigError(f"--output: directory {str(output.parent)!r} does not exist")
        settings = RunSettings(
            concurrency=concurrency,
            timeout=timeout,
            retry=RetryPolicy(retries=retries, max_retry_after=max_retry_after),
            rpm=rpm,
            tpm=tpm,
            stream=not no_stream,
        )
        mode = "json" if json_output else "jsonl" if jsonl else "table"
        code = _ask(text, names, config, model, synthesize, mode, jsonl_deltas, output, settings)
    raise typer.Exit(code)


@app.command("agents")
def list_agents(config: ConfigOption = None, json_output: JsonOption = False) -> None:
    """List the panel: name, model, endpoint and description of every persona.

    Example: fanout agents --json | jq -r '.agents[].name'
    """
    from fanout.config import find_config, load_panel

    with _errors_to_exit():
        panel = load_panel(find_config(config, os.environ))
        if json_output:
            from fanout.export import dumps, panel_document

            sys.stdout.write(dumps(panel_document(panel)))
            return
        from fanout.render import agents_table, make_console

        make_console().print(agents_table(panel.agents, panel.synthesizer, panel.source))


def _ask(
    prompt: str,
    names: list[str] | None,
    config: Path | None,
    model: str | None,
    synthesize: bool,
    mode: str,
    deltas: bool,
    output: Path | None,
    settings: RunSettings,
) -> int:
    import anyio

    from fanout.config import apply_model, check_credentials, find_config, load_panel
    from fanout.events import Observer
    from fanout.export import JsonlWriter, dumps, report_document
    from fanout.provider import OpenAIProvider
    from fanout.render import LiveBoard, ProgressDisplay, make_console, render_report
    from fanout.runner import PanelRun, run_interruptibly

    panel = load_panel(find_config(config, os.environ))
    chosen = apply_model(panel.select(names), model)
    synthesizer = apply_model([panel.synthesizer], model)[0] if synthesize else None
    callers = chosen + ([synthesizer] if synthesizer else [])
    check_credentials(callers, os.environ)

    out, err = make_console(), make_console(stderr=True)
    # One display at a time: panes on a terminal, events as lines, or a spinner on stderr.
    display: LiveBoard | ProgressDisplay | None = None
    observer: Observer
    if mode == "jsonl":
        observer = JsonlWriter(sys.stdout, deltas=deltas)
    elif mode == "table" and out.is_terminal and not out.is_dumb_terminal:
        observer = display = LiveBoard(out, chosen)
    else:
        observer = display = ProgressDisplay(err, len(chosen))
    provider = OpenAIProvider()
    provider.prepare(a.endpoint for a in callers)

    async def main() -> RunReport:
        run = PanelRun(
            prompt,
            chosen,
            provider=provider,
            settings=settings,
            synthesizer=synthesizer,
            observer=observer,
        )
        try:
            return await run_interruptibly(run)
        finally:
            with anyio.CancelScope(shield=True):
                await provider.aclose()

    if display is not None:
        with display:
            report = anyio.run(main)
    else:
        report = anyio.run(main)
    document = report_document(report)
    if mode == "json":
        sys.stdout.write(dumps(document))
    elif mode == "table":
        render_report(out, report)
    if output is not None:
        try:
            output.write_text(dumps(document), encoding="utf-8")
        except OSError as exc:
            raise FanoutError(f"--output: cannot write {str(output)!r}: {exc.strerror}") from None
    if report.status == "cancelled":
        err.print("[yellow]interrupted: unfinished personas are marked cancelled[/]")
    return _EXIT_FOR_STATUS[report.status]


def _read_prompt(prompt: str | None) -> str:
    if prompt is None or prompt == "-":
        if prompt is None and sys.stdin.isatty():
            raise ConfigError('no prompt: give one as an argument, e.g. fanout ask "Why?"')
        prompt = sys.stdin.read()
    if not prompt.strip():
        raise ConfigError("the prompt is empty")
    return prompt.strip()


@contextmanager
def _errors_to_exit() -> Iterator[None]:
    """Turn a ``FanoutError`` into its one-line message on stderr and its exit code."""
    try:
        yield
    except FanoutError as exc:
        from fanout.render import make_console, print_error

        print_error(make_console(stderr=True), str(exc))
        raise typer.Exit(exc.exit_code) from None


def main() -> None:
    """Console-script entry point."""
    app()
