"""Conversations: a panel you keep talking to, each persona in a thread of its own.

Every run is a turn of a conversation (its first turn's run id names it, unless a caller named
it). A run that continues one carries a ``Transcript`` (``RunRequest.conversation``): the
conversation's id, its earlier turns and, from a ``/v1`` client, a system message. The panel
stage turns it into each persona's own thread (``persona_thread``)::

    system     the persona's instructions (and a client's system message after them)
    user       the first question
    assistant  what THIS persona answered ("[no answer: timed out]" if it had none)
    user       ...every later question and its own answer...
    user       the question now

Nobody is sent another persona's answers. A persona that was not asked an earlier question
(added with ``-a``/``-p``, or not picked by a router) is told those questions in the user
message that follows them, never handed an answer it did not give. A ``/v1`` client's earlier
turns carry one answer, the panel's (``Turn.reply``): every persona gets that one.

The roles that read the answers (synthesizer, judge, reviewers, router) see this turn's answers
only, with the earlier questions and the panel's earlier final answers before the question
(``role_prompt``): a follow-up such as "and at absolute zero?" means nothing without them.

A thread that would not fit the persona's context (``max_context_tokens``, else the model's
known window) loses its oldest turns first; the call's entry says how many
(``thread.dropped_turns``). ``--dry-run`` and ``--max-cost`` see the whole thread: it is in
the call's messages.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, TypedDict

from fanout.errors import ConfigError
from fanout.export import report_from_document
from fanout.history import RunFilter, RunSummary
from fanout.models import Agent, CallResult, Message, RunReport

if TYPE_CHECKING:
    from fanout.api import Plan, RunRequest
    from fanout.config import Panel
    from fanout.engine import Provider, RunContext, RunSettings
    from fanout.event import Observer
    from fanout.history import History

MAX_CONVERSATION_ID = 128  # characters
# Context windows of models whose window is known (a dated snapshot takes its base's). A
# persona's max_context_tokens wins; a model not listed has no limit but its own.
KNOWN_WINDOWS = {
    "gpt-3.5-turbo": 16_385,
    "gpt-4": 8_192,
    "gpt-4-turbo": 128_000,
    "gpt-4o": 128_000,
    "gpt-4o-mini": 128_000,
    "gpt-4.1": 1_047_576,
    "gpt-4.1-mini": 1_047_576,
    "gpt-4.1-nano": 1_047_576,
    "o1": 200_000,
    "o3": 200_000,
    "o3-mini": 200_000,
    "o4-mini": 200_000,
    "gpt-5": 400_000,
    "gpt-5-mini": 400_000,
    "gpt-5-nano": 400_000,
}
# What the roles may spend on the conversation so far, of their window (they also read every
# answer of this turn), and without a known window.
ROLE_SHARE = 4
ROLE_TOKENS = 8_000
# A token counted at 3 UTF-8 bytes: more than English takes (about 4), as CJK takes.
BYTES_PER_TOKEN = 3
MESSAGE_TOKENS = 4  # each message's framing

_WHY = {
    "timeout": "timed out",
    "rate_limit": "rate limited",
    "connection": "could not connect",
    "server_error": "the server failed",
    "budget": "not asked: over --max-cost",
    "cancelled": "cancelled",
    "skipped": "not asked",
}


@dataclass(frozen=True)
class PriorAnswer:
    """One persona's answer to an earlier question; ``text`` None: it gave none (``why``)."""

    text: str | None = None
    why: str = ""


@dataclass(frozen=True)
class Turn:
    """One earlier question and what came of it: each persona's answer (by call name), and
    the panel's one answer (a synthesis, a verdict's; a ``/v1`` client's assistant message)."""

    question: str
    answers: Mapping[str, PriorAnswer] = field(default_factory=dict)
    reply: str | None = None
    number: int = 1
    run_id: str | None = None


@dataclass(frozen=True)
class Transcript:
    """A conversation so far, as a run that continues it needs it: its id ("": the run's
    own), its earlier turns in order, and a system message every persona gets after its
    own instructions (a ``/v1`` client's). ``number``: this run's turn (None: the next)."""

    id: str = ""
    turns: tuple[Turn, ...] = ()
    system: str | None = None
    number: int | None = None

    @property
    def turn(self) -> int:
        if self.number is not None:
            return self.number
        return (self.turns[-1].number + 1) if self.turns else 1


