"""``fanout shapes`` (the shapes a run can take, and their options) and ``fanout schema`` (the
JSON Schema of the result document): both read from the shapes' registry."""

from __future__ import annotations

import sys

from fanout.cli.app import Command, app, errors_to_exit
from fanout.cli.options import JsonOption


@app.command("shapes", cls=Command)
def list_shapes(json_output: JsonOption = False) -> None:
    """List the shapes a run can take (--shape NAME, or each one's own flag) and the options
    each takes (-O KEY=VALUE, or each one's own flag).

    Example: fanout shapes --json | jq -r '.shapes[].name'
    """
    from fanout.shapes import SHAPES, catalog

    with errors_to_exit():
        if json_output:
            from fanout.export import dumps

            sys.stdout.write(dumps({"shapes": catalog()}))
            return
        from fanout.render import make_console, shapes_table

        make_console().print(shapes_table(list(SHAPES.values())))


@app.command("schema", cls=Command)
def print_schema() -> None:
    """Print the JSON Schema of the result document (ask --json, runs show --json, the
    history, /v1's fanout field), every shape's verdict included.

    Example: fanout schema > fanout.schema.json
    """
    from fanout.export import dumps
    from fanout.schema import document_schema

    with errors_to_exit():
        sys.stdout.write(dumps(document_schema()))
