"""``fanout models``: what each endpoint of the panel serves."""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated

import typer

from fanout.cli.app import Command, app, errors_to_exit
from fanout.cli.options import MAX_SECONDS, ConfigOption, JsonOption, number_parser


@app.command("models", cls=Command)
def models(
    config: ConfigOption = None,
    json_output: JsonOption = False,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            metavar="SECONDS",
            parser=number_parser(0.001, MAX_SECONDS, "seconds"),
            help="Seconds to wait for each endpoint's list.",
        ),
    ] = 10.0,
) -> None:
    """List what each endpoint of the panel serves, and which are unreachable.

    Every endpoint the personas, the synthesizer, the declared roles and their fallbacks use
    is asked at once (GET /v1/models). Exit 0 when every one answered, 3 when some did, 1
    when none did.

    Example: fanout models --json | jq '.endpoints[] | select(.reachable | not)'
    """
    from fanout.config import find_config, load_panel

    with errors_to_exit():
        import anyio

        from fanout.catalog import exit_code, list_endpoints, listing_text, panel_endpoints

        panel = load_panel(find_config(config, os.environ))
        endpoints = panel_endpoints(panel)
        anyio.run(lambda: list_endpoints(endpoints, os.environ, timeout))
        if json_output:
            document = {"source": panel.source, "endpoints": [e.document() for e in endpoints]}
            sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
        else:
            sys.stdout.write(listing_text(endpoints))
    raise typer.Exit(exit_code(endpoints))