class ThreadNote(TypedDict):
    """A call's ``thread`` entry in the result document: what of the conversation it got."""

    earlier_turns: int
    sent_turns: int
    dropped_turns: int
    context_tokens: int | None  # the limit the thread was fitted to, if any


def check_transcript(transcript: object) -> None:
    """ConfigError for a conversation a run cannot carry."""
    if not isinstance(transcript, Transcript):
        raise ConfigError("conversation: give a fanout.conversation.Transcript, or None")
    check_conversation_id(transcript.id, allow_empty=True)
    if not all(isinstance(t, Turn) and isinstance(t.question, str) for t in transcript.turns):
        raise ConfigError("conversation: its turns must be Turn values with a question")


def check_conversation_id(value: object, *, allow_empty: bool = False) -> str:
    """A conversation id: printable text, no spaces, at most 128 characters."""
    if isinstance(value, str) and not value and allow_empty:
        return value
    if (
        not isinstance(value, str)
        or not value
        or len(value) > MAX_CONVERSATION_ID
        or not value.isprintable()
        or any(c.isspace() for c in value)
    ):
        raise ConfigError(
            f"conversation_id: {value!r:.60} is not an id (printable text without spaces, "
            f"at most {MAX_CONVERSATION_ID} characters)"
        )
    return value


# -- each persona's thread -----------------------------------------------------------------


def persona_thread(
    agent: Agent,
    name: str,
    context: RunContext,
    messages: Sequence[Message],
    *,
    writes_reply: bool = False,
) -> tuple[tuple[Message, ...], dict[str, ThreadNote]]:
    """``messages`` (the stage's: instructions, then this turn's question) as ``name``'s
    thread in the run's conversation, fitted to its context; and the call's ``thread`` entry
    ({} outside a conversation). ``writes_reply``: the caller wrote the panel's answers (an
    orchestrator), which are its own."""
    conversation = context.conversation
    if conversation is None or not (conversation.turns or conversation.system):
        return tuple(messages), {}
    system, question = _split(messages)
    if conversation.system:
        system = f"{system}\n\n{conversation.system}" if system else conversation.system
    turns = [_said(turn, name, writes_reply) for turn in conversation.turns]
    limit = context_window(agent)
    kept = _fit(turns, system, question, limit, agent.max_tokens or 0)
    thread: list[Message] = [{"role": "system", "content": system}] if system else []
    thread += _render(turns[len(turns) - kept :], question)
    note = ThreadNote(
        earlier_turns=len(turns),
        sent_turns=kept,
        dropped_turns=len(turns) - kept,
        context_tokens=limit,
    )
    return tuple(thread), {"thread": note}


def _split(messages: Sequence[Message]) -> tuple[str, Message]:
    """The system text (instructions) and the last message (this turn's question)."""
    first = messages[0] if messages else {}
    system = str(first.get("content") or "") if first.get("role") == "system" else ""
    question = messages[-1] if messages else {"role": "user", "content": ""}
    return system, question


def _said(turn: Turn, name: str, writes_reply: bool) -> tuple[str, str | None]:
    """An earlier turn as ``name`` lived it: the question, and its own answer (None: it was
    not asked; a failure is an answer saying so)."""
    if writes_reply:
        return turn.question, turn.reply if turn.reply is not None else "[no answer]"
    answer = turn.answers.get(name) or turn.answers.get(name.split("#")[0])
    if answer is None:
        # A client's history has the panel's answer, which every persona was part of.
        return turn.question, turn.reply if not turn.answers else None
    if answer.text is None:
        return turn.question, f"[no answer: {answer.why or 'failed'}]"
    return turn.question, answer.text


def _render(turns: Sequence[tuple[str, str | None]], question: Message) -> list[Message]:
    """User and assistant messages, alternating: questions a persona was not asked go, as
    such, into the next user message."""
    messages: list[Message] = []
    unasked: list[str] = []
    for asked, answer in turns:
        if answer is None:
            unasked.append(asked)
            continue
        messages.append({"role": "user", "content": _with_unasked(unasked, asked)})
        messages.append({"role": "assistant", "content": answer})
        unasked = []
    now = {**question, "content": _with_unasked(unasked, str(question.get("content") or ""))}
    return [*messages, now]


