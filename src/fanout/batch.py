"""Batch mode: every prompt of a file x every persona, with the limits, retries and budget of
``ask``, results written as JSON lines the moment each one completes.

Memory stays flat as the job grows: prompts are read one at a time as workers free up, and
results go straight to the output. Re-running the same command with the same output resumes:
the (prompt id, persona) pairs already answered there are not asked again.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import re
import stat
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TextIO, TypeVar, TypeVarTuple

import anyio
import anyio.abc

from fanout.api import Plan, prepare
from fanout.config import base_url_problem, file_kind, open_regular_file
from fanout.cost import Pricing
from fanout.engine import Engine, RunContext, Stage, stage_calls
from fanout.errors import ConfigError, FanoutError, ProviderError, StdoutClosed
from fanout.event import (
    CallFinished,
    CallRetrying,
    CallSending,
    CallWaiting,
    Event,
    Observer,
    RunStarted,
    StageFinished,
)
from fanout.export import SCHEMA_VERSION, call_document, json_line, result_from_entry
from fanout.jobs import run_pool
from fanout.models import (
    Agent,
    AgentError,
    Attachment,
    Call,
    CallResult,
    Completion,
    Endpoint,
    Usage,
    chat_messages,
)
from fanout.output import silence_stdout
from fanout.provider import OpenAIProvider, request_line
from fanout.retry import RetryPolicy, call_with_retries

FORMATS = (".jsonl", ".ndjson", ".txt", ".csv")
T = TypeVar("T")
Args = TypeVarTuple("Args")
# The jobs an earlier run answered: (prompt id, call id) -> its result line (True: not kept).
Answered = dict[tuple[str, str], dict[str, object] | bool]


@dataclass(frozen=True)
class BatchPrompt:
    id: str
    prompt: str


def read_prompts(path: Path) -> Iterator[BatchPrompt]:
    """The prompts of ``path``, one at a time: ``.jsonl`` (objects with ``prompt`` and an
    optional ``id``, or plain strings), ``.txt`` (one a line) or ``.csv`` (a ``prompt`` column,
    an optional ``id`` column). Without an id, a prompt's id is its line or row number."""
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(f"{path}: a batch file is .jsonl, .txt or .csv, not {suffix or '?'}")
    seen: set[str] = set()
    with open_regular_file(path, "a batch file") as raw:
        lines = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        try:
            reader = _csv_rows if suffix == ".csv" else _jsonl_rows if suffix != ".txt" else None
            rows = reader(path, lines) if reader else _txt_rows(lines)
            for where, item in rows:
                if item.id in seen:
                    raise ConfigError(f"{path}:{where}: id {item.id!r} appears twice")
                seen.add(item.id)
                yield item
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not UTF-8 text") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None


def _txt_rows(lines: TextIO) -> Iterator[tuple[int, BatchPrompt]]:
    for number, line in enumerate(lines, 1):
        if line.strip():
            yield number, BatchPrompt(str(number), line.strip())


def _jsonl_rows(path: Path, lines: TextIO) -> Iterator[tuple[int, BatchPrompt]]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{number}: not JSON: {exc.msg}") from None
        except ValueError:  # an integer of thousands of digits
            raise ConfigError(f"{path}:{number}: a number too long to read") from None
        except RecursionError:
            raise ConfigError(f"{path}:{number}: nested too deeply") from None
        if isinstance(item, str):
            item = {"prompt": item}
        prompt = item.get("prompt") if isinstance(item, dict) else None
        if not isinstance(prompt, str) or not prompt.strip():
            raise ConfigError(f'{path}:{number}: needs a non-empty "prompt" string')
        raw_id = item.get("id", number)
        if not isinstance(raw_id, str | int) or isinstance(raw_id, bool):
            raise ConfigError(f'{path}:{number}: "id" must be a string or a number')
        for name, text in (("prompt", prompt), ("id", str(raw_id))):
            if not _is_text(text):  # a "\ud800" escape: no request or output line can hold it
                raise ConfigError(f'{path}:{number}: the "{name}" holds a lone surrogate escape')
        yield number, BatchPrompt(str(raw_id), prompt.strip())


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _csv_rows(path: Path, lines: TextIO) -> Iterator[tuple[int, BatchPrompt]]:
    _allow_long_csv_fields()
    reader = csv.DictReader(lines)
    try:
        if reader.fieldnames is None or "prompt" not in reader.fieldnames:
            raise ConfigError(f"{path}: the CSV needs a 'prompt' column")
        for number, row in enumerate(reader, 2):
            prompt = (row.get("prompt") or "").strip()
            if not prompt:
                raise ConfigError(f"{path}:{number}: empty prompt")
            yield number, BatchPrompt((row.get("id") or "").strip() or str(number - 1), prompt)
    except csv.Error as exc:
        raise ConfigError(f"{path}:{reader.line_num}: not valid CSV: {exc}") from None


