"""The command line's side of conversations: ``fanout ask --continue`` / ``--conversation``,
and the ``fanout chat`` loop.

Each turn is an ``ask`` (the live board, then the comparison; recorded in the history) with the
conversation so far on its request, so each persona is sent its own thread. A continued
conversation asks the personas of its last turn, plus those named with ``-a``/``-p`` (they join
with the earlier questions only). In ``chat``, a line is a turn and a line starting with ``/`` a
command; on a terminal the prompt line has Python's readline editing and a history of its own
(``chat_history`` beside the run history), and piped lines are read one turn each, so a chat can
be scripted.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fanout.conversation import (
    Transcript,
    later_turns,
    load_transcript,
    transcript_before,
    transcript_of,
)
from fanout.errors import ConfigError, FanoutError
from fanout.event import Event, RunFinished
from fanout.export import report_from_document
from fanout.history import RunFilter
from fanout.models import RunReport

if TYPE_CHECKING:
    from fanout.engine import RunSettings
    from fanout.history import History
    from fanout.output import Output
    from fanout.record import AgentRecord

CHAT_HISTORY = "chat_history"  # the prompt line's own history, beside history.db
CHAT_HISTORY_LINES = 1000
HELP = """Commands (anything else is a question for the panel):
  /agents [A,B]      who is asked next (no names: show them)
  /shape [NAME]      the shape of the next turns: panel, vote, judge, council... (no name: show)
  /synthesize        synthesis of the answers on or off
  /show              the conversation so far
  /save FILE         save it: Markdown, or the turns' documents as JSON for FILE.json
  /new               start a new conversation
  /help              this list
  /quit              leave (Ctrl-D too)"""


@dataclass(frozen=True)
class Continued:
    """Who a continued conversation asks: the conversation, the personas (those of its last
    turn, then the ones named now) and the ``-p`` personas to add to the panel (those named
    now, and earlier turns' personas the agents file does not have)."""

    conversation: Transcript
    names: list[str] | None
    personas: list[tuple[str, str]]


def continued(
    reference: str | None,
    names: Sequence[str] | None,
    personas: Sequence[tuple[str, str]],
    config: Path | None,
) -> Continued:
    """``ask --continue`` (``reference`` None: the last run's conversation) or
    ``--conversation ID``: the conversation and who is asked."""
    from fanout.drive import open_history

    with open_history() as history:
        conversation = load_transcript(history, reference)
        last = conversation.turns[-1].run_id if conversation.turns else None
        recorded = history.load(last).agents if last else []
    return _with_earlier(conversation, recorded, names, personas, config)


def _with_earlier(
    conversation: Transcript,
    recorded: Sequence[AgentRecord],
    names: Sequence[str] | None,
    personas: Sequence[tuple[str, str]],
    config: Path | None,
) -> Continued:
    from fanout.config import find_config, load_panel

    panel = load_panel(find_config(config, os.environ))
    known = {a.name.casefold() for a in panel.agents} | {n.casefold() for n, _ in personas}
    added = [
        (str(a["name"]), str(a.get("instructions") or ""))
        for a in recorded
        if str(a["name"]).casefold() not in known
    ]
    earlier = [str(a["name"]) for a in recorded]
    asked = list(dict.fromkeys([*earlier, *(names or [])]))
    return Continued(conversation, asked or None, [*personas, *added])


class _Keeper:
    """Hears the run's end: the report a turn adds to the conversation."""

    def __init__(self) -> None:
        self.report: RunReport | None = None

    def handle(self, event: Event) -> None:
        if isinstance(event, RunFinished):
            self.report = event.report


@dataclass
class Chat:
    """A ``fanout chat``: what the next turn asks, and the turns so far."""

    config: Path | None
    names: list[str] | None
    personas: list[tuple[str, str]]
    model: str | None
    synthesize: bool
    shape: str
    options: dict[str, object]
    settings: RunSettings
    output: Output
    log: bool = True
    reports: list[RunReport] = field(default_factory=list)
    conversation_id: str = ""
    code: int = 0  # the last turn's (or error's) exit code that was not 0

    @property
    def transcript(self) -> Transcript | None:
        if not self.reports:
            return None
        return transcript_of(self.reports, self.conversation_id)

    def take_up(self, reference: str | None) -> None:
        """Carry on a conversation from the history (``--continue``/``--conversation``)."""
        from fanout.drive import open_history

        with open_history() as history:
            conversation = load_transcript(history, reference)
            documents = history.conversation(conversation.id)
            last = documents[-1]["run_id"] if documents else None
            recorded = history.load(str(last)).agents if last else []
        given = _with_earlier(conversation, recorded, self.names, self.personas, self.config)
        self.names, self.personas = given.names, given.personas
        self.reports = [report_from_document(d) for d in documents]
        self.conversation_id = conversation.id
        asked = ", ".join(self.names or []) or "the whole panel"
        _aside(f"conversation {conversation.id}, after turn {conversation.turn - 1}: {asked}")

    def check(self) -> None:
        """What every turn would refuse (a shape its personas cannot run, a name the panel
        does not have, an unpriced model under --max-cost), said before any question is read:
        ``ConfigError``."""
        from fanout.api import resolve
        from fanout.session import ask_request

        resolve(
            ask_request(
                "?", names=self.names, personas=self.personas, config=self.config,
                model=self.model, synthesize=self.synthesize, settings=self.settings,
                shape=self.shape, options=dict(self.options),
            )
        )  # fmt: skip

    def ask(self, question: str) -> int:
        """One turn: asked, shown, recorded and added to the conversation."""
        from fanout import session

        keeper = _Keeper()
        code = session.ask(
            question,
            names=self.names,
            personas=self.personas,
            config=self.config,
            model=self.model,
            synthesize=self.synthesize,
            settings=self.settings,
            output=self.output,
            log=self.log,
            shape=self.shape,
            options=dict(self.options),
            conversation=self.transcript,
            observers=[keeper],
        )
        if keeper.report is not None:
            self.reports.append(keeper.report)
            self.conversation_id = keeper.report.conversation_id or keeper.report.run_id
        return code


# -- the loop ------------------------------------------------------------------------------


def run_chat(chat: Chat, *, interactive: bool) -> int:
    """Read lines until ``/quit`` or the end of input: each a turn or a command. The exit
    code: 0, or the last turn's (or mistake's) that was not."""
    from fanout.output import EXIT_INTERRUPTED

    for line in _lines(interactive, lambda: len(chat.reports) + 1):
        text = line.strip()
        if not text:
            continue
        try:
            if text.startswith("/"):
                if not command(chat, text):
                    break
                continue
            if not interactive and chat.output.mode == "table":
                _say_question(text)
            code = chat.ask(text)
        except FanoutError as exc:
            code = _error(exc)
        chat.code = code or chat.code
        if code == EXIT_INTERRUPTED and not interactive:
            break  # a script interrupted stops there
    return chat.code


def _error(exc: FanoutError) -> int:
    from fanout.render import make_console, print_warning

    print_warning(make_console(stderr=True), f"fanout: error: {exc}")
    return 2 if isinstance(exc, ConfigError) else 1


def _say_question(text: str) -> None:
    """Piped, each turn's answers come under its question (Markdown)."""
    from fanout.output import write_stdout

    write_stdout(f"# {' '.join(text.split())}\n\n")


def _lines(interactive: bool, turn: Callable[[], int]) -> Iterator[str]:
    """The lines to act on: typed at a prompt (with editing and a history), or piped in."""
    if not interactive:
        yield from sys.stdin
        return
    saved = _prompt_history()
    try:
        while True:
            try:
                yield input(f"{turn()}> ")
            except KeyboardInterrupt:  # at the prompt: a new line, as shells do
                print(file=sys.stderr)
            except EOFError:
                print(file=sys.stderr)
                return
    finally:
        saved()


def _prompt_history() -> Callable[[], None]:
    """Load the prompt line's history (readline: editing, arrows, Ctrl-R); how to save it."""
    try:
        import readline
    except ImportError:  # no readline (Windows): a plain prompt
        return lambda: None
    from fanout.history import history_path

    path = history_path(os.environ).with_name(CHAT_HISTORY)
    with suppress(OSError):  # none yet
        readline.read_history_file(path)
    readline.set_history_length(CHAT_HISTORY_LINES)

    def save() -> None:
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            readline.write_history_file(path)
            os.chmod(path, 0o600)  # questions are private, as the run history is
        except OSError:
            pass

    return save


# -- commands ------------------------------------------------------------------------------


def command(chat: Chat, text: str) -> bool:
    """Act on a ``/command``; False to leave. A mistake is a ``ConfigError``."""
    name, _, rest = text[1:].partition(" ")
    rest = rest.strip()
    if name in ("quit", "exit", "q"):
        return False
    handler = COMMANDS.get(name)
    if handler is None:
        raise ConfigError(f"unknown command /{name} (/help lists them)")
    handler(chat, rest)
    return True


def _help(chat: Chat, rest: str) -> None:
    _aside(HELP)


def _agents(chat: Chat, rest: str) -> None:
    from fanout.config import find_config, load_panel

    panel = load_panel(find_config(chat.config, os.environ)).with_personas(chat.personas)
    if rest:
        names = [n.strip() for n in rest.split(",") if n.strip()]
        chat.names = [a.name for a in panel.select(names)]  # an unknown name is an error
    asked = panel.select(chat.names)
    _aside("asked next: " + ", ".join(a.name for a in asked))


def _shape(chat: Chat, rest: str) -> None:
    from fanout.shapes import SHAPES, build_plan

    if rest:
        options = {"synthesize": chat.synthesize}
        build_plan(rest, options)  # an unknown shape, or one that needs more, is an error
        chat.shape, chat.options = rest, {}
    _aside(f"shape: {chat.shape} (shapes: {', '.join(SHAPES)})")


def _synthesize(chat: Chat, rest: str) -> None:
    wanted = {"on": True, "off": False, "": not chat.synthesize}
    if rest not in wanted:
        raise ConfigError("/synthesize takes on, off or nothing (to switch)")
    chat.synthesize = wanted[rest]
    _aside(f"synthesis: {'on' if chat.synthesize else 'off'}")


def _show(chat: Chat, rest: str) -> None:
    from fanout.output import write_stdout

    write_stdout(conversation_text(chat.reports) or "(no turn yet)\n")


def _save(chat: Chat, rest: str) -> None:
    from fanout.export import dumps
    from fanout.files import write_whole

    if not rest:
        raise ConfigError("/save FILE: name a file (FILE.json for the documents)")
    path = Path(rest).expanduser()
    if path.suffix == ".json":
        text = dumps(conversation_document(chat.reports, chat.conversation_id))
    else:
        text = conversation_text(chat.reports)
    try:
        write_whole(path, text)
    except OSError as exc:
        raise FanoutError(f"/save: cannot write {rest!r}: {exc.strerror}") from None
    _aside(f"saved {len(chat.reports)} turns to {path}")


def _new(chat: Chat, rest: str) -> None:
    chat.reports, chat.conversation_id = [], ""
    _aside("a new conversation")


COMMANDS: dict[str, Callable[[Chat, str], None]] = {
    "help": _help,
    "agents": _agents,
    "shape": _shape,
    "synthesize": _synthesize,
    "show": _show,
    "save": _save,
    "new": _new,
}


def _aside(text: str) -> None:
    from fanout.render import make_console, print_warning

    print_warning(make_console(stderr=True), text, style="dim")


def conversation_text(reports: Sequence[RunReport]) -> str:
    """The conversation as Markdown: each turn's question, then its answers as ``ask`` shows
    them piped."""
    from fanout.render import report_text

    parts = []
    for report in reports:
        question = " ".join(report.prompt.split())
        parts.append(f"# Turn {report.turn}: {question}\n\n" + report_text(report, "md"))
    return "\n".join(parts)


def conversation_document(reports: Sequence[RunReport], conversation_id: str) -> dict[str, object]:
    """The conversation as JSON: its id and each turn's result document."""
    return {
        "conversation_id": conversation_id or None,
        "turns": [r.to_dict() for r in reports],
    }


# -- a run in the middle of a conversation ----------------------------------------------------


def later_turns_note(history: History, document: Mapping[str, object], doing: str) -> str | None:
    """What ``doing`` (retrying, deleting) a run changes under: the later turns of its
    conversation were asked with it in their threads. None when it is its conversation's last
    turn."""
    later = later_turns(history, document)
    if not later:
        return None
    numbers = ", ".join(str(t.turn) for t in later)
    shown = ", ".join(t.run_id for t in later[:3]) + (", ..." if len(later) > 3 else "")
    return (
        f"run {document.get('run_id')} is turn {document.get('turn') or 1} of conversation "
        f"{later[0].conversation_id}, and turns {numbers} ({shown}) were asked with it in "
        f"their threads: {doing}"
    )


def carried_conversation(history: History, document: Mapping[str, object]) -> Transcript | None:
    """What ``runs retry``/``runs synth`` ask a stored run's calls in the light of: the turns
    of its conversation before it (its later turns are said, and left as they were)."""
    from fanout.render import make_console, print_warning

    note = later_turns_note(history, document, "they keep the threads they were asked with")
    if note:
        print_warning(make_console(stderr=True), f"warning: {note}")
    return transcript_before(history, document)


def turn_line(history: History, document: Mapping[str, object]) -> str | None:
    """``runs show``: which turn of which conversation a run is (None: a run alone)."""
    report = report_from_document(dict(document))
    conversation_id = report.conversation_id or report.run_id
    turns = history.list_runs(2**31, RunFilter(conversation=conversation_id))
    if len(turns) < 2 and report.turn == 1:
        return None
    return (
        f"Turn {report.turn} of {len(turns)} of conversation {conversation_id} "
        f"(fanout runs show {report.run_id} --turns)"
    )


def show_turns(run_id: str, json_output: bool, view: str | None) -> None:
    """``runs show RUN --turns``: every turn of the run's conversation, in order, each as
    ``ask`` showed it under its question (``--json``: the turns' documents)."""
    from fanout.drive import open_history, show_report, warn
    from fanout.export import dumps
    from fanout.output import write_stdout

    with open_history() as history:
        warn(history.warnings)
        document = history.load(history.resolve(run_id)).document
        conversation_id = str(document.get("conversation_id") or document.get("run_id"))
        reports = [report_from_document(d) for d in history.conversation(conversation_id)]
        warn(history.warnings)
    if json_output:
        write_stdout(dumps(conversation_document(reports, conversation_id)))
        return
    for report in reports:
        write_stdout(f"# Turn {report.turn}: {' '.join(report.prompt.split())}\n\n")
        show_report(report, view)
