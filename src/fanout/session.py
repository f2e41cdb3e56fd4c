"""One command's work, wired end to end: config -> runner (with displays and history) -> output.

``cli`` parses flags and maps errors to exit codes; everything a command does between those
two ends is here, so ``ask``, ``runs retry`` and ``runs synth`` share one way of running.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import anyio
from platformdirs import user_cache_path

from fanout.batch import (
    BatchTally,
    ResultWriter,
    answered_jobs,
    count_prompts,
    open_results,
    read_prompts,
    run_batch,
    run_via_batch_api,
)
from fanout.config import (
    Panel,
    apply_model,
    bound_answer,
    check_credentials,
    find_config,
    load_panel,
)
from fanout.cost import Pricing, plan_calls
from fanout.errors import ConfigError, FanoutError
from fanout.events import Broadcast, Observer
from fanout.export import (
    JsonlWriter,
    agent_from_settings,
    agent_settings,
    dumps,
    plan_document,
    report_document,
    report_from_document,
)
from fanout.history import History, HistoryRecorder, StoredRun, history_path
from fanout.local import LOCAL_URL, LocalServer, local_everyone, model_path, on_local, wants_local
from fanout.models import Agent, AgentResult, Endpoint, RunReport
from fanout.provider import OpenAIProvider
from fanout.render import (
    BatchProgress,
    LiveBoard,
    ProgressDisplay,
    batch_summary,
    make_console,
    plan_table,
    render_report,
    runs_table,
)
from fanout.retry import RetryPolicy
from fanout.runner import Engine, PanelRun, RunSettings, interruptibly, run_interruptibly

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_FOR_STATUS = {
    "completed": EXIT_OK,
    "partial": EXIT_PARTIAL,
    "failed": EXIT_FAILED,
    "cancelled": EXIT_INTERRUPTED,
    "interrupted": EXIT_INTERRUPTED,
    "running": EXIT_OK,
}
Mode = Literal["table", "json", "jsonl"]


@dataclass(frozen=True)
class Output:
    """Where the result goes: a table (live on a terminal), one JSON document, or JSON lines."""

    mode: Mode = "table"
    deltas: bool = False  # --jsonl-deltas
    file: Path | None = None  # -o


def ask(
    prompt: str,
    *,
    names: Sequence[str] | None,
    config: Path | None,
    model: str | None,
    synthesize: bool,
    settings: RunSettings,
    output: Output,
    dry_run: bool = False,
    log: bool = True,
    local: bool = False,
    local_model: Path | None = None,
    panel: Panel | None = None,
    recorded: tuple[list[Agent], Agent] | None = None,
) -> int:
    """``fanout ask`` (``panel``: already loaded, and pointed at the local server)."""
    panel_given = panel
    panel = panel or load_panel(find_config(config, os.environ))
    chosen = apply_model(panel.select(names), model)
    recorded_synthesizer = apply_model([panel.synthesizer], model)[0]
    synthesizer = recorded_synthesizer if synthesize else None
    local_wanted = wants_local([*chosen, recorded_synthesizer], local, os.environ)
    if panel_given is None and not dry_run and local_wanted:
        with _local_server(chosen, local, local_model, model is not None) as point_local:
            return ask(
                prompt,
                names=None,
                config=None,
                model=None,
                synthesize=synthesize,
                settings=settings,
                output=output,
                log=log,
                panel=replace(
                    panel,
                    agents=[point_local(a) for a in chosen],
                    synthesizer=point_local(recorded_synthesizer),
                ),
                # The history keeps `base_url: local`, not this run's port: a retry or a
                # re-synth starts a server of its own.
                recorded=(
                    [_as_local(a, local) for a in chosen],
                    _as_local(recorded_synthesizer, local),
                ),
            )
    if settings.max_cost is not None:
        # A budget needs a bound on every answer: personas without max_tokens get the default.
        chosen = [bound_answer(a) for a in chosen]
        synthesizer = bound_answer(synthesizer) if synthesizer else None
    pricing = Pricing.shipped(panel.pricing)
    if dry_run:
        if local_wanted:  # what --local would send, without starting anything
            everyone = local or local_everyone(os.environ)
            chosen = [
                on_local(a, LOCAL_URL, everyone=everyone, model_named=bool(model)) for a in chosen
            ]
            if synthesizer:
                synthesizer = on_local(
                    synthesizer, LOCAL_URL, everyone=everyone, model_named=bool(model)
                )
        calls = plan_calls(prompt, chosen, synthesizer, pricing)
        if output.mode == "json":
            sys.stdout.write(dumps(plan_document(prompt, calls, settings.max_cost)))
        else:
            make_console().print(plan_table(calls, settings.rpm, settings.max_cost))
        return EXIT_OK
    check_credentials(chosen + ([synthesizer] if synthesizer else []), os.environ)

    def make_run(observer: Observer, provider: OpenAIProvider) -> PanelRun:
        return PanelRun(
            prompt,
            chosen,
            provider=provider,
            settings=settings,
            synthesizer=synthesizer,
            observer=observer,
            pricing=pricing,
        )

    history = _open_history() if log else None
    with history or nullcontext():
        recorder = None
        if history is not None:
            recorder = HistoryRecorder(
                history,
                agents=[agent_settings(a) for a in (recorded[0] if recorded else chosen)],
                synthesizer=agent_settings(recorded[1] if recorded else recorded_synthesizer),
                settings=_settings_record(settings, synthesize, panel.pricing),
            )
        report = _drive(make_run, chosen, synthesizer, output, recorder)
    return _emit(report, output, recorder)


def retry(run_id: str, *, output: Output, log: bool = True) -> int:
    """``fanout runs retry``: ask again only the personas that have no answer."""
    with _open_history() as history, ExitStack() as stack:
        stored = history.load(history.resolve(run_id))
        before = report_from_document(stored.document)
        agents = _with_local(stack, [agent_from_settings(a) for a in stored.agents])
        done = [r for r in before.agents if r.status == "ok"]
        if len(done) == len(agents):
            raise ConfigError(f"run {stored.run_id}: every persona already answered")
        asked = [a for a in agents if a.name not in {r.name for r in done}]
        check_credentials(asked, os.environ)
        return _carry_on(history, stored, before, agents, done, None, asked, output, log)


def synth(run_id: str, *, model: str | None, output: Output, log: bool = True) -> int:
    """``fanout runs synth``: merge a stored run's answers again; no persona is asked."""
    with _open_history() as history, ExitStack() as stack:
        stored = history.load(history.resolve(run_id))
        before = report_from_document(stored.document)
        if stored.synthesizer is None:
            raise ConfigError(f"run {stored.run_id}: no synthesizer was recorded")
        recorded = apply_model([agent_from_settings(stored.synthesizer)], model)[0]
        synthesizer = _with_local(stack, [recorded])[0]
        check_credentials([synthesizer], os.environ)
        agents = [agent_from_settings(a) for a in stored.agents]
        return _carry_on(
            history, stored, before, agents, before.agents, synthesizer, [], output, log
        )


