"""``fanout eval``: score the panel over a dataset (``fanout eval FILE`` is ``fanout eval run
FILE``), check an eval file, compare two evals, list the recorded ones."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from fanout.cli.app import Command, Group, errors_to_exit
from fanout.cli.flags import (
    adhoc_personas,
    agent_names,
    cache_of,
    check_output,
    panel_names,
    run_settings,
)
from fanout.cli.options import (
    GROUP_BATCH_API,
    GROUP_OUTPUT,
    GROUP_PANEL,
    AgentsOption,
    CacheOption,
    ConcurrencyOption,
    ConfigOption,
    JsonOption,
    MaxCostOption,
    MaxRetryAfterOption,
    ModelOption,
    PersonaOption,
    PollOption,
    RetriesOption,
    RpmOption,
    TimeoutOption,
    TpmOption,
    count_parser,
)
from fanout.errors import ConfigError

if TYPE_CHECKING:
    from typer._click.core import Context

    from fanout.eval import PairPlan

DEFAULT_EVAL_CONCURRENCY = 32
GROUP_PAIRWISE = "Pairwise preference"
SUBCOMMANDS = ("run", "check", "compare", "list")


class _EvalGroup(Group):
    """``fanout eval FILE ...`` runs the eval; ``check``, ``compare`` and ``list`` are the
    other commands (a file named like one of them: ``fanout eval run check``)."""

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        if args and args[0] not in SUBCOMMANDS and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        return list(super().parse_args(ctx, args))


eval_app = typer.Typer(
    cls=_EvalGroup,
    help="Score the panel over a dataset of test cases: pass rates with 95 % intervals, a "
    "rubric grader, pairwise preference, CSV/HTML reports, regressions between evals.",
    no_args_is_help=True,
)
PromptOption = Annotated[
    str | None,
    typer.Option(
        "--prompt",
        metavar="TEMPLATE",
        help="The prompt template ({{var}}) for a CSV or JSONL dataset without a prompt column.",
        rich_help_panel=GROUP_PANEL,
    ),
]


GraderOption = Annotated[
    str | None,
    typer.Option(
        "--grader",
        metavar="NAME",
        rich_help_panel=GROUP_PANEL,
        help="The persona that grades rubrics and judges pairs (default: the eval's grader:, "
        "else the agents file's judge).",
    ),
]
PairwiseOption = Annotated[
    bool,
    typer.Option(
        "--pairwise",
        rich_help_panel=GROUP_PAIRWISE,
        help="A blind judge compares personas' answers per case (both orders): Bradley-Terry "
        "ratings with bootstrap intervals.",
    ),
]
PairsOption = Annotated[
    str,
    typer.Option(
        "--pairs",
        metavar="all|reference|N",
        rich_help_panel=GROUP_PAIRWISE,
        help="Which pairs: every pair, every persona against --reference, or N pairs of the "
        "round robin per case.",
    ),
]
ReferenceOption = Annotated[
    str | None,
    typer.Option(
        "--reference",
        metavar="NAME",
        rich_help_panel=GROUP_PAIRWISE,
        help="With --pairs reference: the persona the others meet (default: the first).",
    ),
]
ReportsOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--output",
        "-o",
        metavar="FILE",
        rich_help_panel=GROUP_OUTPUT,
        help="Write a report, by extension: .csv (a row per case x persona), .html (one "
        "self-contained page) or .json (repeatable).",
    ),
]
DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Show each phase's calls and worst-case cost.")
]
FreshOption = Annotated[
    bool, typer.Option("--fresh", help="Start over instead of carrying on an interrupted eval.")
]
ViaOption = Annotated[
    Literal["direct", "openai-batch"],
    typer.Option(
        "--via",
        rich_help_panel=GROUP_BATCH_API,
        help="openai-batch: the answers through the provider's Batch API (the grader's and "
        "judge's calls are made directly).",
    ),
]


@eval_app.command("run", cls=Command)
def eval_run(
    file: Annotated[Path, typer.Argument(help="EVAL.yaml, or a dataset: .csv or .jsonl.")],
    config: ConfigOption = None,
    agents: AgentsOption = None,
    personas: PersonaOption = None,
    model: ModelOption = None,
    prompt: PromptOption = None,
    grader: GraderOption = None,
    pairwise: PairwiseOption = False,
    pairs: PairsOption = "all",
    reference: ReferenceOption = None,
    json_output: JsonOption = False,
    outputs: ReportsOption = None,
    dry_run: DryRunOption = False,
    fresh: FreshOption = False,
    concurrency: ConcurrencyOption = None,
    retries: RetriesOption = 3,
    timeout: TimeoutOption = 120.0,
    max_retry_after: MaxRetryAfterOption = 60.0,
    rpm: RpmOption = None,
    tpm: TpmOption = None,
    max_cost: MaxCostOption = None,
    cache: CacheOption = None,
    via: ViaOption = "direct",
    poll_interval: PollOption = 30.0,
) -> None:
    """Ask every persona every case of an eval, check the answers, print the scorecard.

    Killed or interrupted, the same command carries on: nothing answered is asked again.

    Examples:

      fanout eval capitals.yaml -c agents.yaml

      fanout eval capitals.yaml --pairwise -o report.html --json

      fanout eval cases.csv --prompt "Translate to French: {{text}}" -a a,b
    """
    from fanout.evalrun import EvalOptions, run_eval

    with errors_to_exit():
        names = panel_names(agent_names(agents, model), adhoc_personas(personas))
        for output in outputs or []:
            check_output(output)
        settings = run_settings(
            concurrency or DEFAULT_EVAL_CONCURRENCY, timeout, retries, max_retry_after, rpm,
            tpm, max_cost,
        )  # fmt: skip
        options = EvalOptions(
            config=config, names=names, personas=adhoc_personas(personas), model=model,
            prompt=prompt, grader=grader,
            pairwise=_pair_plan(pairs, reference) if pairwise else None,
            settings=replace(settings, stream=False, cache=cache_of(cache)),
            outputs=outputs or [],
            json_output=json_output, dry_run=dry_run, fresh=fresh, via=via,
            poll_s=poll_interval,
        )  # fmt: skip
        if not pairwise and (pairs != "all" or reference is not None):
            raise ConfigError("--pairs and --reference go with --pairwise")
        code = run_eval(file, options)
    raise typer.Exit(code)


def _pair_plan(pairs: str, reference: str | None) -> PairPlan:
    from fanout.eval import PairPlan

    if pairs == "all":
        if reference is not None:
            raise ConfigError("--reference goes with --pairs reference")
        return PairPlan("all")
    if pairs == "reference":
        return PairPlan("reference", reference=reference)
    try:
        count = count_parser(1, 1_000_000)(pairs)
    except typer.BadParameter:
        raise ConfigError(f"--pairs: {pairs!r} is not all, reference or a number") from None
    return PairPlan("sample", reference=reference, sample=count)


@eval_app.command("check", cls=Command)
def eval_check(
    file: Annotated[Path, typer.Argument(help="EVAL.yaml, or a dataset: .csv or .jsonl.")],
    prompt: PromptOption = None,
) -> None:
    """Check an eval file without calling anything: one line per problem (file:line: what),
    exit 2 if there is any.

    Example: fanout eval check capitals.yaml
    """
    from fanout.evalrun import check_file

    with errors_to_exit():
        code = check_file(file, prompt)
    raise typer.Exit(code)


@eval_app.command("compare", cls=Command)
def eval_compare(
    before: Annotated[str, typer.Argument(help="The earlier eval: its id or a JSON document.")],
    after: Annotated[str, typer.Argument(help="The later eval: its id or a JSON document.")],
    json_output: JsonOption = False,
) -> None:
    """The cases x personas that got worse and better from one eval to the next. Exit 4 if
    any got worse (a regression check for CI), 0 otherwise.

    Example: fanout eval compare 20261207-101500-ab12cd report.json
    """
    from fanout.evalrun import compare_evals

    with errors_to_exit():
        code = compare_evals(before, after, json_output)
    raise typer.Exit(code)


@eval_app.command("list", cls=Command)
def eval_list(json_output: JsonOption = False) -> None:
    """The recorded evals, newest first: id, file, pass rates."""
    from fanout.evalrun import list_evals

    with errors_to_exit():
        list_evals(json_output)
