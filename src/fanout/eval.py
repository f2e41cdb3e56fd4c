"""``fanout eval``: every case of an eval x every persona, graded, on the batch path.

An eval runs in three phases, each a flat stream of calls through the one caller
(``Engine.call``: limits, retries, budget, rate limits): the personas' answers, then the
rubric grader's grades of the answers that need one, then (``--pairwise``) a blind judge's
comparisons of persona pairs, each pair read in both orders.

Every finished call is a line of the eval's journal (the same lines as ``fanout batch``
writes, keyed by case id and call id), written the moment it ends. Run the same command again
after a crash, a kill or Ctrl-C and the eval carries on from its journal: nothing answered is
asked again. The journal lives with the history (``$FANOUT_HOME/evals/ID.jsonl``); a finished
eval also leaves its document there (``ID.json``), which ``fanout eval compare`` reads.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, TextIO

import anyio

from fanout.batch import BatchPrompt, BatchTally, ResultWriter, answered_jobs
from fanout.config import DEFAULT_JUDGE_INSTRUCTIONS
from fanout.engine import Engine, RunTrace
from fanout.errors import ConfigError
from fanout.evalfile import Assertion, Case, EvalSpec
from fanout.event import CallFinished, CallRetrying, CallSending, CallWaiting, Event, Observer
from fanout.export import json_line, result_from_entry
from fanout.models import Agent, Call, CallResult, chat_messages
from fanout.shapes.judge import judge_format, judge_messages, read_pick
from fanout.shapes.structured import UNTRUSTED, fence, json_schema_format, parse_object

GRADER_BRIEF = (
    "You grade one answer against a rubric. You receive the question, the answer and the "
    "rubric. Decide whether the answer meets the rubric, and score how well from 0 (not at "
    "all) to 1 (fully). Judge the content only."
)
UNTRUSTED_ANSWER = UNTRUSTED.replace("candidate answers are", "answer is").replace(
    "each between", "between"
)
JOURNAL_FORMAT = 1
PairMode = Literal["all", "reference", "sample"]


@dataclass(frozen=True)
class PairPlan:
    """Which persona pairs a case's judge compares: ``all`` (a round robin), ``reference``
    (every persona against ``reference``) or ``sample`` (``sample`` pairs of the round robin
    per case, drawn with ``seed``). Each pair costs two judge calls (both orders)."""

    mode: PairMode = "all"
    reference: str | None = None
    sample: int = 0
    seed: int = 0

    def pairs(self, case_id: str, names: Sequence[str]) -> list[tuple[str, str]]:
        if self.mode == "reference":
            reference = self.reference or names[0]
            return [(reference, n) for n in names if n != reference]
        every = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
        if self.mode == "sample" and self.sample < len(every):
            return random.Random(f"{self.seed}|{case_id}").sample(every, self.sample)
        return every


@dataclass(frozen=True)
class EvalPlan:
    """What an eval asks: its cases, the personas, the grader (for rubrics and pairs) and
    which pairs are judged."""

    spec: EvalSpec
    personas: tuple[Agent, ...]
    grader: Agent | None = None
    pairwise: PairPlan | None = None

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.personas]

    def key(self) -> str:
        """What the calls depend on, hashed: the same command on the same files finds the
        journal of its interrupted eval by this key."""
        cases = [
            [c.id, c.prompt, [a.text for a in c.assertions if a.graded]] for c in self.spec.cases
        ]
        agents = [_agent_key(a) for a in (*self.personas, *([self.grader] if self.grader else []))]
        pairs = None if self.pairwise is None else list(_pair_key(self.pairwise))
        blob = json.dumps([JOURNAL_FORMAT, cases, agents, pairs], sort_keys=True)
        return hashlib.sha256(blob.encode("utf-8", "backslashreplace")).hexdigest()[:16]

    def worst_case(self) -> tuple[int, int, int]:
        """The most calls it can make: answers, grades, judge calls."""
        answers = len(self.spec.cases) * len(self.personas)
        grades = sum(len(rubrics(c)) for c in self.spec.cases) * len(self.personas)
        judged = 0
        if self.pairwise is not None:
            judged = sum(2 * len(self.pairwise.pairs(c.id, self.names)) for c in self.spec.cases)
        return answers, grades, judged


def _agent_key(agent: Agent) -> list[object]:
    return [agent.name, agent.model, agent.instructions, agent.temperature, agent.top_p,
            agent.max_tokens, agent.endpoint.base_url]  # fmt: skip


def _pair_key(plan: PairPlan) -> Iterator[object]:
    yield from (plan.mode, plan.reference, plan.sample, plan.seed)


def rubrics(case: Case) -> list[tuple[int, Assertion]]:
    """A case's graded assertions, with their place among its assertions."""
    return [(i, a) for i, a in enumerate(case.assertions) if a.graded]