def _carry_on(
    history: History,
    stored: StoredRun,
    before: RunReport,
    agents: list[Agent],
    done: Sequence[AgentResult],
    synthesizer: Agent | None,
    asked: list[Agent],
    output: Output,
    log: bool,
) -> int:
    """A stored run taken up again (``retry``, ``synth``) with its recorded prompt and settings;
    the new work is folded into the same run."""
    settings, pricing = _settings_from_record(stored.settings)

    def make_run(observer: Observer, provider: OpenAIProvider) -> PanelRun:
        return PanelRun(
            stored.prompt,
            agents,
            provider=provider,
            settings=settings,
            synthesizer=synthesizer,
            observer=observer,
            pricing=pricing,
            done=done,
            run_id=stored.run_id,
        )

    recorder = HistoryRecorder(history, resume=True) if log else None
    report = _drive(make_run, asked, synthesizer, output, recorder, before=before)
    return _emit(report, output, recorder)


def batch(
    path: Path,
    *,
    names: Sequence[str] | None,
    config: Path | None,
    model: str | None,
    synthesize: bool,
    settings: RunSettings,
    output: Path | None,
    via: str = "direct",
    poll_s: float = 30.0,
    local: bool = False,
) -> int:
    """``fanout batch``: every prompt of ``path`` x every persona, as JSON lines."""
    panel = load_panel(find_config(config, os.environ))
    chosen = apply_model(panel.select(names), model)
    synthesizer = apply_model([panel.synthesizer], model)[0] if synthesize else None
    with ExitStack() as stack:
        if wants_local([*chosen, *([synthesizer] if synthesizer else [])], local, os.environ):
            on_local = stack.enter_context(_local_server(chosen, local, None, model is not None))
            chosen = [on_local(a) for a in chosen]
            synthesizer = on_local(synthesizer) if synthesizer else None
        return _batch(path, panel, chosen, synthesizer, settings, output, via, poll_s)


