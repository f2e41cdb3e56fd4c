"""The command line's side of ``fanout eval``: find the personas and the grader, carry on an
interrupted eval or start one, show the progress, run the event loop, then print and write
what it found. (The eval itself is ``eval.py``; its document ``evalreport.py``.)"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import anyio

from fanout.batch import (
    Answered,
    BatchPrompt,
    BatchTally,
    ResultWriter,
    open_results,
    run_via_batch_api,
)
from fanout.config import (
    apply_model,
    bound_answer,
    check_credentials,
    find_config,
    load_panel,
    panel_from_mapping,
)
from fanout.cost import DEFAULT_COMPLETION_ESTIMATE, Pricing, most_tokens
from fanout.engine import Engine, RunSettings
from fanout.errors import ConfigError, FanoutError
from fanout.eval import (
    EvalPlan,
    EvalResults,
    EvalRun,
    PairPlan,
    _Journal,
    answer_call,
    evals_dir,
    grade_call,
    judge_calls,
    make_private_dir,
    new_eval_id,
    read_journal,
    resumable,
    rubrics,
    write_header,
)
from fanout.evalfile import EvalSpec, load_eval
from fanout.evalreport import EvalDocument, build_document, compare, csv_text, document_json
from fanout.files import write_whole
from fanout.jobs import quiet_collector
from fanout.models import Agent, Call
from fanout.output import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE
from fanout.provider import OpenAIProvider

if TYPE_CHECKING:
    from rich.console import Console

    from fanout.config import Panel

EXIT_REGRESSION = 4  # fanout eval compare: a case got worse
REPORTS = (".csv", ".html", ".htm", ".json")


@dataclass(frozen=True)
class EvalOptions:
    """``fanout eval``'s flags, as the driver takes them."""

    config: Path | None = None
    names: Sequence[str] | None = None
    personas: Sequence[tuple[str, str]] = ()
    model: str | None = None
    prompt: str | None = None
    grader: str | None = None
    pairwise: PairPlan | None = None
    settings: RunSettings = field(default_factory=RunSettings)
    outputs: Sequence[Path] = ()
    json_output: bool = False
    dry_run: bool = False
    fresh: bool = False
    via: str = "direct"
    poll_s: float = 30.0


def plan_eval(path: Path, options: EvalOptions) -> tuple[EvalPlan, Pricing]:
    """The eval file read, its personas and grader found: what would be asked."""
    spec = load_eval(path, options.prompt)
    panel = _panel(spec, options)
    chosen = apply_model(
        panel.select(list(options.names) if options.names else None), options.model
    )
    grader: Agent | None = None
    if spec.graded or options.pairwise is not None:
        named = options.grader or spec.grader
        grader = panel.select([named])[0] if named else panel.role("judge")
    pairwise = options.pairwise
    if pairwise is not None:
        if len(chosen) < 2:
            raise ConfigError("--pairwise needs two personas or more")
        if pairwise.reference is not None and pairwise.reference not in [a.name for a in chosen]:
            raise ConfigError(f"--reference {pairwise.reference!r}: not one of the personas asked")
    if options.settings.max_cost is not None:
        chosen = [bound_answer(a) for a in chosen]
        grader = bound_answer(grader) if grader is not None else None
    return EvalPlan(spec, tuple(chosen), grader, pairwise), Pricing.shipped(panel.pricing)


def _panel(spec: EvalSpec, options: EvalOptions) -> Panel:
    if spec.panel is not None:
        if options.config is not None:
            raise ConfigError(f"{spec.source} has its own agents: section; -c is not needed")
        panel = panel_from_mapping(spec.source, spec.text, spec.panel, os.environ)
    else:
        panel = load_panel(find_config(options.config, os.environ))
    return panel.with_personas(options.personas)


def worst_cases(plan: EvalPlan, pricing: Pricing) -> list[tuple[str, int, float | None]]:
    """``--dry-run``: each phase's most calls and their worst-case cost (a grade or judge
    prompt holds answers as long as the personas' max_tokens)."""
    answers: list[Call] = [answer_call(c, p) for c in plan.spec.cases for p in plan.personas]
    longest = max((p.max_tokens or DEFAULT_COMPLETION_ESTIMATE for p in plan.personas), default=0)
    grades: list[Call] = []
    judged: list[Call] = []
    grader = plan.grader
    for case in plan.spec.cases:
        if grader is None:
            break
        for persona in plan.names:
            grades += [
                grade_call(case, persona, i, a.text or "", "", grader) for i, a in rubrics(case)
            ]
        if plan.pairwise is not None:
            for first, second in plan.pairwise.pairs(case.id, plan.names):
                judged += judge_calls(case, first, second, {first: "", second: ""}, grader)
    rows = [
        ("answers", answers, 0),
        ("grades", grades, longest),
        ("pairwise judge", judged, 2 * longest),
    ]
    return [
        (name, len(calls), _worst(calls, pricing, extra)) for name, calls, extra in rows if calls
    ]