def answer_id(persona: str) -> str:
    return f"panel/{persona}"  # as fanout batch keys a persona's answer


def grade_id(persona: str, index: int) -> str:
    return f"grade/{persona}/{index}"


def pair_id(first: str, second: str, order: int) -> str:
    return f"pair/{first},{second}/{order}"  # a persona's name holds no comma


@dataclass
class EvalResults:
    """Every call's result an eval holds, by (case id, call id): its own and those kept from
    the journal of the eval it carries on."""

    calls: dict[tuple[str, str], CallResult] = field(default_factory=dict)

    def get(self, case: str, call_id: str) -> CallResult | None:
        return self.calls.get((case, call_id))

    def answered(self, case: str, persona: str) -> CallResult | None:
        found = self.get(case, answer_id(persona))
        return found if found is not None and found.status == "ok" else None


# -- the calls of each phase --------------------------------------------------------------------


def answer_call(case: Case, persona: Agent) -> Call:
    return Call(
        answer_id(persona.name),
        "panel",
        "persona",
        persona.name,
        persona,
        tuple(chat_messages(persona, case.prompt)),
    )


def grade_call(
    case: Case, persona: str, index: int, rubric: str, answer: str, grader: Agent
) -> Call:
    """The grader's call for one answer and one rubric: the question, the answer and the
    rubric, fenced; nothing says who wrote the answer (``persona`` is only in the call id,
    which never leaves fanout)."""
    brief = GRADER_BRIEF
    if grader.instructions and grader.instructions != DEFAULT_JUDGE_INSTRUCTIONS:
        brief = f"{grader.instructions}\n\n{GRADER_BRIEF}"
    task = (
        f"Question:\n{fence(case.prompt)}\n\nAnswer:\n{fence(answer)}\n\nRubric:\n{fence(rubric)}"
        '\n\nDoes the answer meet the rubric? Reply with JSON: {"reason": "...", "pass": true '
        'or false, "score": a number from 0 to 1}.'
    )
    messages = (
        {"role": "system", "content": f"{brief}\n\n{UNTRUSTED_ANSWER}"},
        {"role": "user", "content": task},
    )
    return Call(
        grade_id(persona, index),
        "grade",
        "grader",
        grader.name,
        grader,
        messages,
        response_format=GRADE_FORMAT,
    )


GRADE_FORMAT = json_schema_format(
    "grade",
    {
        "type": "object",
        "properties": {
            "reason": {"type": "string"},
            "pass": {"type": "boolean"},
            "score": {"type": "number"},
        },
        "required": ["reason", "pass", "score"],
        "additionalProperties": False,
    },
)


@dataclass(frozen=True)
class Grade:
    """A grader's ``{pass, score, reason}``; ``error`` when its reply said nothing usable."""

    passed: bool
    score: float | None
    reason: str
    error: bool = False


def read_grade(result: CallResult | None, threshold: float | None) -> Grade:
    """A grade from the grader's call (missing, failed or unreadable: a failed grade that
    says why)."""
    if result is None:
        return Grade(False, None, "not graded", error=True)
    if result.status != "ok":
        why = result.error.message if result.error else result.status
        return Grade(False, None, f"the grader failed: {why}", error=True)
    found = parse_object(result.answer)
    verdict = found.get("pass") if found is not None else None
    if found is None or not isinstance(verdict, bool):
        return Grade(False, None, "the grader's reply held no {pass, score, reason}", error=True)
    raw_score = found.get("score")
    score = (
        min(1.0, max(0.0, float(raw_score)))
        if isinstance(raw_score, int | float) and not isinstance(raw_score, bool)
        else (1.0 if verdict else 0.0)
    )
    reason = found.get("reason")
    passed = verdict and (threshold is None or score >= threshold)
    return Grade(passed, round(score, 4), str(reason or ""), error=False)


