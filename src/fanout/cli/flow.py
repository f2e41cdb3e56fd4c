"""``fanout flow``: run and check flow files."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from fanout.cli.app import (
    Command,
    Group,
    errors_to_exit,
    terminate_as_interrupt,
)
from fanout.cli.flags import (
    output_of,
    run_settings,
)
from fanout.cli.options import (
    DEFAULT_ASK_CONCURRENCY,
    GROUP_COST,
    GROUP_OUTPUT,
    GROUP_PANEL,
    ConcurrencyOption,
    ConfigOption,
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
    RetriesOption,
    RpmOption,
    TimeoutOption,
    TpmOption,
)
from fanout.errors import ConfigError

flow_app = typer.Typer(
    cls=Group,
    help="Flows: multi-stage pipelines in YAML (research, then draft, then review...).",
    no_args_is_help=True,
)
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


@flow_app.command("run", cls=Command)
def flow_run(
    flow: FlowArgument,
    inputs: InputOption = None,
    config: ConfigOption = None,
    model: ModelOption = None,
    params: ParamOption = None,
    json_output: JsonOption = False,
    jsonl: JsonlOption = False,
    jsonl_deltas: JsonlDeltasOption = False,
    view: FormatOption = None,
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
    from fanout.params import params_of_flags

    with errors_to_exit(), terminate_as_interrupt():
        out = output_of(json_output, jsonl, jsonl_deltas, output, view)
        if model is not None and not model.strip():
            raise ConfigError("--model: give a model name")
        settings = run_settings(
            concurrency or DEFAULT_ASK_CONCURRENCY, timeout, retries, max_retry_after,
            rpm, tpm, max_cost,
        )  # fmt: skip
        code = session.flow_run(
            flow,
            given=parse_inputs(inputs or []),
            config=config,
            model=model,
            settings=replace(settings, stream=stream, params=params_of_flags(params)),
            output=out,
            dry_run=dry_run,
            log=not no_log,
        )
    raise typer.Exit(code)


@flow_app.command("check", cls=Command)
def flow_check(flow: FlowArgument, config: ConfigOption = None) -> None:
    """Check a flow file without calling anyone: keys, personas, references, inputs, cycles.
    A problem is one line naming the file and line (exit 2).

    Example: fanout flow check examples/research-write-review.yaml
    """
    from fanout import session

    with errors_to_exit():
        typer.echo(session.flow_check(flow, config=config))