def _batch(
    path: Path,
    panel: Panel,
    chosen: list[Agent],
    synthesizer: Agent | None,
    settings: RunSettings,
    output: Path | None,
    via: str,
    poll_s: float,
) -> int:
    synthesize = synthesizer is not None
    if settings.max_cost is not None:
        chosen = [bound_answer(a) for a in chosen]
        synthesizer = bound_answer(synthesizer) if synthesizer else None
    callers = [*chosen, *([synthesizer] if synthesizer else [])]
    check_credentials(callers, os.environ)
    prompts = count_prompts(path)  # reads the whole file once: a bad line stops us before any call
    answered = answered_jobs(output, keep_answers=synthesize)
    tally = BatchTally(total=prompts * len(callers))
    err = make_console(stderr=True)
    provider = OpenAIProvider()
    provider.prepare(a.endpoint for a in callers)
    engine = Engine(provider, callers, settings, Pricing.shipped(panel.pricing))
    pricing = engine.pricing
    pricing = Pricing.shipped(panel.pricing)
    if via == "openai-batch":
        if synthesize:
            raise ConfigError("--synthesize needs the answers first: not with --via openai-batch")
        if output is None:
            raise ConfigError("--via openai-batch needs -o FILE (it keeps the batch ids beside it)")
        if settings.max_cost is not None:
            _check_batch_budget(path, chosen, pricing, settings.max_cost, answered)
    sink = open_results(output) if output is not None else sys.stdout
    try:
        with BatchProgress(err, tally) as progress:

            async def via_batch_api() -> None:
                assert output is not None
                await run_via_batch_api(
                    read_prompts(path),
                    chosen,
                    provider=provider,
                    pricing=pricing,
                    writer=ResultWriter(sink),
                    tally=tally,
                    answered=answered,
                    state_file=output.with_name(output.name + ".batches.json"),
                    poll_s=poll_s,
                    shown=progress,
                    say=lambda message: err.print(f"[yellow]{message}[/]", highlight=False),
                )

            async def main() -> bool:
                if via == "openai-batch":
                    return await interruptibly(via_batch_api, cleanup=provider.aclose)
                return await interruptibly(
                    lambda: run_batch(
                        read_prompts(path),
                        chosen,
                        synthesizer,
                        engine=engine,
                        writer=ResultWriter(sink),
                        tally=tally,
                        answered=answered,
                        shown=progress,
                    ),
                    cleanup=provider.aclose,
                )

            interrupted = anyio.run(main)
    finally:
        if output is not None:
            sink.close()
    err.print(batch_summary(tally), soft_wrap=True, highlight=False)
    if interrupted:
        err.print("[yellow]interrupted: run the same command again to carry on[/]")
        return EXIT_INTERRUPTED
    if tally.failed == 0:
        return EXIT_OK
    return EXIT_PARTIAL if tally.failed < tally.done else EXIT_FAILED


def _check_batch_budget(
    path: Path,
    agents: Sequence[Agent],
    pricing: Pricing,
    max_cost: float,
    answered: dict[tuple[str, str], Any],
) -> None:
    """A batch handed over whole cannot stop half-way: its worst case must fit up front."""
    from fanout.cost import DEFAULT_COMPLETION_ESTIMATE, most_tokens
    from fanout.models import chat_messages

    worst = 0.0
    for prompt in read_prompts(path):
        for agent in agents:
            if (prompt.id, agent.name) in answered:
                continue
            tokens = most_tokens(chat_messages(agent, prompt.prompt))
            answer = agent.max_tokens or DEFAULT_COMPLETION_ESTIMATE
            cost = pricing.worst_case(agent.model, tokens, answer)
            if cost is None:
                raise ConfigError(f"--max-cost: the price of {agent.model} is unknown")
            worst += cost
    if worst > max_cost:
        raise ConfigError(
            f"--max-cost: the batch could cost up to ${worst:.4f}, more than ${max_cost:g}; "
            "a Batch API job cannot stop half-way"
        )


def list_runs(limit: int, json_output: bool) -> None:
    """``fanout runs list``."""
    with _open_history() as history:
        summaries = history.list_runs(limit)
    if json_output:
        sys.stdout.write(dumps({"runs": [s.__dict__ for s in summaries]}))
    else:
        make_console().print(runs_table(summaries))


def show_run(run_id: str, json_output: bool) -> int:
    """``fanout runs show``: the run as ``ask`` showed it (``--json``: the same document)."""
    with _open_history() as history:
        stored = history.load(history.resolve(run_id))
    if json_output:
        sys.stdout.write(dumps(stored.document))
    else:
        render_report(make_console(), report_from_document(stored.document))
    return EXIT_FOR_STATUS.get(stored.document["status"], EXIT_OK)