def judge_calls(
    case: Case, first: str, second: str, texts: Mapping[str, str], judge: Agent
) -> list[Call]:
    """The judge's two calls for one pair, the candidates labelled A and B in each order:
    the question and two fenced answers, never who wrote them."""
    calls = []
    for order, shown in ((1, (first, second)), (2, (second, first))):
        labels = {"A": shown[0], "B": shown[1]}
        messages = judge_messages(judge.instructions, case.prompt, ["A", "B"], labels, texts)
        calls.append(
            Call(
                pair_id(first, second, order),
                "pair",
                "judge",
                judge.name,
                judge,
                tuple(messages),
                response_format=judge_format(["A", "B"]),
                details={"labels": labels},
            )
        )
    return calls


def same_answers(a: CallResult, b: CallResult) -> bool:
    """Two answers that say exactly the same: a tie, nothing for a judge to tell apart."""
    return (a.answer or "").strip() == (b.answer or "").strip()


def pair_outcome(results: Sequence[CallResult | None], first: str, second: str) -> float | None:
    """1.0 when both orders preferred ``first``, 0.0 when both preferred ``second``, 0.5 for
    a tie (an inconsistent pair, whose pick followed the position, included); None when a
    judge call gave no usable pick."""
    picks = []
    for order, result in enumerate(results, 1):
        if result is None or result.status != "ok":
            return None
        shown = (first, second) if order == 1 else (second, first)
        pick = read_pick(result.answer, {"A": shown[0], "B": shown[1]})
        if pick is None:
            return None
        picks.append(pick[0])
    if picks[0] == picks[1] == first:
        return 1.0
    if picks[0] == picks[1] == second:
        return 0.0
    return 0.5


# -- running ------------------------------------------------------------------------------------


class _Journal:
    """Hears every call of the eval: writes each finished one (not cancelled: a re-run asks
    it) as a journal line, keeps it in the results and keeps the tally."""

    def __init__(
        self,
        writer: ResultWriter,
        results: EvalResults,
        tally: BatchTally,
        shown: Observer,
        cases: Mapping[str, Case],
    ) -> None:
        self._writer, self._results, self._tally, self._shown = writer, results, tally, shown
        self._cases = cases

    def finished(self, case: Case, result: CallResult) -> None:
        if result.status == "cancelled":
            return
        self._writer.write(BatchPrompt(case.id, case.prompt), result)
        self._results.calls[(case.id, result.call_id)] = result
        tally = self._tally
        tally.done += 1
        tally.failed += result.status != "ok"
        tally.tokens += result.usage.total_tokens
        if result.cost_usd is not None:
            tally.cost_usd += result.cost_usd
        elif result.usage.total_tokens:
            tally.unpriced = True

    def handle(self, event: Event) -> None:
        tally = self._tally
        call = getattr(event, "call", None)
        if call is not None:
            key = (str(call.details.get("case", "")), call.call_id)
            if isinstance(event, CallWaiting):
                tally.waiting_for.add(key)
            elif isinstance(event, CallSending):
                tally.waiting_for.discard(key)
                tally.sending.add(key)
            elif isinstance(event, CallRetrying):
                tally.retries += 1
                tally.sending.discard(key)
            elif isinstance(event, CallFinished):
                tally.sending.discard(key)
                tally.waiting_for.discard(key)
            tally.in_flight, tally.waiting = len(tally.sending), len(tally.waiting_for)
        self._shown.handle(event)


Job = tuple[Case, Call]


async def run_jobs(engine: Engine, jobs: Iterator[Job], journal: _Journal, trace: RunTrace) -> None:
    """Make every job's call, at most ``concurrency`` at once: a fixed pool of workers takes
    the next job as it frees up, so a job's state exists only while it runs (no task, no
    waiter per call queued)."""

    async def worker() -> None:
        for case, call in jobs:  # one iterator shared: each job is taken once
            result = CallResult.of(call)
            await engine.call(call, result, journal, stream=False, trace=trace)
            journal.finished(case, result)

    async with anyio.create_task_group() as tg:
        for _ in range(max(1, engine.settings.concurrency)):
            tg.start_soon(worker)


def _tagged(case: Case, call: Call) -> Call:
    """The call, knowing its case (for the progress bar's in-flight keys)."""
    return Call(
        call.call_id, call.stage, call.role, call.name, call.agent, call.messages,
        response_format=call.response_format, details={**call.details, "case": case.id},
    )  # fmt: skip


