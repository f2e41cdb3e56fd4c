"""``--dry-run``: what a run would send, each call with its worst-case cost; nothing is sent."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace

from fanout.api import Plan, planned_calls
from fanout.cost import PlannedCall, plan_fits, plan_worst_case
from fanout.engine import RunSettings
from fanout.export import dumps, plan_document
from fanout.local import LOCAL_URL, local_everyone, on_local, wants_local
from fanout.models import Agent
from fanout.output import EXIT_OK, Output, write_stdout
from fanout.render import make_console, plan_table, print_warning, usd


def dry_run(
    plan: Plan, output: Output, everyone: bool, model_named: bool, settings: RunSettings
) -> int:
    """``--dry-run``: what the run would send (on the local model, with ``--local``)."""
    if wants_local(plan.callers, everyone, os.environ):
        every = everyone or local_everyone(os.environ)

        def local(agent: Agent) -> Agent:
            return on_local(agent, LOCAL_URL, everyone=every, model_named=model_named)

        plan = replace(
            plan,
            agents=[local(a) for a in plan.agents],
            roles={r: local(a) for r, a in plan.roles.items()},
        )
    return show_plan(plan.request.prompt, planned_calls(plan), output, settings)


def show_plan(
    prompt: str, calls: Sequence[PlannedCall], output: Output, settings: RunSettings
) -> int:
    """The dry run's plan on stdout (a table or its document) and, when even its worst case
    would not fit ``--max-cost``, one line on stderr saying so. Exit 0: nothing failed."""
    if output.mode == "json":
        write_stdout(dumps(plan_document(prompt, calls, settings.max_cost)))
    else:
        make_console().print(plan_table(calls, settings.rpm, settings.max_cost))
    max_cost = settings.max_cost
    if max_cost is not None and not plan_fits(calls, max_cost):
        worst = plan_worst_case(calls)
        if worst is None:
            unknown = sorted({c.agent.model for c in calls if c.worst_case_usd is None})
            line = (
                f"worst case unknown (no price for {', '.join(unknown)}): --max-cost "
                f"${max_cost:g} would skip those calls"
            )
        else:
            line = (
                f"worst case {usd(worst)} is above --max-cost ${max_cost:g}: "
                "the run would stop early or skip calls"
            )
        print_warning(make_console(stderr=True), line)
    return EXIT_OK