def _drive(
    make_run: Any,
    asked: Sequence[Agent],
    synthesizer: Agent | None,
    output: Output,
    recorder: HistoryRecorder | None,
    *,
    before: RunReport | None = None,
) -> RunReport:
    """Run with the right display (panes on a terminal, JSON lines, or a spinner on stderr)
    and the history recorder listening; return the report."""
    out, err = make_console(), make_console(stderr=True)
    display: AbstractContextManager[Any]
    shown: Observer
    if output.mode == "jsonl":
        shown = JsonlWriter(sys.stdout, deltas=output.deltas)
        display = nullcontext()
    elif output.mode == "table" and out.is_terminal and not out.is_dumb_terminal:
        shown = display = LiveBoard(out, asked)
    else:
        shown = display = ProgressDisplay(err, len(asked))
    observer = Broadcast(shown, recorder) if recorder is not None else shown
    provider = OpenAIProvider()
    provider.prepare(a.endpoint for a in [*asked, *([synthesizer] if synthesizer else [])])

    async def main() -> RunReport:
        run: PanelRun = make_run(observer, provider)
        if recorder is not None and before is None:
            recorder.start(run.report())
        return await run_interruptibly(run, cleanup=provider.aclose)

    with display:
        report = anyio.run(main)
    if before is not None:
        report = _carried_on(before, report)
        if recorder is not None:
            recorder.finish(report)
    return report


def _carried_on(before: RunReport, after: RunReport) -> RunReport:
    """A retried or re-synthesized run keeps its start and adds the new work's duration. A new
    synthesis replaces the stored one only if it succeeded: a failed or interrupted re-synth
    never costs the run the answer it had."""
    synthesis = after.synthesis or before.synthesis
    if after.synthesis is not None and after.synthesis.status != "ok" and before.synthesis:
        synthesis = before.synthesis
    return replace(
        after,
        started_at=before.started_at,
        duration_s=round(before.duration_s + after.duration_s, 3),
        synthesis=synthesis,
    )


def _emit(report: RunReport, output: Output, recorder: HistoryRecorder | None) -> int:
    document = report_document(report)
    err = make_console(stderr=True)
    if output.mode == "json":
        sys.stdout.write(dumps(document))
    elif output.mode == "table":
        render_report(make_console(), report)
    if output.file is not None:
        try:
            output.file.write_text(dumps(document), encoding="utf-8")
        except OSError as exc:
            raise FanoutError(
                f"--output: cannot write {str(output.file)!r}: {exc.strerror}"
            ) from None
    if recorder is not None and recorder.error is not None:
        err.print(f"[yellow]warning: the run was not fully recorded: {recorder.error}[/]")
    if report.status == "cancelled":
        err.print("[yellow]interrupted: unfinished personas are marked cancelled[/]")
    return EXIT_FOR_STATUS[report.status]


@contextmanager
def _local_server(
    agents: Sequence[Agent], everyone: bool, model_file: Path | None, model_named: bool
) -> Iterator[Callable[[Agent], Agent]]:
    """Start the embedded llama.cpp server for the run; yield how to point an agent at it."""
    err = make_console(stderr=True)

    def say(message: str) -> None:
        err.print(f"[dim]{message}[/]", highlight=False)

    path = model_path(model_file, user_cache_path("fanout"), say)
    everyone = everyone or local_everyone(os.environ)
    with LocalServer(path, parallel=len(agents)) as base_url:
        yield lambda agent: on_local(agent, base_url, everyone=everyone, model_named=model_named)


def _as_local(agent: Agent, everyone: bool) -> Agent:
    """How a persona that ran on the local server is recorded: ``base_url: local``."""
    if everyone or local_everyone(os.environ):
        return replace(agent, endpoint=Endpoint(LOCAL_URL, agent.endpoint.api_key_env))
    return agent


def _with_local(stack: ExitStack, agents: list[Agent]) -> list[Agent]:
    """Recorded personas with ``base_url: local`` get a local server for this command."""
    if not any(a.endpoint.base_url == LOCAL_URL for a in agents):
        return agents
    on_local = stack.enter_context(_local_server(agents, False, None, True))
    return [on_local(a) for a in agents]


def _open_history() -> History:
    return History(history_path(os.environ))


def _settings_record(settings: RunSettings, synthesize: bool, pricing: Any) -> dict[str, Any]:
    return {
        "concurrency": settings.concurrency,
        "timeout": settings.timeout,
        "retries": settings.retry.retries,
        "max_retry_after": settings.retry.max_retry_after,
        "rpm": settings.rpm,
        "tpm": settings.tpm,
        "stream": settings.stream,
        "max_cost": settings.max_cost,
        "synthesize": synthesize,
        "pricing": {m: {"input": p.input, "output": p.output} for m, p in pricing.items()},
    }


def _settings_from_record(record: dict[str, Any]) -> tuple[RunSettings, Pricing]:
    """The recorded run settings (a budget is not carried over: it was the first run's)."""
    from fanout.cost import Price

    settings = RunSettings(
        concurrency=record.get("concurrency", 8),
        timeout=record.get("timeout", 120.0),
        retry=RetryPolicy(record.get("retries", 3), record.get("max_retry_after", 60.0)),
        rpm=record.get("rpm"),
        tpm=record.get("tpm"),
        stream=record.get("stream", True),
    )
    prices = {m: Price(p["input"], p["output"]) for m, p in record.get("pricing", {}).items()}
    return settings, Pricing.shipped(prices)
