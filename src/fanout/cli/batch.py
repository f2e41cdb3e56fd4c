"""``fanout batch``: every prompt of a file x every persona, as JSON lines."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Literal

import typer

from fanout.cli.app import (
    Command,
    app,
    errors_to_exit,
)
from fanout.cli.flags import (
    adhoc_personas,
    agent_names,
    check_output,
    panel_names,
    repeats,
    run_settings,
    shape_of,
)
from fanout.cli.options import (
    DEFAULT_BATCH_CONCURRENCY,
    GROUP_BATCH_API,
    GROUP_LOCAL,
    GROUP_OUTPUT,
    MAX_POLL_S,
    AgentsOption,
    BestOfOption,
    ChoicesOption,
    ConcurrencyOption,
    ConfigOption,
    CouncilOption,
    JudgeOption,
    MapOption,
    MaxCostOption,
    MaxRetryAfterOption,
    ModelOption,
    ParamOption,
    PersonaOption,
    QuorumOption,
    RetriesOption,
    RpmOption,
    SynthesizeOption,
    TimeoutOption,
    TpmOption,
    VoteOption,
    number_parser,
)


@app.command(cls=Command)
def batch(
    file: Annotated[Path, typer.Argument(help='Prompts: .jsonl ({"id", "prompt"}), .txt or .csv.')],
    agents: AgentsOption = None,
    personas: PersonaOption = None,
    config: ConfigOption = None,
    model: ModelOption = None,
    params: ParamOption = None,
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
            parser=number_parser(0.01, MAX_POLL_S, "seconds"),
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
    from fanout import batchrun
    from fanout.params import params_of_flags

    with errors_to_exit():
        names, repeat = repeats(agent_names(agents, model))
        adhoc = adhoc_personas(personas)
        names = panel_names(names, adhoc)
        shape, options = shape_of(
            vote=vote, choices=choices, quorum=quorum, judge=judge, council=council,
            best_of=best_of, repeat=repeat, agreement_map=agreement_map,
        )  # fmt: skip
        if output is not None:
            check_output(output)
        settings = run_settings(
            concurrency or DEFAULT_BATCH_CONCURRENCY, timeout, retries, max_retry_after,
            rpm, tpm, max_cost,
        )  # fmt: skip
        # Nobody watches a batch: whole answers.
        settings = replace(settings, stream=False, params=params_of_flags(params))
        code = batchrun.batch(
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
