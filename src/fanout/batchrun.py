"""``fanout batch``'s driver: the panel and its roles resolved once, every prompt of the file
run through the shared engine (or handed to the provider's Batch API), a progress bar on
stderr, the summary and the exit code."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import anyio

from fanout.api import RunRequest, planned_calls, resolve
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
from fanout.cost import Pricing
from fanout.drive import open_telemetry, say_aside
from fanout.engine import Engine, RunSettings
from fanout.errors import ConfigError
from fanout.interrupt import interruptibly
from fanout.local import local_server, wants_local
from fanout.models import Agent
from fanout.output import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL
from fanout.params import with_params
from fanout.provider import OpenAIProvider
from fanout.render import BatchProgress, batch_summary, make_console, print_warning
from fanout.session import as_named
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
    options: Mapping[str, Any] | None = None,
    personas: Sequence[tuple[str, str]] = (),
) -> int:
    """``fanout batch``: every prompt of ``path`` x every persona, as JSON lines (``shape``:
    each prompt run as a vote, a judge..., its verdict a line of its own; ``personas``: the
    ``-p`` ones, added to the panel)."""
    panel = load_panel(find_config(config, os.environ)).with_personas(personas)
    names, options = as_named(panel, names, options)
    chosen = [with_params(a, settings.params) for a in apply_model(panel.select(names), model)]
    options = {"synthesize": synthesize, **(options or {})}
    plan = resolve(
        RunRequest(
            "(each prompt of the batch)",
            panel,
            agents=names,
            shape=shape,
            options=options,
            model=model,
            settings=settings,  # --max-cost: every model priced, checked before any call
        )
    )
    roles = {r: a for r, a in plan.roles.items() if r != "synthesizer"}
    # -s, --map and a council's last stage all need the synthesizer.
    synthesizer = plan.roles.get("synthesizer")
    with ExitStack() as stack:
        if wants_local([*chosen, *([synthesizer] if synthesizer else [])], local, os.environ):
            on_local = stack.enter_context(
                local_server(chosen, local, None, model is not None, say_aside)
            )
            chosen = [on_local(a) for a in chosen]
            synthesizer = on_local(synthesizer) if synthesizer else None
            roles = {r: on_local(a) for r, a in roles.items()}
        return _batch(
            path, panel, chosen, synthesizer, settings, output, via, poll_s,
            shape=shape, options=options, roles=roles, per_prompt=len(planned_calls(plan)),
        )  # fmt: skip


def _batch(
    path: Path,
    panel: Panel,
    chosen: list[Agent],
    synthesizer: Agent | None,
    settings: RunSettings,
    output: Path | None,
    via: str,
    poll_s: float,
    *,
    shape: str = "panel",
    options: Mapping[str, Any] | None = None,
    roles: Mapping[str, Agent] | None = None,
    per_prompt: int | None = None,
) -> int:
    synthesize = synthesizer is not None
    roles = dict(roles or {})
    if settings.max_cost is not None:
        chosen = [bound_answer(a) for a in chosen]
        synthesizer = bound_answer(synthesizer) if synthesizer else None
        roles = {r: bound_answer(a) for r, a in roles.items()}
    callers = [*chosen, *([synthesizer] if synthesizer else []), *roles.values()]
    check_credentials(callers, os.environ)
    prompts = count_prompts(path)  # reads the whole file once: a bad line stops us before any call
    # A later stage or a verdict needs the answers an earlier run already has.
    answered = answered_jobs(output, keep_answers=synthesize or shape != "panel")
    tally = BatchTally(
        total=prompts * (per_prompt or len(callers)), output=str(output) if output else None
    )
    started = time.perf_counter()
    err = make_console(stderr=True)
    provider = OpenAIProvider()
    provider.prepare(a.endpoint for a in callers)
    engine = Engine(provider, callers, settings, Pricing.shipped(panel.pricing))
    pricing = engine.pricing
    pricing = Pricing.shipped(panel.pricing)
    if via == "openai-batch":
        if shape != "panel":
            raise ConfigError(f"--{shape} needs the answers first: not with --via openai-batch")
        if synthesize:
            flag = "--map" if (options or {}).get("map") else "--synthesize"
            raise ConfigError(f"{flag} needs the answers first: not with --via openai-batch")
        if (options or {}).get("repeat") or (options or {}).get("best_of"):
            raise ConfigError("asking a persona several times: not with --via openai-batch")
        if output is None:
            raise ConfigError("--via openai-batch needs -o FILE (it keeps the batch ids beside it)")
        if settings.max_cost is not None:
            _check_batch_budget(path, chosen, pricing, settings.max_cost, answered)
    sink = open_results(output) if output is not None else sys.stdout
    telemetry = open_telemetry() if via != "openai-batch" else None
    parent = trace_parent(None, os.environ)
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
                    say=lambda message: print_warning(err, message),
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
                        shape=shape,
                        options=options,
                        roles=roles,
                        traced=telemetry.observer if telemetry is not None else None,
                        parent=(parent.trace_id, parent.span_id) if parent else None,
                    ),
                    cleanup=provider.aclose,
                )

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
