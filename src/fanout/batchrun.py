"""``fanout batch``'s driver: the panel and its roles resolved once, every prompt of the file
run through the shared engine (or handed to the provider's Batch API), a progress bar on
stderr, the summary and the exit code."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from functools import partial
from pathlib import Path

import anyio

from fanout.api import Plan, RunRequest, engine_for, planned_calls, resolve
from fanout.batch import (
    Answered,
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
    check_credentials,
    find_config,
    load_panel,
)
from fanout.cost import Pricing
from fanout.drive import open_telemetry, say_aside
from fanout.engine import RunSettings
from fanout.errors import ConfigError
from fanout.interrupt import checkpoint, interruptibly
from fanout.jobs import quiet_collector
from fanout.local import local_server, wants_local
from fanout.models import Agent
from fanout.output import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL
from fanout.provider import OpenAIProvider
from fanout.render import BatchProgress, batch_summary, make_console, print_warning
from fanout.session import as_named
from fanout.shapes import shape_of
from fanout.tracing import trace_parent


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
    shape: str = "panel",
    options: Mapping[str, object] | None = None,
    personas: Sequence[tuple[str, str]] = (),
) -> int:
    """``fanout batch``: every prompt of ``path`` x every persona, as JSON lines (``shape``:
    each prompt run as a vote, a judge..., its verdict a line of its own; ``personas``: the
    ``-p`` ones, added to the panel). One plan, resolved through the API as ``ask``'s is, asked
    each prompt in turn."""
    panel = load_panel(find_config(config, os.environ)).with_personas(personas)
    names, options = as_named(panel, names, options or {})
    parent = trace_parent(None, os.environ)
    plan = resolve(
        RunRequest(
            "(each prompt of the batch)",
            panel,
            agents=names,
            shape=shape,
            options={"synthesize": synthesize, **options},
            settings=settings,
            model=model,
            trace_id=parent.trace_id if parent else None,
            parent_span_id=parent.span_id if parent else None,
        )
    )
    per_prompt = len(planned_calls(plan))
    with ExitStack() as stack:
        if wants_local(plan.callers, local, os.environ):
            named = model is not None
            point = stack.enter_context(local_server(plan.agents, local, None, named, say_aside))
            plan = plan.pointed(point)
        return _batch(path, plan, output, via, poll_s, per_prompt)


def _batch(
    path: Path, plan: Plan, output: Path | None, via: str, poll_s: float, per_prompt: int
) -> int:
    """The batch itself: checked, then run with a progress bar; the summary and the exit
    code."""
    check_credentials(plan.callers, os.environ)
    prompts = count_prompts(path)  # reads the whole file once: a bad line stops us before any call
    # A later stage or a verdict needs the answers an earlier run already has.
    decided = len(plan.stages) > 1 or any(stage.key is not None for stage in plan.stages)
    answered = answered_jobs(output, keep_answers=decided)
    tally = BatchTally(total=prompts * per_prompt, output=str(output) if output else None)
    if via == "openai-batch":
        _check_via_batch_api(path, plan, output, answered)
    started = time.perf_counter()
    err = make_console(stderr=True)
    provider = OpenAIProvider()
    engine = engine_for(plan, provider)
    checkpoint()  # nothing asked yet: a signal so far ends the batch here
    sink = open_results(output) if output is not None else sys.stdout
    telemetry = open_telemetry() if via != "openai-batch" else None
    try:
        with BatchProgress(err, tally) as progress:
            writer = ResultWriter(sink)

            async def main() -> bool:
                if via == "openai-batch":
                    assert output is not None
                    state_file = output.with_name(output.name + ".batches.json")
                    work = partial(
                        run_via_batch_api, read_prompts(path), plan.agents,
                        provider=provider, pricing=plan.pricing, writer=writer, tally=tally,
                        answered=answered, state_file=state_file, poll_s=poll_s, shown=progress,
                        say=lambda message: print_warning(err, message),
                        attachments=plan.request.settings.attachments,
                    )  # fmt: skip
                else:
                    traced = telemetry.observer if telemetry is not None else None
                    work = partial(
                        run_batch, read_prompts(path), plan, engine=engine, writer=writer,
                        tally=tally, answered=answered, shown=progress, traced=traced,
                    )  # fmt: skip
                return await interruptibly(work, cleanup=provider.aclose)

            with quiet_collector():  # eval's speed work: see jobs.py
                interrupted = anyio.run(main)
    finally:
        tally.over(round(time.perf_counter() - started, 1))
        if output is not None:
            sink.close()
        if telemetry is not None:
            telemetry.shutdown()
    err.print(batch_summary(tally), soft_wrap=True, highlight=False)
    if interrupted:
        print_warning(err, "interrupted: run the same command again to carry on")
        return EXIT_INTERRUPTED
    if tally.failed == 0:
        return EXIT_OK
    # Partial when anything was answered, now or by an earlier run; the Batch API's failures
    # include requests it never answered (an expired batch), which are not among those done.
    return EXIT_PARTIAL if tally.answered or tally.skipped else EXIT_FAILED


def _check_via_batch_api(path: Path, plan: Plan, output: Path | None, answered: Answered) -> None:
    """What the provider's Batch API cannot do: a later stage (it needs the answers first), a
    persona asked several times, a run without an output file to keep the batch ids beside;
    and a budget it could not stop half-way through."""
    options = plan.request.options
    if any(stage.key is not None for stage in plan.stages):  # a shape that decides
        shape = shape_of(plan.request.shape)
        flag = shape.flag or f"--shape {shape.name}"
        raise ConfigError(f"{flag} needs the answers first: not with --via openai-batch")
    if len(plan.stages) > 1:
        flag = "--map" if options.get("map") else "--synthesize"
        raise ConfigError(f"{flag} needs the answers first: not with --via openai-batch")
    if options.get("repeat") or options.get("best_of"):
        raise ConfigError("asking a persona several times: not with --via openai-batch")
    if output is None:
        raise ConfigError("--via openai-batch needs -o FILE (it keeps the batch ids beside it)")
    max_cost = plan.request.settings.max_cost
    if max_cost is not None:
        _check_batch_budget(path, plan.agents, plan.pricing, max_cost, answered)


def _check_batch_budget(
    path: Path,
    agents: Sequence[Agent],
    pricing: Pricing,
    max_cost: float,
    answered: Answered,
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