def _allow_long_csv_fields() -> None:
    """A prompt can be a long document: the csv module's 128 KB field limit is not ours (a
    field is read whole either way, like a long line of a .txt or .jsonl file)."""
    try:
        csv.field_size_limit(sys.maxsize)
    except OverflowError:  # a C long of 32 bits
        csv.field_size_limit(2**31 - 1)


def count_prompts(path: Path) -> int:
    """How many prompts ``path`` holds (one cheap pass, for the progress bar)."""
    return sum(1 for _ in read_prompts(path))


def open_results(output: Path) -> TextIO:
    """The output, opened to add lines, and locked for as long as it is open: a second batch
    on the same file would ask (and pay for) every pair again. A last line cut short by a
    crash is ended first, so the next result starts on a line of its own (the cut one is
    skipped when resuming)."""
    try:
        # O_NONBLOCK: a FIFO must not block the open; it is refused just below.
        fd = os.open(output, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o666)
    except OSError as exc:
        raise ConfigError(f"--output: cannot write {str(output)!r}: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError(f"--output: {output} {file_kind(mode)}, not a results file")
        _lock(fd, output)
        os.set_blocking(fd, True)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            os.write(fd, b"\n")
    except OSError as exc:
        os.close(fd)
        raise ConfigError(f"--output: cannot write {str(output)!r}: {exc.strerror}") from None
    except ConfigError:
        os.close(fd)
        raise
    return _ResultsFile(fd)


def _lock(fd: int, output: Path) -> None:
    """An advisory lock that lives as long as ``fd`` (it goes with the process, even on
    ``kill -9``): one batch per output file at a time."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _lock_holder(fd)
        who = f" (pid {holder})" if holder else ""
        raise ConfigError(
            f"--output: {output} is being written by another fanout batch{who}; wait for it "
            "to end, or write to another file"
        ) from None
    except OSError:
        pass  # a file system without locks: carry on unlocked, as before


def _lock_holder(fd: int) -> int | None:
    """Which process holds the lock on ``fd``'s file, from ``/proc/locks`` (Linux only;
    lines like ``1: FLOCK  ADVISORY  WRITE 7110 fe:00:2146490 0 EOF``)."""
    info = os.fstat(fd)
    device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}"
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as locks:
            table = [line.split() for line in locks]
    except OSError:
        return None
    # Some file systems (overlayfs) show the kernel a device number other than st_dev's:
    # then the inode alone decides, if it is unambiguous.
    held = [f for f in table if len(f) > 5 and f[1] == "FLOCK" and f[4].isdigit()]
    same = [f for f in held if f[5] == f"{device}:{info.st_ino}"]
    if not same:
        same = [f for f in held if f[5].rsplit(":", 1)[-1] == str(info.st_ino)]
    return int(same[0][4]) if len(same) == 1 else None


class _ResultsFile(io.TextIOWrapper):
    """The output file of a batch. Two things an ordinary text file does not do:

    * after a write or flush failed (a full disk), ``close()`` does not raise again while
      re-flushing what could not be written: the first error is the one to report;
    * text that UTF-8 cannot hold (a lone surrogate from a server) is written as its JSON
      escape (``\\ud800``), which reads back as the same string, instead of failing."""

    def __init__(self, fd: int) -> None:
        super().__init__(
            io.BufferedWriter(io.FileIO(fd, "a")), encoding="utf-8", errors="backslashreplace"
        )
        self._failed = False

    def write(self, text: str) -> int:
        try:
            return super().write(text)
        except OSError:
            self._failed = True
            raise

    def flush(self) -> None:
        try:
            super().flush()
        except OSError:
            self._failed = True
            raise

    def close(self) -> None:
        failed_before = self._failed
        try:
            super().close()  # closes the file (and drops the lock) even when the flush fails
        except OSError as exc:
            if not failed_before:
                raise FanoutError(f"cannot write the results: {exc.strerror or exc}") from None


def answered_jobs(output: Path | None, *, keep_answers: bool) -> Answered:
    """The (prompt id, call id) pairs an earlier run already answered in ``output``; with
    ``keep_answers``, their entries too (the synthesis of a resumed prompt needs them).
    Lines of version 1 (no ``call_id``) are keyed by their persona or synthesis."""
    done: Answered = {}
    if output is None or not _exists(output):
        return done
    with open_regular_file(output, "a results file") as lines:
        for line in lines:
            try:
                entry = json.loads(line)
            except (ValueError, RecursionError):
                # The last line of a run that was killed mid-write, cut anywhere, even inside
                # a character (UnicodeDecodeError is a ValueError): not an answer.
                continue
            if isinstance(entry, dict) and entry.get("status") == "ok":
                key = (str(entry.get("id")), line_call_id(entry))
                done[key] = entry if keep_answers else True
    return done


def line_call_id(entry: Mapping[str, object]) -> str:
    """The call a result line answers (a version 1 line names only its persona)."""
    call_id = entry.get("call_id")
    if isinstance(call_id, str) and call_id:
        return call_id
    stage = "synthesis" if entry.get("synthesis") is True else "panel"
    return f"{stage}/{entry.get('name')}"


def _exists(path: Path) -> bool:
    try:
        os.stat(path)
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        return True  # let opening it say what is wrong
    return True


@dataclass
class BatchTally:
    """What the batch did, for the progress bar and the summary line."""

    total: int = 0
    done: int = 0
    failed: int = 0
    answered: int = 0  # of those done, the answers (what makes a batch with failures partial)
    skipped: int = 0  # answered by an earlier run
    cached: int = 0  # answered by the response cache (--cache): nothing sent
    in_flight: int = 0
    waiting: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    unpriced: bool = False
    retries: int = 0
    sending: set[tuple[str, str]] = field(default_factory=set)  # attempts on their way
    waiting_for: set[tuple[str, str]] = field(default_factory=set)  # held by the rate limiter
    output: str | None = None  # where the results go, for the summary
    elapsed_s: float | None = None  # set when the batch is over

    def over(self, elapsed_s: float) -> None:
        """The batch ended (or was stopped): nothing is in flight or waiting any more."""
        self.sending.clear()
        self.waiting_for.clear()
        self.in_flight = self.waiting = 0
        self.elapsed_s = elapsed_s


class ResultWriter:
    """One JSON line per finished (prompt, call), flushed at once: ``id``, ``prompt``,
    ``synthesis`` (version 1's marker) and then the call's entry of the ``ask`` document."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def write(self, prompt: BatchPrompt, result: CallResult) -> None:
        line = {
            "schema_version": SCHEMA_VERSION,
            "id": prompt.id,
            "prompt": prompt.prompt,
            "synthesis": result.role == "synthesizer",
            **call_document(result),
        }
        self._line(line)

    def write_verdict(self, prompt: BatchPrompt, event: StageFinished) -> None:
        """What a stage decided for one prompt (a vote's tally, a judge's pick): ``id``,
        ``prompt``, ``stage``, ``kind`` and the verdict under its key. It has no ``status``, so
        resuming never takes it for an answer; for a prompt decided twice, the last line holds."""
        key = event.key or event.kind
        verdict = event.verdict.to_dict() if event.verdict is not None else None
        line = {
            "schema_version": SCHEMA_VERSION,
            "id": prompt.id,
            "prompt": prompt.prompt,
            "stage": event.stage,
            "kind": event.kind,
            "verdict": key,
            key: verdict,
        }
        self._line(line)

    def _line(self, line: dict[str, object]) -> None:
        try:
            self._out.write(json_line(line) + "\n")
            self._out.flush()
        except BrokenPipeError:
            # Whoever read the results stopped (`| head -1`): the batch ends quietly, as ask does.
            if self._out is sys.stdout:
                silence_stdout()
            raise StdoutClosed from None
        except OSError as exc:
            raise FanoutError(f"cannot write the results: {exc.strerror or exc}") from None


class _PromptObserver:
    """Hears one prompt's run; writes each result and each verdict, and keeps the tally."""

    def __init__(
        self,
        prompt: BatchPrompt,
        writer: ResultWriter,
        tally: BatchTally,
        shown: Observer,
        *,
        stop: Callable[[], None],
    ) -> None:
        self._prompt, self._writer, self._tally, self._shown = prompt, writer, tally, shown
        self._asked = False  # a call was made for this prompt in this run
        self._stop = stop
        # The write that failed (a full disk, a reader gone): the batch ends on it.
        self.error: FanoutError | StdoutClosed | None = None

    def handle(self, event: Event) -> None:
        try:
            self._record(event)
        except (FanoutError, StdoutClosed) as exc:
            self.error = self.error or exc
            self._stop()
            raise

    def _record(self, event: Event) -> None:
        tally = self._tally
        call = getattr(event, "call", None)
        key = (self._prompt.id, call.call_id) if call is not None else None
        # A decision (a keyed verdict), not what every stage draws (a synthesis' answer).
        decision = isinstance(event, StageFinished) and None not in (event.key, event.verdict)
        if decision and self._asked:
            assert isinstance(event, StageFinished)
            # A prompt resumed with nothing asked keeps the verdict line it already has.
            self._writer.write_verdict(self._prompt, event)
        elif isinstance(event, CallWaiting) and key is not None:
            tally.waiting_for.add(key)
        elif isinstance(event, CallSending) and key is not None:
            tally.waiting_for.discard(key)
            tally.sending.add(key)
        elif isinstance(event, CallRetrying) and key is not None:
            tally.retries += 1
            tally.sending.discard(key)  # backing off: not in flight until it is sent again
        elif isinstance(event, CallFinished) and key is not None:
            tally.sending.discard(key)
            tally.waiting_for.discard(key)
            result = event.result
            if result.status != "cancelled":  # a cancelled one is not finished: a re-run asks it
                self._asked = True
                self._writer.write(self._prompt, result)
                tally.done += 1
                tally.failed += result.status != "ok"
                tally.answered += result.status == "ok"
                tally.cached += result.cached
                tally.tokens += result.usage.total_tokens
                if result.cost_usd is not None:
                    tally.cost_usd += result.cost_usd
                elif result.usage.total_tokens:
                    tally.unpriced = True
        tally.in_flight, tally.waiting = len(tally.sending), len(tally.waiting_for)
        self._shown.handle(event)


async def run_batch(
    prompts: Iterator[BatchPrompt],
    plan: Plan,
    *,
    engine: Engine,
    writer: ResultWriter,
    tally: BatchTally,
    answered: Answered,
    shown: Observer,
    traced: Callable[[], Observer] | None = None,
) -> None:
    """Ask every prompt x persona not yet answered; ``concurrency`` prompts are in progress at
    once (their calls share the engine's limits), the next read only as one finishes. Each
    prompt is ``plan`` asked that prompt, through the API as any run (a vote, a judge...).
    ``traced``: a new observer for each prompt's run (its OpenTelemetry spans); each prompt is
    a trace of its own, or a child of the span the plan's request continues."""
    send, receive = anyio.create_memory_object_stream[BatchPrompt](0)
    if traced is None and independent_calls(plan.stages):  # the fast path: see run_flat
        context = plan.context()
        await run_flat(prompts, plan.stages[0], context, engine, writer, tally, answered, shown)
        return
    by_prompt: dict[str, dict[str, CallResult]] = {}
    for (prompt_id, call_id), entry in answered.items():
        by_prompt.setdefault(prompt_id, {})[call_id] = _answered_result(entry, call_id)

    async def worker(inbox: anyio.abc.ObjectReceiveStream[BatchPrompt]) -> None:
        async with inbox:
            async for prompt in inbox:
                await ask_one(prompt)

    async def ask_one(prompt: BatchPrompt) -> None:
        kept = by_prompt.pop(prompt.id, {})
        tally.skipped += len(kept)
        with anyio.CancelScope() as scope:
            written = _PromptObserver(prompt, writer, tally, shown, stop=scope.cancel)
            observers: list[Observer] = [written]
            if traced is not None:
                observers.append(_OnceAsked(traced()))
            execution = prepare(
                plan.asking(prompt.prompt), observers, engine=engine, kept=kept, check=False
            )
            try:
                await execution.execute()
            finally:  # interrupted too: RunFinished ends the prompt's run span, calls cut short
                execution.conclude()
        if written.error is not None:  # a result that could not be written ends the batch
            raise written.error

    async with anyio.create_task_group() as tg:
        for _ in range(engine.settings.concurrency):
            tg.start_soon(worker, receive.clone())
        receive.close()
        async with send:
            for prompt in prompts:
                await send.send(prompt)


def independent_calls(stages: Sequence[Stage]) -> bool:
    """Whether a prompt's plan is one stage of independent calls that decides nothing and
    grows nothing (a plain panel, repeats included): then every call of the batch can be
    made on its own, in any order, with no run around it."""
    if len(stages) != 1:
        return False
    stage = stages[0]
    return stage.key is None and getattr(stage, "follow", None) is None


async def run_flat(
    prompts: Iterator[BatchPrompt],
    stage: Stage,
    context: RunContext,
    engine: Engine,
    writer: ResultWriter,
    tally: BatchTally,
    answered: Mapping[tuple[str, str], dict[str, object] | bool],
    shown: Observer,
) -> None:
    """``run_batch`` for a plan of independent calls: one flat stream of prompt x call jobs
    through a fixed pool of workers (``jobs.run_pool``), at most ``concurrency`` calls in
    flight and nothing made for a call before a worker takes it. Each prompt's calls are
    built by its stage as an ``Execution`` would, and written as the same lines."""

    def jobs() -> Iterator[tuple[Call, Observer]]:
        for prompt in prompts:
            # A write that fails raises out of the call and ends the pool (and the batch).
            observer = _PromptObserver(prompt, writer, tally, shown, stop=_nothing)
            asked = replace(context, prompt=prompt.prompt, stages={})
            for call in stage_calls(stage, asked, engine.settings):
                if (prompt.id, call.call_id) in answered:
                    tally.skipped += 1
                else:
                    yield call, observer

    def start(job: tuple[Call, Observer]) -> tuple[Call, Observer]:
        return job

    def finish(job: tuple[Call, Observer], result: CallResult) -> None:
        pass  # the prompt's observer wrote it when it finished

    await run_pool(engine, jobs(), start, finish)


def _nothing() -> None:
    pass


class _OnceAsked:
    """Hands a prompt's events on only once one of its calls is made: a prompt an earlier
    batch answered whole is no run of this one (no empty span for it)."""

    def __init__(self, inner: Observer) -> None:
        self._inner = inner
        self._started: RunStarted | None = None
        self._live = False

    def handle(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self._started = event
            return
        if not self._live:
            if not isinstance(event, CallWaiting | CallSending | CallFinished):
                return
            self._live = True
            if self._started is not None:
                self._inner.handle(self._started)
        self._inner.handle(event)


def _answered_result(entry: dict[str, object] | bool, call_id: str) -> CallResult:
    if isinstance(entry, dict):
        return result_from_entry({**entry, "call_id": call_id})
    stage, _, name = call_id.partition("/")
    return CallResult(name, "", "ok", answer="", call_id=call_id, stage=stage)  # text not kept


# -- the provider's Batch API (``--via openai-batch``) ------------------------------------------

_DONE_STATES = {"completed", "failed", "expired", "cancelled"}
_NUDGE = StageFinished("batch", "batch", None)  # redraws the progress bar while polling


async def run_via_batch_api(
    prompts: Iterator[BatchPrompt],
    agents: Sequence[Agent],
    *,
    provider: OpenAIProvider,
    pricing: Pricing,
    writer: ResultWriter,
    tally: BatchTally,
    answered: Answered,
    state_file: Path,
    poll_s: float,
    shown: Observer,
    say: Callable[[str], None],
    attachments: Sequence[Attachment] = (),
) -> None:
    """Hand the unanswered jobs to the provider's Batch API (one batch per endpoint), wait for
    them and write the results as the same lines as a direct batch; each request carries
    ``attachments`` (``-f``) as a direct call would.

    ``state_file`` is written at every step (the uploaded file, then the batch id, each tagged
    with a token kept in the batch's metadata), so a re-run after a crash or Ctrl-C picks the
    same batches up again instead of paying twice, submits what was never submitted, and
    writes no result twice. A batch that ends failed or expired is dropped from the state once
    its answers are written: the next run asks the rest again."""
    texts: dict[str, str] = {}
    by_name = {a.name: a for a in agents}
    jobs_by_endpoint: dict[Endpoint, list[tuple[str, Agent]]] = {}
    for prompt in prompts:
        texts[prompt.id] = prompt.prompt
        for agent in agents:
            if (prompt.id, f"panel/{agent.name}") in answered:
                tally.skipped += 1
            else:
                jobs_by_endpoint.setdefault(agent.endpoint, []).append((prompt.id, agent))
    state = _load_state(state_file)
    pending = {(e["base_url"], e["api_key_env"]) for e in state}
    for endpoint, jobs in jobs_by_endpoint.items():
        if (endpoint.base_url, endpoint.api_key_env) in pending:
            continue  # submitted by an earlier run: picked up below
        file_id = await _upload(provider, endpoint, jobs, texts, attachments)
        entry = {"base_url": endpoint.base_url, "api_key_env": endpoint.api_key_env}
        state.append({**entry, "input_file_id": file_id, "token": uuid.uuid4().hex, "id": ""})
        _save_state(state_file, state)
    for entry in state:
        if not entry["id"]:
            endpoint = Endpoint(entry["base_url"], entry["api_key_env"])
            found = await _retried(provider.find_batch, endpoint, entry["token"])
            entry["id"] = found or await provider.create_batch(
                endpoint, entry["input_file_id"], entry["token"]
            )
            _save_state(state_file, state)
    tally.in_flight = sum(len(jobs) for jobs in jobs_by_endpoint.values())
    for entry in list(state):
        endpoint = Endpoint(entry["base_url"], entry["api_key_env"])
        while True:
            status = await _retried(provider.batch_state, endpoint, entry["id"])
            if status.status in _DONE_STATES:
                break
            shown.handle(_NUDGE)  # a nudge for the progress bar
            await anyio.sleep(poll_s)
        for results in (status.output_file_id, status.error_file_id):
            if results:
                content = await _retried(provider.batch_file, endpoint, results)
                _write_batch_results(content, by_name, texts, pricing, writer, tally, answered, say)
        if status.status != "completed":
            say(
                f"batch {entry['id']} ended {status.status} with {status.completed} of "
                f"{status.total} answered; run the same command again to ask the rest"
            )
        state.remove(entry)
        _save_state(state_file, state)
    unanswered = sum(
        1
        for jobs in jobs_by_endpoint.values()
        for p, a in jobs
        if (p, f"panel/{a.name}") not in answered
    )
    tally.failed += unanswered
    tally.in_flight = 0


async def _retried(call: Callable[[*Args], Awaitable[T]], *args: *Args) -> T:
    """A Batch API call, with the retry policy of every other call (a poll that meets a
    passing 503 must not end a day-long wait)."""
    return await call_with_retries(lambda _: call(*args), RetryPolicy(retries=3))


async def _upload(
    provider: OpenAIProvider,
    endpoint: Endpoint,
    jobs: list[tuple[str, Agent]],
    texts: dict[str, str],
    attachments: Sequence[Attachment],
) -> str:
    """Upload the Batch API's input file for ``endpoint``; the file's id. The file lives in a
    directory of its own under the system's temporary directory (``$TMPDIR``), removed when
    the upload ends however it ends (done, failed, Ctrl-C): never left beside the output."""
    with tempfile.TemporaryDirectory(prefix="fanout-batch-") as directory:
        requests = Path(directory) / "requests.jsonl"
        _write_requests(requests, jobs, texts, attachments)
        return await _retried(provider.upload_batch_file, endpoint, requests)


def _write_requests(
    path: Path,
    jobs: list[tuple[str, Agent]],
    texts: dict[str, str],
    attachments: Sequence[Attachment] = (),
) -> None:
    """The Batch API's input file: one chat request a line, ``custom_id`` = [prompt id, name]."""
    try:
        with path.open("w", encoding="utf-8") as out:
            for prompt_id, agent in jobs:
                messages = chat_messages(agent, texts[prompt_id])
                if attachments:
                    from fanout.attachments import attached

                    messages = list(attached(messages, attachments))
                custom_id = json.dumps([prompt_id, agent.name])
                out.write(json.dumps(request_line(custom_id, agent, messages)) + "\n")
    except OSError as exc:
        raise FanoutError(f"cannot write the Batch API requests ({path}): {exc.strerror}") from None


def _save_state(state_file: Path, state: list[dict[str, str]]) -> None:
    """Remember the submitted batches (or forget them all: ``state`` empty). The file is
    replaced whole: a run killed while writing it leaves the old state, not half of the new
    one, which would lose the ids of batches already paid for."""
    if not state:
        state_file.unlink(missing_ok=True)
        return
    partial = state_file.with_name(f".{state_file.name}.{os.getpid()}.partial")
    try:
        partial.write_text(json.dumps({"batches": state}), encoding="utf-8")
        os.replace(partial, state_file)
    except OSError as exc:
        raise FanoutError(f"cannot write {state_file}: {exc.strerror}") from None
    finally:
        partial.unlink(missing_ok=True)  # gone already once it replaced the state


def _load_state(state_file: Path) -> list[dict[str, str]]:
    if not _exists(state_file):
        return []
    with open_regular_file(state_file, "a batch state file") as source:
        raw = source.read(MAX_STATE_BYTES + 1)
    try:
        batches = json.loads(raw)["batches"]
    except (ValueError, KeyError, TypeError, RecursionError):
        batches = None
    if not isinstance(batches, list) or not all(_usable_entry(e) for e in batches):
        raise ConfigError(f"{state_file}: not a fanout batch state file")
    return [dict(entry) for entry in batches]


MAX_STATE_BYTES = 1024 * 1024  # a few lines per endpoint


def _usable_entry(entry: object) -> bool:
    """A submitted batch the run can act on: where it went and its id or, if it was never
    acknowledged, the uploaded file and the token to look it up by."""
    if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
        return False
    needed = ["base_url", "api_key_env", "id"]
    needed += [] if entry.get("id") else ["input_file_id", "token"]
    if not all(entry.get(key) or key == "id" for key in needed) or "id" not in entry:
        return False
    return base_url_problem(entry["base_url"]) is None


def _write_batch_results(
    content: bytes,
    by_name: dict[str, Agent],
    texts: dict[str, str],
    pricing: Pricing,
    writer: ResultWriter,
    tally: BatchTally,
    answered: Answered,
    say: Callable[[str], None],
) -> None:
    """Write one line per result not written yet; answered ones join ``answered``. A line that
    cannot be read is that request's error when its ``custom_id`` can still be found (a re-run
    asks it again), else skipped with a warning: one bad line never costs the others."""
    # Split on newlines only: str.splitlines() would also cut at U+2028 inside an answer.
    for number, line in enumerate(content.decode("utf-8", "replace").split("\n"), 1):
        if not line.strip():
            continue
        key, item = _result_line(line)
        if key is None:
            say(f"skipped line {number} of a Batch API result file: not a result fanout can read")
            continue
        prompt_id, name = key
        agent = by_name.get(name)
        if agent is None or prompt_id not in texts or (prompt_id, f"panel/{name}") in answered:
            continue
        result = CallResult(name, agent.model, attempts=1)
        try:
            completion = _batch_completion(item)
        except ProviderError as exc:
            result.status = "error"
            result.error = AgentError(exc.kind, exc.message, exc.status_code, exc.retryable)
        else:
            result.status, result.answer = "ok", completion.text
            result.usage = completion.usage or Usage()
            result.cost_usd = pricing.cost(agent.model, result.usage)
        writer.write(BatchPrompt(prompt_id, texts[prompt_id]), result)
        if result.status == "ok":
            answered[(prompt_id, result.call_id)] = True
            tally.answered += 1
        tally.done += 1
        tally.in_flight = max(tally.in_flight - 1, 0)
        tally.tokens += result.usage.total_tokens
        if result.cost_usd is not None:
            tally.cost_usd += result.cost_usd


_CUSTOM_ID = re.compile(r'"custom_id"\s*:\s*("(?:[^"\\]|\\.)*")')


def _result_line(line: str) -> tuple[tuple[str, str] | None, dict[str, object] | None]:
    """The job a result line is for (``None``: cannot tell) and the line as JSON (``None``:
    it is not; its ``custom_id`` may still be found in the text, if the line was cut after)."""
    try:
        item = json.loads(line)
    except (ValueError, RecursionError):
        item = None
        found = _CUSTOM_ID.search(line)
        custom_id = _json_or_none(found.group(1)) if found else None
    else:
        if not isinstance(item, dict):
            return None, None
        custom_id = item.get("custom_id")
    job = _json_or_none(custom_id) if isinstance(custom_id, str) else None
    if isinstance(job, list) and len(job) == 2 and all(isinstance(p, str) for p in job):
        return (job[0], job[1]), item
    return None, None


def _json_or_none(text: str) -> object:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _batch_completion(item: dict[str, object] | None) -> Completion:
    """A result line's answer, or the ``ProviderError`` it amounts to; whatever its shape."""
    if item is None:
        raise ProviderError("a Batch API result line that is not JSON", kind="bad_response")
    response = item.get("response") or {}
    error = item.get("error")
    if error and not response:
        message = error.get("message") if isinstance(error, dict) else error
        raise ProviderError(str(message or "failed")[:500], kind="batch")
    status = response.get("status_code", 500) if isinstance(response, dict) else None
    if not isinstance(response, dict) or not isinstance(status, int) or isinstance(status, bool):
        raise ProviderError("a Batch API result of an unknown shape", kind="bad_response")
    try:
        return OpenAIProvider.batch_answer(status, response.get("body"))
    except (ValueError, TypeError, AttributeError, RecursionError):
        raise ProviderError("a Batch API result of an unknown shape", kind="bad_response") from None