class EvalRun:
    """One eval on an engine: the three phases, each call made once across runs."""

    def __init__(
        self,
        plan: EvalPlan,
        engine: Engine,
        results: EvalResults,
        journal: _Journal,
        tally: BatchTally,
        answers: Callable[[Sequence[tuple[Case, Agent]]], object] | None = None,
    ) -> None:
        self.plan, self.engine, self.results, self.journal = plan, engine, results, journal
        self.tally = tally
        self.trace = RunTrace.fresh()

    async def answers(self) -> None:
        """Every persona's answer to every case, but those the journal already has."""
        todo = list(self.unanswered())
        await self._phase((case, answer_call(case, p)) for case, p in todo)

    def unanswered(self) -> Iterator[tuple[Case, Agent]]:
        for case in self.plan.spec.cases:
            for persona in self.plan.personas:
                if self.results.answered(case.id, persona.name) is None:
                    yield case, persona

    async def grades(self) -> None:
        grader = self.plan.grader
        if grader is None:
            return
        jobs: list[Job] = []
        for case in self.plan.spec.cases:
            for persona in self.plan.names:
                answer = self.results.answered(case.id, persona)
                for index, rubric in rubrics(case) if answer is not None else ():
                    done = self.results.get(case.id, grade_id(persona, index))
                    if done is None or done.status != "ok":
                        text = answer.answer or "" if answer is not None else ""
                        jobs.append(
                            (
                                case,
                                grade_call(case, persona, index, rubric.text or "", text, grader),
                            )
                        )
        await self._phase(iter(jobs))

    async def pairs(self) -> None:
        plan, judge = self.plan.pairwise, self.plan.grader
        if plan is None or judge is None:
            return
        jobs: list[Job] = []
        for case in self.plan.spec.cases:
            for first, second in plan.pairs(case.id, self.plan.names):
                a, b = self.results.answered(case.id, first), self.results.answered(case.id, second)
                if a is None or b is None:
                    continue  # no contest: an answer against none wins without a judge
                texts = {first: a.answer or "", second: b.answer or ""}
                if same_answers(a, b):
                    continue  # a tie, without asking
                for call in judge_calls(case, first, second, texts, judge):
                    done = self.results.get(case.id, call.call_id)
                    if done is None or done.status != "ok":
                        jobs.append((case, call))
        await self._phase(iter(jobs))

    async def _phase(self, jobs: Iterable[Job]) -> None:
        listed = [(case, _tagged(case, call)) for case, call in jobs]
        self.tally.total = self.tally.done + self.tally.skipped + len(listed)
        await run_jobs(self.engine, iter(listed), self.journal, self.trace)


# -- where evals are kept -----------------------------------------------------------------------


def evals_dir(environ: Mapping[str, str]) -> Path:
    """``$FANOUT_HOME/evals`` (else the user data dir's): journals and documents."""
    from fanout.history import history_path

    return history_path(environ).parent / "evals"


def new_eval_id() -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{uuid.uuid4().hex[:6]}"


def resumable(folder: Path, key: str) -> str | None:
    """The newest eval of ``key`` that has a journal and no document: one cut short."""
    found: list[tuple[float, str]] = []
    try:
        journals = list(folder.glob("*.jsonl"))
    except OSError:
        return None
    for journal in journals:
        if journal.with_suffix(".json").exists():
            continue
        header = _header(journal)
        if header is not None and header.get("key") == key:
            found.append((journal.stat().st_mtime, journal.stem))
    return max(found)[1] if found else None


def _header(journal: Path) -> dict[str, object] | None:
    try:
        with journal.open("rb") as lines:
            first = lines.readline(1 << 20)
        value = json.loads(first)
    except (OSError, ValueError, RecursionError):
        return None
    header = value.get("fanout_eval") if isinstance(value, dict) else None
    return header if isinstance(header, dict) else None


def write_header(out: TextIO, key: str, plan: EvalPlan, eval_id: str) -> None:
    header = {
        "fanout_eval": {
            "format": JOURNAL_FORMAT,
            "id": eval_id,
            "key": key,
            "file": plan.spec.source,
            "personas": plan.names,
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    }
    out.write(json_line(header) + "\n")
    out.flush()


def read_journal(journal: Path) -> EvalResults:
    """The results an eval's journal holds: every call that ended well (the others are asked
    again); a line cut short by a kill is skipped."""
    results = EvalResults()
    for (case, call_id), entry in answered_jobs(journal, keep_answers=True).items():
        if isinstance(entry, dict):
            results.calls[(case, call_id)] = result_from_entry({**entry, "call_id": call_id})
    return results


def make_private_dir(folder: Path) -> None:
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {folder}: {exc.strerror}") from None


def elapsed_since(started: float) -> float:
    return round(time.perf_counter() - started, 1)


def stat_mtime(path: Path) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0
