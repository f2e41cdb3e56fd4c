"""``fanout batch``: every prompt of a file x every persona, as JSON lines."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

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
    check_output,
    panel_names,
    repeats,
    run_settings,
    with_request_flags,
)
from fanout.cli.options import (
    DEFAULT_BATCH_CONCURRENCY,
    GROUP_BATCH_API,
    GROUP_LOCAL,
    GROUP_OUTPUT,
    AgentsOption,
    CacheOption,
    ConcurrencyOption,
    ConfigOption,
    FileOption,
    MaxCostOption,
    MaxRetryAfterOption,
    ModelOption,
    ParamOption,
    PersonaOption,
    PollOption,
    RetriesOption,
    RpmOption,
    TimeoutOption,
    TpmOption,
)
from fanout.cli.shaping import shape_from_flags, with_repeat, with_shape_flags
from fanout.interrupt import EXIT_INTERRUPTED, checkpoint


@app.command(cls=Command)
@with_shape_flags(after="model")
def batch(
    file: Annotated[Path, typer.Argument(help='Prompts: .jsonl ({"id", "prompt"}), .txt or .csv.')],
    agents: AgentsOption = None,
    personas: PersonaOption = None,
    config: ConfigOption = None,
    model: ModelOption = None,
    params: ParamOption = None,
    files: FileOption = None,
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
    cache: CacheOption = None,
    via: Annotated[
        Literal["direct", "openai-batch"],
        typer.Option(
            "--via",
            help="direct: fanout makes the calls; openai-batch: hand the job to the provider's "
            "Batch API (half price, results within 24 h; resumable by batch id).",
            rich_help_panel=GROUP_BATCH_API,
        ),
    ] = "direct",
    poll_interval: PollOption = 30.0,
    local: Annotated[
        bool,
        typer.Option(
            "--local",
            help="Answer with the model on this machine (needs fanout\\[local]).",
            rich_help_panel=GROUP_LOCAL,
        ),
    ] = False,
    **shape_flags: object,  # --shape, -O and each shape's and option's own flag (cli.shaping)
) -> None:
    """Ask every persona every prompt of a file; one JSON line per answer as it completes.

    Examples:

      fanout batch questions.txt -o answers.jsonl

      fanout batch prompts.jsonl -a physicist,chemist --rpm 500 -o out.jsonl

      fanout batch questions.txt --vote --choices "yes,no" -o votes.jsonl
    """
    with errors_to_exit(), terminate_as_interrupt():
        try:
            checkpoint()
            from fanout import batchrun

            names, repeat = repeats(agent_names(agents, model))
            adhoc = adhoc_personas(personas)
            names = panel_names(names, adhoc)
            shape, options = with_repeat(*shape_from_flags(shape_flags), repeat)
            if output is not None:
                check_output(output)
            settings = run_settings(
                concurrency or DEFAULT_BATCH_CONCURRENCY, timeout, retries, max_retry_after,
                rpm, tpm, max_cost,
            )  # fmt: skip
            # Nobody watches a batch: whole answers.
            settings = with_request_flags(
                settings, params=params, cache=cache, files=files, stream=False
            )
            code = batchrun.batch(
                file,
                names=names,
                personas=adhoc,
                config=config,
                model=model,
                synthesize=bool(options.get("synthesize")),
                settings=settings,
                output=output,
                via=via,
                poll_s=poll_interval,
                local=local,
                shape=shape,
                options=options,
            )
        except KeyboardInterrupt:  # before the first prompt was asked: nothing written
            from fanout.render import make_console, print_warning

            print_warning(make_console(stderr=True), "interrupted before the batch started")
            code = EXIT_INTERRUPTED
    raise typer.Exit(code)
