"""``fanout chat``: a conversation with a panel, a question a line."""

from __future__ import annotations

import sys

import typer

from fanout.cli.app import Command, app, errors_to_exit, terminate_as_interrupt
from fanout.cli.flags import (
    adhoc_personas,
    agent_names,
    output_of,
    panel_names,
    repeats,
    run_settings,
)
from fanout.cli.options import (
    DEFAULT_ASK_CONCURRENCY,
    AgentsOption,
    ConfigOption,
    ContinueOption,
    ConversationOption,
    FormatOption,
    JsonOption,
    MaxCostOption,
    ModelOption,
    NoLogOption,
    PersonaOption,
    RetriesOption,
    TimeoutOption,
)
from fanout.cli.shaping import shape_from_flags, with_repeat, with_shape_flags

CHAT_EXAMPLES = """Examples:

  fanout chat -a physicist,chemist -s
  fanout chat --continue
  printf 'What is temperature?\\nAnd at absolute zero?\\n' | fanout chat -a physicist"""


@app.command("chat", cls=Command, epilog=CHAT_EXAMPLES)
@with_shape_flags(after="model")
def chat(
    agents: AgentsOption = None,
    personas: PersonaOption = None,
    config: ConfigOption = None,
    model: ModelOption = None,
    continue_: ContinueOption = False,
    conversation: ConversationOption = None,
    json_output: JsonOption = False,
    view: FormatOption = None,
    retries: RetriesOption = 3,
    timeout: TimeoutOption = 120.0,
    max_cost: MaxCostOption = None,
    no_log: NoLogOption = False,
    **shape_flags: object,  # --shape, -O and each shape's and option's own flag (cli.shaping)
) -> None:
    """Talk with the panel: each line is a question, each persona keeps its own thread.

    Lines starting with / are commands (/help lists them: /agents, /shape, /show, /save,
    /quit...). Piped, each line of stdin is one turn.
    """
    with errors_to_exit(), terminate_as_interrupt():
        from fanout.chat import Chat, run_chat

        names, repeat = repeats(agent_names(agents, model))
        adhoc = adhoc_personas(personas)
        shape, options = with_repeat(*shape_from_flags(shape_flags), repeat)
        settings = run_settings(
            DEFAULT_ASK_CONCURRENCY, timeout, retries, 60.0, None, None, max_cost
        )
        talk = Chat(
            config=config,
            names=panel_names(names, adhoc),
            personas=adhoc,
            model=model,
            synthesize=bool(options.get("synthesize")),
            shape=shape,
            options=dict(options),
            settings=settings,
            output=output_of(json_output, False, False, None, view),
            log=not no_log,
        )
        if continue_ or conversation is not None:
            talk.take_up(conversation)
        talk.check()
        code = run_chat(talk, interactive=sys.stdin.isatty())
    raise typer.Exit(code)