def _with_unasked(unasked: Sequence[str], question: str) -> str:
    if not unasked:
        return question
    listed = "\n".join(f"- {q}" for q in unasked)
    return (
        "Asked earlier in this conversation, without an answer from you:\n"
        f"{listed}\n\nThe question for you:\n{question}"
    )


def _fit(
    turns: Sequence[tuple[str, str | None]],
    system: str,
    question: Message,
    limit: int | None,
    answer_tokens: int,
) -> int:
    """How many of the latest turns fit ``limit`` with the system message, the question and
    the answer's ``max_tokens``; every turn when there is no limit."""
    if limit is None:
        return len(turns)
    room = limit - answer_tokens - text_tokens(system) - text_tokens(str(question.get("content")))
    room -= 2 * MESSAGE_TOKENS
    kept, used = 0, 0
    for asked, answer in reversed(turns):
        cost = text_tokens(asked) + (text_tokens(answer) if answer is not None else 0)
        cost += 2 * MESSAGE_TOKENS
        if used + cost > room:
            break
        used += cost
        kept += 1
    return kept


def text_tokens(text: str) -> int:
    """Tokens ``text`` may take: 3 UTF-8 bytes a token (English takes about 4, CJK 3)."""
    return -(-len(text.encode("utf-8")) // BYTES_PER_TOKEN)


def context_window(agent: Agent) -> int | None:
    """The most tokens one request to ``agent`` may hold: its ``max_context_tokens``, else
    its model's known window (a dated snapshot, ``gpt-4o-2024-08-06``, takes its base's)."""
    if agent.max_context_tokens is not None:
        return agent.max_context_tokens
    model = agent.model
    if model in KNOWN_WINDOWS:
        return KNOWN_WINDOWS[model]
    bases = [name for name in KNOWN_WINDOWS if model.startswith(name + "-")]
    return KNOWN_WINDOWS[max(bases, key=len)] if bases else None


def role_prompt(context: RunContext, agent: Agent) -> str:
    """The question as a role that reads the answers sees it (a synthesizer, a judge, a
    router): after the conversation's earlier questions and the panel's answers to them, as
    many of the latest as fit a share of its context."""
    conversation = context.conversation
    if conversation is None or not (conversation.turns or conversation.system):
        return context.prompt
    told = f"The user's instructions: {conversation.system}\n\n" if conversation.system else ""
    window = context_window(agent)
    room = window // ROLE_SHARE if window is not None else ROLE_TOKENS
    earlier: list[str] = []
    for turn in reversed(conversation.turns):
        text = f"Question {turn.number}: {turn.question}"
        if turn.reply:
            text += f"\nThe panel's answer: {turn.reply}"
        room -= text_tokens(text)
        if room < 0:
            break
        earlier.insert(0, text)
    if not earlier:
        return told + context.prompt
    return (
        told
        + "This question continues a conversation. Earlier in it:\n\n"
        + "\n\n".join(earlier)
        + f"\n\nThe question now: {context.prompt}"
    )


# -- turns from runs -----------------------------------------------------------------------


def turn_of(report: RunReport) -> Turn:
    """A finished run as an earlier turn of its conversation."""
    return Turn(
        question=report.prompt,
        answers={r.name: _answer(r) for r in report.agents},
        reply=final_answer(report),
        number=report.turn,
        run_id=report.run_id,
    )


def _answer(result: CallResult) -> PriorAnswer:
    if result.status == "ok" and result.answer is not None:
        return PriorAnswer(result.answer)
    kind = result.error.type if result.error else result.status
    return PriorAnswer(None, _WHY.get(kind, kind.replace("_", " ")))


def final_answer(report: RunReport) -> str | None:
    """The run's one answer, if it decided one: what its verdicts' summaries decided (a
    synthesis, a judge's pick, a vote's winner), else a later stage's single answered call.
    An undecided verdict gives none: its headline (why) is no answer to carry on."""
    from fanout.summary import final_summary

    summaries = [s.verdict.summary() for s in report.stages if s.verdict is not None]
    final = final_summary(summaries)
    if final is not None:
        return final.answer
    for stage in reversed(report.stages[1:]):
        if len(stage.calls) == 1 and stage.calls[0].status == "ok" and stage.calls[0].answer:
            return stage.calls[0].answer
    return None


def transcript_of(
    reports: Iterable[RunReport], conversation_id: str = "", *, system: str | None = None
) -> Transcript:
    """The conversation ``reports`` make (its turns, in order), for the run after them; its
    id is the first turn's unless given."""
    reports = list(reports)
    if not conversation_id and reports:
        conversation_id = reports[0].conversation_id or reports[0].run_id
    return Transcript(conversation_id, tuple(turn_of(r) for r in reports), system)


# -- conversations in the history ----------------------------------------------------------


def load_transcript(history: History, reference: str | None) -> Transcript:
    """The conversation ``reference`` names (a conversation id or one of its runs' ids, a
    unique prefix; None: the last run's), for the turn after its last."""
    if reference is None:
        reference = history.latest()
        if reference is None:
            raise ConfigError("--continue: the history has no run to continue yet")
    return stored_transcript(history, history.conversation_of(reference))


def stored_transcript(history: History, conversation_id: str) -> Transcript:
    """The conversation the history holds under exactly ``conversation_id`` (no turns: a
    new one of that name), for the turn after its last."""
    reports = [report_from_document(d) for d in history.conversation(conversation_id)]
    return transcript_of(reports, conversation_id)


def named_conversation(value: object) -> Transcript | None:
    """A request's ``conversation_id`` (None: a conversation of the run's own): its turns
    are read from the history when the run starts (``with_stored_turns``)."""
    if value is None:
        return None
    return Transcript(check_conversation_id(value))


def wants_stored_turns(plan: Plan) -> bool:
    """Whether the request named a conversation the history may hold (a server's request):
    its turns come from there, or, when the client brought its own (``/v1`` messages), this
    run's number follows the stored ones."""
    named = plan.request.conversation
    return named is not None and bool(named.id)


def with_stored_turns(history: History, plan: Plan) -> Plan:
    """``plan`` with its conversation's earlier turns from the history, when it
    ``wants_stored_turns``; asking, as ``ask --continue`` does, the personas of its last turn
    (one given for a single run then, with ``personas``, too) and any the request names."""
    from dataclasses import replace

    from fanout.api import resolve

    named = plan.request.conversation
    if named is None or not wants_stored_turns(plan):
        return plan
    stored = stored_transcript(history, named.id)
    if named.turns:  # the client's own turns: this run is numbered after every stored one
        if not stored.turns or named.number is not None:
            return plan
        number = max(stored.turns[-1].number, named.turns[-1].number) + 1
        return replace(
            plan, request=replace(plan.request, conversation=replace(named, number=number))
        )
    conversation = Transcript(named.id, stored.turns, named.system, named.number)
    request = replace(plan.request, conversation=conversation)
    last = stored.turns[-1].run_id if stored.turns else None
    panel = request.panel or plan.panel
    if last is None or panel is None:
        return replace(plan, request=request)
    recorded = history.load(last).agents
    known = {a.name.casefold() for a in panel.agents}
    added = [
        (str(a["name"]), str(a.get("instructions") or ""))
        for a in recorded
        if str(a["name"]).casefold() not in known
    ]
    earlier = [str(a["name"]) for a in recorded]
    asked = list(dict.fromkeys([*earlier, *(request.agents or [])]))
    return resolve(replace(request, panel=panel.with_personas(added), agents=asked))


def transcript_before(history: History, document: Mapping[str, object]) -> Transcript | None:
    """What a stored run was asked in the light of: the turns of its conversation before it
    (None: it was a first turn), for carrying it on (``runs retry``)."""
    report = report_from_document(dict(document))
    conversation_id = report.conversation_id or report.run_id
    earlier = [
        r
        for r in (report_from_document(d) for d in history.conversation(conversation_id))
        if r.turn < report.turn and r.run_id != report.run_id
    ]
    if conversation_id == report.run_id and not earlier:
        return None  # a first turn, named after itself
    return Transcript(conversation_id, tuple(turn_of(r) for r in earlier), number=report.turn)


def later_turns(history: History, document: Mapping[str, object]) -> list[RunSummary]:
    """The turns of a stored run's conversation after it (what deleting or retrying it
    changes under)."""
    report = report_from_document(dict(document))
    conversation_id = report.conversation_id or report.run_id
    turns = history.list_runs(2**31, RunFilter(conversation=conversation_id))
    return [t for t in reversed(turns) if t.turn > report.turn and t.run_id != report.run_id]


# -- the Python API ------------------------------------------------------------------------


class Conversation:
    """A panel you keep talking to: each ``ask`` is a turn, and each persona is sent its own
    thread (its instructions, every earlier question, its own earlier answers, the new
    question)::

        chat = fanout.Conversation(fanout.load_panel(), agents=["physicist", "chemist"])
        chat.ask("What is temperature?")
        report = chat.ask("And at absolute zero?")  # each persona sees what it said
        chat.id  # the conversation_id in every turn's document

    ``agents``, ``shape``, ``options``, ``settings`` and ``model`` are a turn's
    ``RunRequest`` fields, and may be changed between turns. ``from_history`` takes up a
    conversation the history recorded (turns asked here are not recorded: the CLI records).
    """

    def __init__(
        self,
        panel: Panel | None = None,
        *,
        agents: Sequence[str] | None = None,
        shape: str = "panel",
        options: Mapping[str, object] | None = None,
        settings: RunSettings | None = None,
        model: str | None = None,
        id: str = "",
        system: str | None = None,
        turns: Sequence[Turn] = (),
    ) -> None:
        self.panel = panel
        self.agents = agents
        self.shape = shape
        self.options: Mapping[str, object] = dict(options or {})
        self.settings = settings
        self.model = model
        if id:
            check_conversation_id(id)
        self.transcript = Transcript(id, tuple(turns), system)
        self.reports: list[RunReport] = []  # the turns asked here, in order

    @classmethod
    def from_history(
        cls,
        reference: str | None = None,
        panel: Panel | None = None,
        *,
        agents: Sequence[str] | None = None,
        shape: str = "panel",
        options: Mapping[str, object] | None = None,
        settings: RunSettings | None = None,
    ) -> Conversation:
        """The conversation the history holds under ``reference`` (its id or one of its
        runs', a unique prefix; None: the last run's), ready for its next turn; it asks the
        personas of its last turn unless ``agents`` says otherwise."""
        from fanout.history import History, history_path

        with History(history_path(os.environ)) as history:
            transcript = load_transcript(history, reference)
        if agents is None and transcript.turns:
            last = transcript.turns[-1].answers
            agents = list(dict.fromkeys(name.split("#")[0] for name in last)) or None
        conversation = cls(panel, agents=agents, shape=shape, options=options, settings=settings)
        conversation.transcript = transcript
        return conversation

    @property
    def id(self) -> str:
        """The conversation's id ("" until its first turn, unless one was given)."""
        return self.transcript.id

    @property
    def turns(self) -> tuple[Turn, ...]:
        return self.transcript.turns

    def request(self, prompt: str) -> RunRequest:
        """The ``RunRequest`` of the next turn."""
        from fanout.api import RunRequest
        from fanout.engine import RunSettings

        given = self.transcript
        return RunRequest(
            prompt,
            self.panel,
            agents=self.agents,
            shape=self.shape,
            options=self.options,
            settings=self.settings or RunSettings(),
            model=self.model,
            conversation=given if given.id or given.turns or given.system else None,
        )

    async def aask(
        self, prompt: str, observers: Iterable[Observer] = (), *, provider: Provider | None = None
    ) -> RunReport:
        """Ask the next question; its report (the turn is added to the conversation)."""
        from fanout.api import arun

        report = await arun(self.request(prompt), observers, provider=provider)
        self.add(report)
        return report

    def ask(
        self, prompt: str, observers: Iterable[Observer] = (), *, provider: Provider | None = None
    ) -> RunReport:
        """``aask`` for synchronous code (it starts and ends its own event loop)."""
        import anyio

        return anyio.run(partial(self.aask, prompt, observers, provider=provider))

    def add(self, report: RunReport) -> None:
        """A turn asked elsewhere (a run of this conversation) added as its latest."""
        given = self.transcript
        self.transcript = Transcript(
            report.conversation_id or given.id or report.run_id,
            (*given.turns, turn_of(report)),
            given.system,
        )
        self.reports.append(report)
