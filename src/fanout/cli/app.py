"""The root command: ``fanout`` itself, how its errors read, and what every command shares to
end well (one ``fanout: error:`` line and its exit code, SIGTERM as Ctrl-C)."""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup
from typer.models import TyperInfo

from fanout import __version__
from fanout.errors import FanoutError, StdoutClosed


class Command(TyperCommand):
    """A command whose ``--help`` shows no ``<bool>`` beside a switch (Typer's rich help shows
    a type for every option that has no metavar), ``-h, --help`` included."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _quiet_switches(self.params)
        _coerce_when_given(self.params)

    def get_help_option(self, ctx: Any) -> Any:
        return _quiet_switches([super().get_help_option(ctx)])[0]


class Group(TyperGroup):
    """A group of commands, its own switches quiet like ``Command``'s."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _quiet_switches(self.params)
        _coerce_when_given(self.params)

    def get_help_option(self, ctx: Any) -> Any:
        return _quiet_switches([super().get_help_option(ctx)])[0]


def _coerce_when_given(params: list[Any]) -> None:
    """Typer builds a pydantic adapter for every parameter of the command that runs, given
    or not: 31 for ``ask``, a sixth of its launch. A parameter left out (None) needs none."""
    when_given = _when_given()
    if when_given is None:
        return
    for param in params:
        descriptor = getattr(param, "type_descriptor", None)
        if descriptor is not None and getattr(param, "_runtime_param", False) is None:
            param._runtime_param = when_given(
                parameter_info=descriptor.parameter_info,
                annotation=descriptor.annotation,
                descriptor=descriptor,
            )


@cache
def _when_given() -> Any:
    """Typer's coercion of a parameter, built the first time it has a value to coerce (None:
    a Typer without this seam, ``_coercion`` not being public, builds them all as before)."""
    try:
        from typer._coercion import RuntimeParam, build_runtime_param
    except ImportError:  # pragma: no cover
        return None

    @dataclass(frozen=True)
    class WhenGiven(RuntimeParam):
        descriptor: Any = None
        built: list[RuntimeParam] = field(default_factory=list)

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            if not self.built:
                self.built.append(build_runtime_param(self.descriptor))
            return self.built[0]._coerce_value(value, param=param, ctx=ctx)

    return WhenGiven


def _is_choice(param: Any) -> bool:
    """A choice shows its choices (``<direct|openai-batch>``): that says what it takes."""
    return bool(getattr(getattr(param, "type_descriptor", None), "is_choice", False))


def _quiet_switches(params: list[Any]) -> list[Any]:
    """A switch takes no value: no metavar beside it. Every other parameter is named by what
    it takes (``RUN_ID``, ``HOST``; a choice by its choices), never by Typer's type (``<str>``,
    ``<path>``, ``{run_id}``) when its command gives it no metavar of its own."""
    for param in params:
        if getattr(param, "is_flag", False):
            param.metavar = ""
        elif not param.metavar and param.name and not _is_choice(param):
            param.metavar = param.name.upper()
        if param.param_type_name == "argument":
            # Its name says what it takes: no type beside it, and no braces in the usage line
            # (Typer writes a required one as {RUN_ID}); an optional one is [PROMPT].
            shown = param.metavar if param.required else f"[{param.metavar}]"
            param.display_type_rich = lambda ctx: None
            param._usage_display_name = lambda shown=shown: shown
    return params


