"""``fanout serve``: the HTTP server (the ``serve`` extra)."""

from __future__ import annotations

import os
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
    context: typer.Context,
    host: Annotated[
        str,
        typer.Option(
            "--host",
            metavar="ADDRESS",
            help="Address to listen on; any but loopback needs --token.",
        ),
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
            metavar="TOKEN",
            envvar="FANOUT_SERVE_TOKEN",
            help="Clients must send Authorization: Bearer <token> (all routes but /healthz). "
            "Other users can read a flag in ps: prefer the FANOUT_SERVE_TOKEN variable.",
            show_default=False,
        ),
    ] = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host",
            metavar="NAME",
            help="A host name clients may use for this server, beside localhost and its "
            "addresses (repeatable); requests naming any other host are refused.",
            show_default=False,
        ),
    ] = None,
    cors: Annotated[
        str | None,
        typer.Option(
            "--cors",
            metavar="ORIGIN",
            help="Let pages of this origin call the server (no CORS headers without it); "
            "'*' needs --token.",
        ),
    ] = None,
    max_runs: Annotated[
        int,
        typer.Option(
            "--max-runs",
            metavar="N",
            parser=count_parser(1, MAX_LIMIT),
            help="Most runs executing at once; more wait for a slot (Pending).",
        ),
    ] = 64,
    max_queued: Annotated[
        int,
        typer.Option(
            "--max-queued",
            metavar="N",
            parser=count_parser(0, MAX_LIMIT),
            help="Most runs waiting for a slot; more get a 429 with Retry-After.",
        ),
    ] = 1024,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            metavar="N",
            parser=count_parser(1, 64),
            help="Processes answering (each any run's status, events, terminate and purge: "
            "they share the history); --max-runs and --max-queued are per worker.",
        ),
    ] = 1,
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
            from fanout.serve.guard import check_token
        except ImportError as exc:
            raise ConfigError(
                f"fanout serve needs {exc.name or 'its extra'}: pip install 'fanout[serve]'"
            ) from None
        check_token(token)
        source = context.get_parameter_source("token")
        if token is not None and source is not None and source.name == "COMMANDLINE":
            typer.echo(
                "fanout serve: warning: --token can be read by other users of this machine "
                "(ps); prefer FANOUT_SERVE_TOKEN",
                err=True,
            )
        panel = load_panel(find_config(config, os.environ))
        run_server(
            panel,
            host=host,
            port=port,
            token=token,
            cors=cors,
            max_runs=max_runs,
            max_queued=max_queued,
            workers=workers,
            allowed_hosts=allowed_host or (),
        )