def _worst(calls: Sequence[Call], pricing: Pricing, extra: int) -> float | None:
    total = 0.0
    for call in calls:
        answer = call.agent.max_tokens or DEFAULT_COMPLETION_ESTIMATE
        worst = pricing.worst_case(call.agent.model, most_tokens(call.messages) + extra, answer)
        if worst is None:
            return None
        total += worst
    return total


def run_eval(path: Path, options: EvalOptions) -> int:
    """``fanout eval FILE``: run (or carry on) the eval, print the scorecard or the document,
    write the reports; the exit code."""
    from fanout.render import eval_plan_table, make_console, print_warning

    plan, pricing = plan_eval(path, options)
    for output in options.outputs:
        if output.suffix.lower() not in REPORTS:
            raise ConfigError(f"-o {output}: a report is .csv, .html or .json")
    if options.dry_run:
        table = eval_plan_table(worst_cases(plan, pricing), options.settings.max_cost)
        make_console().print(table)
        return EXIT_OK
    callers = [*plan.personas, *([plan.grader] if plan.grader else [])]
    check_credentials(callers, os.environ)
    err = make_console(stderr=True)
    folder = evals_dir(os.environ)
    make_private_dir(folder)
    key = plan.key()
    eval_id = None if options.fresh else resumable(folder, key)
    journal_path = folder / f"{eval_id or new_eval_id()}.jsonl"
    results = read_journal(journal_path) if eval_id else EvalResults()
    if eval_id:
        kept = len(results.calls)
        say = f"carrying on eval {eval_id}: {kept} calls already answered (--fresh starts over)"
        print_warning(err, say, style="dim")
    eval_id = journal_path.stem
    sink = open_results(journal_path)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    try:
        if not results.calls and sink.tell() == 0:
            write_header(sink, key, plan, eval_id)
        interrupted, tally = _drive(plan, pricing, options, results, sink, journal_path, err)
    finally:
        sink.close()
    finished = datetime.now(UTC).isoformat(timespec="seconds")
    document = build_document(plan, results, eval_id=eval_id, started_at=started,
                              finished_at=finished, interrupted=interrupted)  # fmt: skip
    if not interrupted:
        _store(folder / f"{eval_id}.json", document_json(document))
    _report(document, options, err, tally)
    if interrupted:
        print_warning(err, "interrupted: run the same command again to carry on")
        return EXIT_INTERRUPTED
    if tally.failed == 0:
        return EXIT_OK
    return EXIT_PARTIAL if tally.failed < tally.done else EXIT_FAILED


def _drive(
    plan: EvalPlan,
    pricing: Pricing,
    options: EvalOptions,
    results: EvalResults,
    sink: TextIO,
    journal_path: Path,
    err: Console,
) -> tuple[bool, BatchTally]:
    from fanout.interrupt import interruptibly
    from fanout.render import BatchProgress, print_warning

    tally = BatchTally(skipped=len(results.calls), output=None)
    provider = OpenAIProvider()
    callers = [*plan.personas, *([plan.grader] if plan.grader else [])]
    provider.prepare(a.endpoint for a in callers)
    engine = Engine(provider, callers, options.settings, pricing)
    started = time.perf_counter()
    cases = {c.id: c for c in plan.spec.cases}
    try:
        with BatchProgress(err, tally) as progress:
            journal = _Journal(ResultWriter(sink), results, tally, progress, cases)
            run = EvalRun(plan, engine, results, journal, tally)

            async def answers_via_batch_api() -> None:
                todo = list(run.unanswered())
                prompts = {case.id: case for case, _ in todo}
                answered: Answered = {k: True for k, r in results.calls.items() if r.status == "ok"}
                await run_via_batch_api(
                    iter(BatchPrompt(c.id, c.prompt) for c in prompts.values()),
                    list(plan.personas),
                    provider=provider,
                    pricing=pricing,
                    writer=ResultWriter(sink),
                    tally=tally,
                    answered=answered,
                    state_file=journal_path.with_name(journal_path.name + ".batches.json"),
                    poll_s=options.poll_s,
                    shown=progress,
                    say=lambda message: print_warning(err, message),
                )
                results.calls.update(read_journal(journal_path).calls)

            async def body() -> None:
                if options.via == "openai-batch":
                    await answers_via_batch_api()
                else:
                    await run.answers()
                await run.grades()
                await run.pairs()

            with quiet_collector():
                interrupted: bool = anyio.run(interruptibly, body, provider.aclose)
    finally:
        tally.over(round(time.perf_counter() - started, 1))
    return interrupted, tally