class _FanoutCommand(Group):
    """The root command. A usage error (an unknown flag, a bad value, a missing argument) ends
    as one ``fanout: error:`` line on stderr like every other error, not click's boxed usage
    text; ``fanout`` and ``fanout runs`` alone show their help on stdout and exit 0."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            # Not standalone: click hands us its errors instead of printing them its way.
            returned = super().main(
                args, prog_name, complete_var, False, windows_expand_args, **extra
            )
            code = returned if isinstance(returned, int) else 0
        except typer.TyperException as exc:  # click's UsageError, BadParameter...
            if type(exc).__name__ == "NoArgsIsHelpError":
                code = 0  # the help was printed on stdout when the error was made
            else:
                say_error(_usage_message(exc))
                code = exc.exit_code
        except typer.Abort:
            say_error("aborted")
            code = 1
        code = _interrupted_or(code)
        if standalone_mode:
            sys.exit(code)
        return code

    def list_commands(self, ctx: Any) -> list[str]:
        for name in COMMANDS:
            self._load(name)
        return [*COMMANDS, *(name for name in self.commands if name not in COMMANDS)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        self._load(cmd_name)
        return super().get_command(ctx, cmd_name)

    def _load(self, name: str) -> None:
        """Import the module that declares the command ``name`` and make its click command
        (Typer makes every command's when the app starts; ``fanout ask`` needs one)."""
        if name in self.commands or name not in COMMANDS:
            return
        module, _, group = COMMANDS[name].partition(":")
        loaded = importlib.import_module(module)
        if group:
            self.commands[name] = typer.main.get_group_from_info(
                TyperInfo(getattr(loaded, group), name=name),
                pretty_exceptions_short=app.pretty_exceptions_short,
                rich_markup_mode=app.rich_markup_mode,
                suggest_commands=app.suggest_commands,
            )
            return
        for info in app.registered_commands:
            callback = info.callback
            if (
                info.name or typer.main.get_command_name(getattr(callback, "__name__", ""))
            ) == name:
                self.commands[name] = typer.main.get_command_from_info(
                    info,
                    pretty_exceptions_short=app.pretty_exceptions_short,
                    rich_markup_mode=app.rich_markup_mode,
                )

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        # `fanout "What is temperature?"` and `fanout why` are `fanout ask ...`, as
        # `llm "..."` is `llm prompt "..."`; `fanout help runs` is `fanout runs --help`.
        names = {**dict.fromkeys(COMMANDS), **self.commands}
        if args and args[0] == "help" and "help" not in names:
            args = [*args[1:2], "--help"]
        elif _is_prompt(args, names):
            near = _near_miss(args[0], names)
            if near is not None:
                ctx.fail(
                    f"No such command '{args[0]}': did you mean {near}? To ask it, "
                    f"fanout ask {args[0]}"
                )
            args = ["ask", *args]
        return list(super().parse_args(ctx, args))


def _interrupted_or(code: int) -> int:
    """A signal came while the command ran (however it ended): it was interrupted, 130."""
    from fanout.interrupt import EXIT_INTERRUPTED, requested

    return EXIT_INTERRUPTED if requested() and code != EXIT_PIPE else code


_ROOT_OPTIONS = ("-h", "--help", "--version")
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def _is_prompt(args: Sequence[str], commands: Mapping[str, Any]) -> bool:
    """Whether the command line is a question for ``ask`` rather than a subcommand: it starts
    with an option of ``ask``'s, or with anything but a command's name."""
    if not args:
        return False
    first = args[0]
    if first.startswith("-") and first != "-":
        return first.split("=")[0] not in _ROOT_OPTIONS
    return first not in commands


def _near_miss(word: str, commands: Mapping[str, Any]) -> str | None:
    """The command a bare word is a typo of (one letter wrong, missing, extra or two swapped;
    two in a word of six letters or more), if one is: ``fanout runz`` is not a question."""
    if not _WORD.fullmatch(word):
        return None
    word = word.lower()
    allowed = 2 if len(word) >= 6 else 1
    found = [(_typos(word, name), name) for name in commands if not name.startswith("_")]
    close = sorted((typos, name) for typos, name in found if typos <= allowed)
    return close[0][1] if close else None


def _typos(a: str, b: str) -> int:
    """Edits from ``a`` to ``b``: a letter changed, added or dropped, or two swapped."""
    before: list[int] = []
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            cost = min(row[j] + 1, current[j - 1] + 1, row[j - 1] + (x != y))
            if i > 1 and j > 1 and x == b[j - 2] and a[i - 2] == y:
                cost = min(cost, before[j - 2] + 1)
            current.append(cost)
        before, row = row, current
    return row[-1]


def _usage_message(exc: typer.TyperException) -> str:
    """Click's message, with the command whose ``--help`` explains it."""
    message = exc.format_message()
    bad = exc.param if isinstance(exc, typer.BadParameter) else None
    if bad is not None and bad.param_type_name == "option" and "Invalid value" in message:
        # "--rpm: '0' is not ...", worded as fanout's own errors are
        message = f"{' / '.join(bad.opts)}: {exc.message}"
    # Typer words a choice's error as pydantic does ("Value error, 'x' is not one of ..."),
    # and a missing choice over several lines ("Choose from:\n\tperfetto,\n\thtml").
    message = message.strip().rstrip(".").replace("Value error, ", "")
    choices = re.search(r"\.?\s*Choose from:\s*(.*)", message, re.DOTALL)
    if choices:
        names = [c.strip(" ,.\t\n") for c in re.split(r",\s*", choices[1])]
        message = message[: choices.start()] + ": one of " + ", ".join(f"'{n}'" for n in names if n)
    ctx = getattr(exc, "ctx", None)
    command = getattr(ctx, "command_path", None)
    return f"{message} (see '{command} --help')" if command else message


def say_error(message: str) -> None:
    from fanout.render import make_console, print_error

    print_error(make_console(stderr=True), _printable(message))


def _printable(message: str) -> str:
    """The error as one printable line: a value typed on the command line can hold line
    breaks, control characters or bytes that are not UTF-8 (surrogates), shown escaped."""
    text = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


# Every command at the root, by the module that declares it (a group's as module:its Typer), in
# the order --help lists them. A command's module loads when the command runs: Typer would
# import and convert all of them to start any one (a sixth of `fanout ask`'s launch).
COMMANDS: dict[str, str] = {
    "ask": "fanout.cli.ask",
    "agents": "fanout.cli.ask",
    "init": "fanout.cli.ask",
    "batch": "fanout.cli.batch",
    "models": "fanout.cli.catalog",
    "chat": "fanout.cli.chat",
    "serve": "fanout.cli.serve",
    "shapes": "fanout.cli.shapes",
    "schema": "fanout.cli.shapes",
    "runs": "fanout.cli.runs:runs_app",
    "flow": "fanout.cli.flow:flow_app",
    "eval": "fanout.cli.eval:eval_app",
    "cache": "fanout.cli.cache:cache_app",
}

app = typer.Typer(
    name="fanout",
    cls=_FanoutCommand,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="""Examples:

  fanout "What is temperature?"
  fanout ask -a physicist,chemist -s "Why is ice slippery?"
  fanout ask -p "pirate=You answer like a pirate" "Why is the sea salty?"
  fanout ask --help     every flag of ask, in groups""",
)

EXIT_PIPE = 141  # stdout closed by its reader: what a death by SIGPIPE would give


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fanout {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """Ask a panel of LLM personas one question at once and compare their answers.

    Example: fanout "What is temperature?" -a physicist -a chemist (short for fanout ask ...)
    """


@contextmanager
def errors_to_exit() -> Iterator[None]:
    """Turn a ``FanoutError`` into its one-line message on stderr and its exit code; a reader
    that closed our stdout (``| head``) ends the command quietly, as SIGPIPE would."""
    try:
        yield
    except FanoutError as exc:
        say_error(str(exc))
        raise typer.Exit(exc.exit_code) from None
    except StdoutClosed:
        raise typer.Exit(EXIT_PIPE) from None
    except ExceptionGroup as group:
        # A task group gathers the error a run failed on with what it broke on the way out
        # (a closed stream): the FanoutError among them is the one to say, unless the reader
        # of stdout left (a batch writing lines as they come). A group holding a cancellation
        # or a Ctrl-C is a BaseExceptionGroup and is never caught here.
        if group.subgroup(StdoutClosed) is not None:
            raise typer.Exit(EXIT_PIPE) from None
        cause = _first_fanout_error(group)
        if cause is None:
            raise
        say_error(str(cause))
        raise typer.Exit(cause.exit_code) from None


def _first_fanout_error(group: BaseExceptionGroup[BaseException]) -> FanoutError | None:
    for exc in group.exceptions:
        if isinstance(exc, FanoutError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first_fanout_error(exc)
            if found is not None:
                return found
    return None


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM acts as Ctrl-C from the moment a command starts (``fanout.interrupt``; the
    ``fanout`` command has them from its first line): noted while the command loads, so a
    ``checkpoint()`` or the run's loop ends it as a cancelled run, never a traceback."""
    from fanout.interrupt import handled

    with handled():
        yield
