"""``fanout serve``: the HTTP server (the ``serve`` extra)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from fanout.cli.app import (
    Command,
    app,
    errors_to_exit,
)
from fanout.cli.options import (
    MAX_LIMIT,
    ConfigOption,
    count_parser,
)
from fanout.errors import ConfigError


@app.command(cls=Command)
def serve(
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on; any but loopback needs --token.")
    ] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option(
            "--port",
            "-p",
            metavar="N",
            parser=count_parser(0, 65535),
            help="Port (0: any free one).",
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
            parser=count_parser(1, MAX_LIMIT),
            help="Most runs in flight; more get a 429.",
        ),
    ] = 16,
    flows: Annotated[
        Path | None,
        typer.Option(
            "--flows",
            metavar="DIR",
            help="Offer the flow files of this folder: a request names one as options.flow.",
        ),
    ] = None,
) -> None:
    """Serve the panel over HTTP: a runs API, an OpenAI-compatible model, a live dashboard.

    Needs the serve extra (Starlette, uvicorn). Runs go into the same history as `fanout ask`.

    Examples:

      fanout serve                      # then open http://127.0.0.1:8080/

      curl -d 'What is temperature?' -H 'content-type: text/plain' localhost:8080/api/runs

      FANOUT_SERVE_TOKEN=... fanout serve --host 0.0.0.0
    """
    from fanout.config import find_config, load_panel

    with errors_to_exit():
        try:  # starlette and uvicorn load only for this command
            from fanout.serve import serve as run_server
        except ImportError as exc:
            raise ConfigError(
                f"fanout serve needs {exc.name or 'its extra'}: pip install 'fanout[serve]'"
            ) from None
        panel = load_panel(find_config(config, os.environ))
        if flows is not None and not flows.is_dir():
            raise ConfigError(f"--flows: {str(flows)!r} is not a folder")
        run_server(
            panel, host=host, port=port, token=token, cors=cors, max_runs=max_runs, flows=flows
        )