def _store(path: Path, text: str) -> None:
    try:
        write_whole(path, text)
    except OSError as exc:
        raise FanoutError(f"cannot write {path}: {exc.strerror}") from None


def report_text(document: EvalDocument, suffix: str) -> str:
    """The report a file of this suffix holds: CSV, HTML or the JSON document."""
    from fanout.evalpage import html_report

    if suffix == ".csv":
        return csv_text(document)
    if suffix in (".html", ".htm"):
        return html_report(document)
    return document_json(document)


def _report(document: EvalDocument, options: EvalOptions, err: Console, tally: BatchTally) -> None:
    from fanout.render import batch_summary, leaderboard_table, make_console, scorecard_table

    for output in options.outputs:
        _store(output, report_text(document, output.suffix.lower()))
    err.print(f"eval {document['id']}: " + batch_summary(tally), soft_wrap=True, highlight=False)
    if options.json_output:
        _write_stdout(document_json(document))
        return
    out = make_console()
    out.print(scorecard_table(document["scorecard"], document["noise"]))
    if "leaderboard" in document:
        out.print(leaderboard_table(document["leaderboard"], document["pairs"]))


def _write_stdout(text: str) -> None:
    from fanout.output import write_stdout

    write_stdout(text)


def load_document(reference: str) -> EvalDocument:
    """An eval's document: a JSON file (``--json`` or ``-o FILE.json``), or a recorded eval
    by its id or a unique prefix of it."""
    path = Path(reference)
    if not path.is_file():
        folder = evals_dir(os.environ)
        found = sorted(p for p in folder.glob(f"{reference}*.json")) if folder.is_dir() else []
        if len(found) != 1:
            what = "no eval" if not found else f"{len(found)} evals"
            raise ConfigError(f"{reference!r}: {what} with that id (or file)")
        path = found[0]
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise ConfigError(f"{path}: not an eval document ({exc})") from None
    if not isinstance(value, dict) or not isinstance(value.get("cases"), list):
        raise ConfigError(f"{path}: not an eval document (no cases)")
    return _as_document(value)


def _as_document(value: dict[str, object]) -> EvalDocument:
    """A JSON object read back as a document (its cells are checked as they are used)."""
    document: EvalDocument = {}
    document.update(value)  # type: ignore[typeddict-item]
    return document


def compare_evals(before: str, after: str, json_output: bool) -> int:
    from fanout.render import eval_changes_text

    worse, better = compare(load_document(before), load_document(after))
    if json_output:
        _write_stdout(json.dumps({"worse": worse, "better": better}, indent=2) + "\n")
    else:
        _write_stdout(eval_changes_text(worse, better))
    return EXIT_REGRESSION if worse else EXIT_OK


def check_file(path: Path, prompt: str | None) -> int:
    """``fanout eval check``: every problem a line on stderr (exit 2), or what the file holds."""
    from fanout.evalfile import read_eval

    spec, problems = read_eval(path, prompt)
    for problem in problems:
        sys.stderr.write(f"fanout: error: {problem}\n")
    if problems or spec is None:
        return EXIT_USAGE
    checks = [a for c in spec.cases for a in c.assertions]
    graded = sum(a.graded for a in checks)
    _write_stdout(
        f"{path}: ok: {len(spec.cases)} cases, {len(checks)} assertions ({graded} graded)\n"
    )
    return EXIT_OK


def list_evals(json_output: bool) -> None:
    """``fanout eval list``: the finished evals, newest first."""
    folder = evals_dir(os.environ)
    found = sorted(folder.glob("*.json"), reverse=True) if folder.is_dir() else []
    rows: list[dict[str, object]] = []
    for path in found:
        try:
            document = _as_document(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, RecursionError, ConfigError):
            continue
        rates = {r["persona"]: r["pass_rate"] for r in document.get("scorecard", [])}
        rows.append({"id": path.stem, "file": document.get("file"), "pass_rates": rates})
    if json_output:
        _write_stdout(json.dumps(rows, indent=2) + "\n")
        return
    lines = []
    for row in rows:
        given = row["pass_rates"]
        shown = (
            ", ".join(f"{p} {r:.0%}" for p, r in given.items()) if isinstance(given, dict) else ""
        )
        lines.append(f"{row['id']}  {row['file']}  {shown}")
    _write_stdout("\n".join(lines) + "\n" if lines else "no evals recorded yet\n")
