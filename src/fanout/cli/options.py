"""The flags several commands share, their groups in ``--help``, and the bounded parsers of
their numbers (a bad value is one line naming the flag and the value as typed)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

import typer

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


def number_parser(low: float, high: float, unit: str = "") -> Callable[[str | float], float]:
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


def count_parser(low: int, high: int) -> Callable[[str | float], int]:
    """The parser of a flag's whole number, bounded like ``number_parser``'s."""
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
GROUP_SHAPE_OPTIONS = "Shape options"
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
ParamOption = Annotated[
    list[str] | None,
    typer.Option(
        "--param",
        metavar="KEY=VALUE",
        help="A request field for every persona of this run, typed from its value: --param "
        "seed=42, --param reasoning_effort=low, --param 'stop=[\"END\"]' (repeatable).",
        show_default=False,
        rich_help_panel=GROUP_PANEL,
    ),
]
FileOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--file",
        "-f",
        metavar="PATH",
        help="Send a file to every persona with the question (repeatable): an image as an "
        "image, a PDF as its text (fanout\\[pdf]), any other text fenced with its name.",
        show_default=False,
        rich_help_panel=GROUP_PANEL,
    ),
]
PollOption = Annotated[
    float,
    typer.Option(
        "--poll-interval",
        metavar="SECONDS",
        parser=number_parser(0.01, MAX_POLL_S, "seconds"),
        help="Seconds between Batch API status checks.",
        rich_help_panel=GROUP_BATCH_API,
    ),
]
CacheOption = Annotated[
    bool | None,
    typer.Option(
        "--cache/--no-cache",
        help="Answer identical requests from the local response cache (and keep complete "
        "answers in it). Default: off, or on with FANOUT_CACHE=1.",
        show_default=False,
        rich_help_panel=GROUP_COST,
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
MaxCostOption = Annotated[
    float | None,
    typer.Option(
        "--max-cost",
        metavar="USD",
        parser=number_parser(0, MAX_COST_USD, "USD"),
        help="Budget in USD: a call whose worst case could break it is not made.",
        rich_help_panel=GROUP_COST,
    ),
]
ConcurrencyOption = Annotated[
    int | None,
    typer.Option(
        "--concurrency",
        metavar="N",
        parser=count_parser(1, MAX_CONCURRENCY),
        help="Most calls in flight at once (ask: 256, each endpoint also bounded by its own "
        "concurrency:/rpm:/tpm:; batch: 8).",
        show_default=False,
        rich_help_panel=GROUP_LIMITS,
    ),
]
DEFAULT_ASK_CONCURRENCY = 256  # every call of a stage at once, within each endpoint's limits
DEFAULT_BATCH_CONCURRENCY = 8  # a batch keeps a bounded window of prompts in progress
RetriesOption = Annotated[
    int,
    typer.Option(
        "--retries",
        metavar="N",
        parser=count_parser(0, MAX_RETRIES),
        help="Retries per persona after a failed attempt.",
        rich_help_panel=GROUP_LIMITS,
    ),
]
TimeoutOption = Annotated[
    float,
    typer.Option(
        "--timeout",
        metavar="SECONDS",
        parser=number_parser(0.001, MAX_SECONDS, "seconds"),
        help="Per attempt; a persona's own timeout: wins.",
        rich_help_panel=GROUP_LIMITS,
    ),
]
MaxRetryAfterOption = Annotated[
    float,
    typer.Option(
        "--max-retry-after",
        metavar="SECONDS",
        parser=number_parser(0, MAX_SECONDS, "seconds"),
        help="Fail at once if a server asks to wait longer.",
        rich_help_panel=GROUP_LIMITS,
    ),
]
RpmOption = Annotated[
    float | None,
    typer.Option(
        "--rpm",
        metavar="RATE",
        parser=number_parser(0.001, MAX_RPM, "requests a minute"),
        help="Requests per minute to each endpoint (0.5: one every two minutes).",
        rich_help_panel=GROUP_LIMITS,
    ),
]
TpmOption = Annotated[
    float | None,
    typer.Option(
        "--tpm",
        metavar="RATE",
        parser=number_parser(1, MAX_TPM, "tokens a minute"),
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

# `--continue` takes no value: an optional value would swallow the question that follows it
# (`fanout ask --continue "And then?"`). A conversation is named with --conversation ID, as
# llm has -c and --cid.
ContinueOption = Annotated[
    bool,
    typer.Option(
        "--continue",
        help="Carry on the last run's conversation: each persona is sent the earlier "
        "questions and its own earlier answers.",
        rich_help_panel=GROUP_HISTORY,
    ),
]
ConversationOption = Annotated[
    str | None,
    typer.Option(
        "--conversation",
        metavar="ID",
        help="Carry on this conversation: its id, or any of its runs' (a unique prefix).",
        show_default=False,
        rich_help_panel=GROUP_HISTORY,
    ),
]
