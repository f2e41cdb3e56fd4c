"""The engine with a scripted provider injected: ordering, error boundaries, cancellation,
budget, observers, and the identity of calls."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import anyio
import pytest

from fanout.api import RunRequest, prepare
from fanout.config import Panel
from fanout.cost import Price, estimate_tokens
from fanout.engine import DEFAULT_CONCURRENCY, Execution, RunSettings
from fanout.errors import ProviderError
from fanout.event import (
    CallDelta,
    CallFinished,
    CallRetrying,
    CallStarted,
    CallWaiting,
    Event,
    Observer,
)
from fanout.models import Agent, Completion, Message, Usage
from fanout.retry import RetryPolicy

pytestmark = pytest.mark.anyio

Behaviour = Callable[[int], Awaitable[Completion]]
QUICK = RunSettings(retry=RetryPolicy(retries=2, backoff_base=0.001, backoff_cap=0.001))


class ScriptedProvider:
    """Implements the provider interface; each agent's behaviour gets the attempt number."""

    def __init__(self, behaviours: dict[str, Behaviour]) -> None:
        self.behaviours = behaviours
        self.calls: list[str] = []
        self.closed = False

    async def complete(
        self,
        agent: Agent,
        messages: Sequence[Message],
        *,
        timeout_s: float,
        on_delta: Callable[[str], None] | None = None,
        on_sent: Callable[[], None] | None = None,
        response_format: Mapping[str, Any] | None = None,
    ) -> Completion:
        self.calls.append(agent.name)
        if on_sent is not None:
            on_sent()
        completion = await self.behaviours[agent.name](self.calls.count(agent.name))
        if on_delta is not None:
            for word in completion.text.split():
                on_delta(word)
        return completion

    async def aclose(self) -> None:
        self.closed = True


class Recorder:
    """An observer that writes down the events that matter to these tests."""

    wants_deltas = True

    def __init__(self) -> None:
        self.events: list[str] = []

    def handle(self, event: Event) -> None:
        if isinstance(event, CallStarted):
            self.events.append(f"started {event.call.name}")
        elif isinstance(event, CallRetrying):
            self.events.append(f"retry {event.call.name} {event.attempt}/{event.max_attempts}")
        elif isinstance(event, CallDelta):
            self.events.append(f"delta {event.call.name} {event.text}")
        elif isinstance(event, CallFinished):
            self.events.append(f"finished {event.result.name} {event.result.status}")
        elif isinstance(event, CallWaiting):
            waits = "?" if event.wait_s is None else f"{round(event.wait_s)}s"
            self.events.append(f"waiting {event.call.name} {waits}")


def answer(text: str, usage: Usage | None = None) -> Behaviour:
    async def behave(attempt: int) -> Completion:
        return Completion(text=text, usage=usage)

    return behave


def agents(*names: str) -> list[Agent]:
    return [Agent(name=n, model=f"m-{n}") for n in names]


def PanelRun(
    prompt: str,
    personas: Sequence[Agent],
    *,
    provider: Any,
    settings: RunSettings | None = None,
    observer: Observer | None = None,
    synthesizer: Agent | None = None,
    options: Mapping[str, Any] | None = None,
    prices: Mapping[str, Price] | None = None,
) -> Execution:
    """A panel run through the public API's ``prepare``, with a scripted provider."""
    panel = Panel("<test>", list(personas), synthesizer or Agent("synthesizer"), dict(prices or {}))
    request = RunRequest(
        prompt,
        panel,
        options={"synthesize": synthesizer is not None, **(options or {})},
        settings=settings or RunSettings(),
    )
    return prepare(request, [observer] if observer else [], provider=provider, check=False)


async def test_results_keep_panel_order_when_answers_arrive_reversed() -> None:
    second_done = anyio.Event()

    async def first(attempt: int) -> Completion:
        await second_done.wait()
        return Completion(text="first")

    async def second(attempt: int) -> Completion:
        second_done.set()
        return Completion(text="second")

    recorder = Recorder()
    provider = ScriptedProvider({"a": first, "b": second})
    run = PanelRun("q", agents("a", "b"), provider=provider, observer=recorder)
    await run.execute()
    report = run.report()
    assert [(r.name, r.answer) for r in report.agents] == [("a", "first"), ("b", "second")]
    assert recorder.events.index("finished b ok") < recorder.events.index("finished a ok")
    assert report.status == "completed"


async def test_one_agents_crash_never_touches_the_others() -> None:
    async def crash(attempt: int) -> Completion:
        raise RuntimeError("boom")

    provider = ScriptedProvider({"a": crash, "b": answer("fine")})
    run = PanelRun("q", agents("a", "b"), provider=provider)
    await run.execute()
    a, b = run.report().agents
    assert a.status == "error"
    assert a.error is not None and a.error.type == "internal"
    assert "boom" in a.error.message
    assert (b.status, b.answer) == ("ok", "fine")
    assert run.report().status == "partial"


async def test_retryable_errors_are_retried_and_counted() -> None:
    async def flaky(attempt: int) -> Completion:
        if attempt < 3:
            raise ProviderError("HTTP 503: busy", kind="server_error", retryable=True)
        return Completion(text="at last", usage=Usage(3, 4, 7))

    recorder = Recorder()
    run = PanelRun(
        "q", agents("a"), provider=ScriptedProvider({"a": flaky}), settings=QUICK, observer=recorder
    )
    await run.execute()
    (result,) = run.report().agents
    assert (result.status, result.answer, result.attempts) == ("ok", "at last", 3)
    assert result.usage == Usage(3, 4, 7)
    assert recorder.events == [
        "started a",
        "retry a 1/3",
        "retry a 2/3",
        "delta a at",
        "delta a last",
        "finished a ok",
    ]


async def test_attempt_is_cut_at_the_timeout() -> None:
    async def hang(attempt: int) -> Completion:
        await anyio.sleep_forever()
        raise AssertionError

    settings = RunSettings(timeout=0.01, retry=QUICK.retry)
    provider = ScriptedProvider({"a": hang, "b": answer("fine")})
    run = PanelRun("q", agents("a", "b"), provider=provider, settings=settings)
    await run.execute()
    a, b = run.report().agents
    assert a.error is not None
    assert (a.status, a.error.type, a.attempts) == ("error", "timeout", 3)
    assert b.status == "ok"


async def test_cancelling_the_run_keeps_finished_answers() -> None:
    async def hang(attempt: int) -> Completion:
        await anyio.sleep_forever()
        raise AssertionError

    provider = ScriptedProvider({"a": answer("kept"), "b": hang})
    run = PanelRun("q", agents("a", "b"), provider=provider)
    async with anyio.create_task_group() as tg:
        tg.start_soon(run.execute)
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    run.interrupted = True
    report = run.report()
    assert [r.status for r in report.agents] == ["ok", "cancelled"]
    assert report.output == {"a": "kept"}
    assert report.status == "cancelled"


async def test_panel_concurrency_cap_holds() -> None:
    in_flight = 0
    peak = 0

    async def slow(attempt: int) -> Completion:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await anyio.wait_all_tasks_blocked()
        in_flight -= 1
        return Completion(text="ok")

    names = [f"p{i}" for i in range(6)]
    provider = ScriptedProvider(dict.fromkeys(names, slow))
    run = PanelRun("q", agents(*names), provider=provider, settings=RunSettings(concurrency=2))
    await run.execute()
    assert peak == 2
    assert all(r.status == "ok" for r in run.report().agents)


async def test_synthesis_gets_every_answer_and_marks_missing_ones() -> None:
    seen: list[str] = []

    async def merge(attempt: int) -> Completion:
        return Completion(text="merged")

    class Capturing(ScriptedProvider):
        async def complete(
            self,
            agent: Agent,
            messages: Sequence[Message],
            *,
            timeout_s: float,
            on_delta: Callable[[str], None] | None = None,
            on_sent: Callable[[], None] | None = None,
            response_format: Mapping[str, Any] | None = None,
        ) -> Completion:
            if agent.name == "synth":
                seen.append(messages[-1]["content"])
            return await super().complete(agent, messages, timeout_s=timeout_s)

    async def fail(attempt: int) -> Completion:
        raise ProviderError("HTTP 400: no", kind="bad_request", status_code=400)

    provider = Capturing({"a": answer("alpha"), "b": fail, "synth": merge})
    synthesizer = Agent(name="synth", instructions="merge")
    run = PanelRun("q", agents("a", "b"), provider=provider, synthesizer=synthesizer)
    await run.execute()
    synthesis = run.report().synthesis
    assert synthesis is not None
    assert (synthesis.status, synthesis.answer, synthesis.details["partial"]) == (
        "ok",
        "merged",
        True,
    )
    assert (synthesis.details["sources"], synthesis.details["missing"]) == (["a"], ["b"])
    assert (synthesis.call_id, synthesis.stage, synthesis.role) == (
        "synthesis/synth",
        "synthesis",
        "synthesizer",
    )
    assert "alpha" in seen[0] and "partial" in seen[0]
    assert run.report().status == "partial"


async def test_streamed_answer_records_time_to_first_token_and_estimates_missing_usage() -> None:
    recorder = Recorder()
    provider = ScriptedProvider({"a": answer("one two three")})
    run = PanelRun("q", agents("a"), provider=provider, observer=recorder)
    await run.execute()
    (result,) = run.report().agents
    assert [e for e in recorder.events if e.startswith("delta")] == [
        "delta a one",
        "delta a two",
        "delta a three",
    ]
    assert result.ttft_s is not None and result.ttft_s >= 0
    assert result.usage_estimated is True
    assert result.usage.output_tokens > 0
    assert result.usage.total_tokens == result.usage.input_tokens + result.usage.output_tokens


async def test_no_stream_setting_asks_for_whole_answers() -> None:
    recorder = Recorder()
    provider = ScriptedProvider({"a": answer("one two", Usage(1, 2, 3))})
    settings = RunSettings(stream=False)
    run = PanelRun("q", agents("a"), provider=provider, settings=settings, observer=recorder)
    await run.execute()
    (result,) = run.report().agents
    assert not any(e.startswith("delta") for e in recorder.events)
    assert result.ttft_s is None
    assert (result.usage, result.usage_estimated) == (Usage(1, 2, 3), False)


def test_token_estimate_grows_with_the_text() -> None:
    short = estimate_tokens([{"role": "user", "content": "hi"}])
    long = estimate_tokens([{"role": "user", "content": "hi " * 400}])
    assert 0 < short < long
    assert long >= 300


# -- issue 10: the defects the stage engine fixes ------------------------------------------------


async def test_an_observer_that_raises_never_fails_a_call_or_the_run() -> None:
    class Broken:
        def handle(self, event: Event) -> None:
            raise RuntimeError("display bug")

    recorder = Recorder()
    provider = ScriptedProvider({"a": answer("fine"), "b": answer("also fine")})
    panel = Panel("<test>", agents("a", "b"), Agent("synthesizer"))
    execution = prepare(
        RunRequest("q", panel), [Broken(), recorder], provider=provider, check=False
    )
    await execution.execute()
    report = execution.conclude()
    assert [r.status for r in report.agents] == ["ok", "ok"]
    assert "finished a ok" in recorder.events and "finished b ok" in recorder.events


async def test_cancelling_keeps_the_text_that_was_streaming_and_counts_it() -> None:
    streaming = anyio.Event()

    class Streaming(ScriptedProvider):
        async def complete(
            self, agent: Agent, messages: Sequence[Message], **kw: Any
        ) -> Completion:
            on_delta = kw["on_delta"]
            on_delta("Energy flows ")
            on_delta("from hot to cold")
            streaming.set()
            await anyio.sleep_forever()
            raise AssertionError

    run = PanelRun(
        "q",
        agents("a"),
        provider=Streaming({}),
        settings=RunSettings(stream=True),
        prices={"m-a": Price(1.0, 2.0)},
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(run.execute)
        await streaming.wait()
        tg.cancel_scope.cancel()
    run.interrupted = True
    (result,) = run.conclude().agents
    assert result.status == "cancelled"
    assert (result.answer, result.truncated) == ("Energy flows from hot to cold", True)
    assert result.usage.output_tokens > 0 and result.usage_estimated
    assert result.cost_usd is not None and result.cost_usd > 0


async def test_an_answer_cut_by_max_tokens_is_marked_truncated() -> None:
    async def cut(attempt: int) -> Completion:
        return Completion(text="half an ans", usage=Usage(1, 5, 6), finish_reason="length")

    run = PanelRun("q", agents("a", "b"), provider=ScriptedProvider({"a": cut, "b": answer("x")}))
    await run.execute()
    a, b = run.report().agents
    assert (a.status, a.finish_reason, a.truncated) == ("ok", "length", True)
    assert b.truncated is False


async def test_a_timed_out_attempt_is_settled_at_its_worst_case() -> None:
    async def hang(attempt: int) -> Completion:
        await anyio.sleep_forever()
        raise AssertionError

    persona = Agent("a", model="m-a", max_tokens=100)
    settings = RunSettings(timeout=0.01, retry=RetryPolicy(retries=0), max_cost=1.0)
    run = PanelRun(
        "q", [persona], provider=ScriptedProvider({"a": hang}), settings=settings,
        prices={"m-a": Price(1000.0, 1000.0)},
    )  # fmt: skip
    await run.execute()
    budget = run.engine.budget
    assert budget is not None
    # a call that was cut off may still be billed: its worst case stays spent
    assert budget.spent_usd > 0.1
    assert budget.reserved_usd == 0


async def test_bookkeeping_that_breaks_stays_inside_its_call() -> None:
    async def odd(attempt: int) -> Completion:
        return Completion(text="fine", usage=Usage("lots", 1, 2))  # type: ignore[arg-type]

    recorder = Recorder()
    provider = ScriptedProvider({"a": odd, "b": answer("kept")})
    run = PanelRun("q", agents("a", "b"), provider=provider, observer=recorder)
    await run.execute()
    report = run.conclude()
    a, b = report.agents
    assert a.status == "error" and a.error is not None and a.error.type == "internal"
    assert (b.status, b.answer) == ("ok", "kept")
    assert "finished a error" in recorder.events


async def test_one_persona_asked_several_times_has_one_call_id_per_ask() -> None:
    provider = ScriptedProvider({"a": answer("x"), "b": answer("y")})
    run = PanelRun("q", agents("a", "b"), provider=provider, options={"repeat": {"a": 3}})
    await run.execute()
    report = run.report()
    assert [r.name for r in report.agents] == ["a#1", "a#2", "a#3", "b"]
    assert [r.call_id for r in report.agents] == [
        "panel/a#1",
        "panel/a#2",
        "panel/a#3",
        "panel/b",
    ]
    assert provider.calls.count("a") == 3


async def test_by_default_every_call_of_a_stage_is_in_flight_at_once() -> None:
    in_flight = peak = 0

    async def slow(attempt: int) -> Completion:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await anyio.wait_all_tasks_blocked()
        in_flight -= 1
        return Completion(text="ok")

    names = [f"p{i}" for i in range(40)]
    run = PanelRun("q", agents(*names), provider=ScriptedProvider(dict.fromkeys(names, slow)))
    await run.execute()
    assert DEFAULT_CONCURRENCY >= 64
    assert peak == 40  # no waves of 8


async def test_the_run_has_a_w3c_trace_id_and_stages_in_order() -> None:
    synthesizer = Agent("synth", instructions="merge")
    provider = ScriptedProvider({"a": answer("x"), "synth": answer("merged")})
    run = PanelRun("q", agents("a"), provider=provider, synthesizer=synthesizer)
    await run.execute()
    report = run.report()
    assert report.trace_id is not None and len(report.trace_id) == 32
    int(report.trace_id, 16)
    assert [(s.id, s.kind) for s in report.stages] == [
        ("panel", "panel"),
        ("synthesis", "synthesis"),
    ]


async def test_a_stage_whose_shape_breaks_costs_that_stage_only() -> None:
    from fanout.engine import Engine, RunContext
    from fanout.shapes.panel import PanelStage

    class Broken:
        id, kind, key, roles = "broken", "broken", None, ()

        def calls(self, context: Any) -> list[Any]:
            raise KeyError("oops")

        def verdict(self, context: Any, results: Any) -> None:
            return None

    provider = ScriptedProvider({"a": answer("kept")})
    context = RunContext("q", agents("a"), {}, {})
    execution = Execution(Engine(provider), [PanelStage(), Broken()], context)
    await execution.execute()
    report = execution.conclude()
    assert report.output == {"a": "kept"}
    broken = report.stage("broken")
    assert broken is not None and broken.calls == []
    assert broken.verdict is not None and "oops" in str(broken.verdict.to_dict()["error"])


async def test_a_call_cancelled_while_waiting_for_the_rate_limit_is_reported_finished() -> None:
    recorder = Recorder()
    waiting = anyio.Event()

    class Slow(ScriptedProvider):
        async def complete(
            self, agent: Agent, messages: Sequence[Message], **kw: Any
        ) -> Completion:
            waiting.set()
            await anyio.sleep_forever()
            raise AssertionError

    # rpm 1: the second call waits a minute for its turn
    run = PanelRun("q", agents("a", "b"), provider=Slow({}), observer=recorder,
                   settings=RunSettings(rpm=1))  # fmt: skip
    async with anyio.create_task_group() as tg:
        tg.start_soon(run.execute)
        await waiting.wait()
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    run.interrupted = True
    run.conclude()
    assert "finished a cancelled" in recorder.events
    assert "finished b cancelled" in recorder.events  # it had a slot and was waiting
    # The display can count down: the limiter said when b's turn comes.
    assert "waiting b 60s" in recorder.events


class _Growing:
    """A stage that adds ``more`` stages after itself once it is over (a loop's next turn)."""

    kind = "panel"
    key = None

    def __init__(self, stage_id: str, more: Sequence[Any] = (), broken: bool = False) -> None:
        self.id = stage_id
        self.more = list(more)
        self.broken = broken

    def calls(self, context: Any) -> list[Any]:
        from fanout.models import Call

        agent = context.agents[0]
        return [Call(f"{self.id}/{agent.name}", self.id, "persona", agent.name, agent, ())]

    def verdict(self, context: Any, results: Sequence[Any]) -> None:
        return None

    def follow(self, context: Any) -> list[Any]:
        if self.broken:
            raise RuntimeError("shape bug")
        assert self.id in context.stages  # it runs once the stage is over
        return self.more


async def test_a_plan_grows_from_a_stage_that_follows_itself() -> None:
    from fanout.engine import Engine, RunContext

    provider = ScriptedProvider({"a": answer("hi")})
    last = _Growing("three", broken=True)  # a follow that fails ends the loop, not the run
    plan = [_Growing("one", [_Growing("two", [last])])]
    execution = Execution(Engine(provider), plan, RunContext("q", agents("a"), {}, {}))
    await execution.execute()
    report = execution.conclude()
    assert [s.id for s in report.stages] == ["one", "two", "three"]
    assert provider.calls == ["a", "a", "a"]
    verdict = report.stages[2].verdict
    assert verdict is not None
    assert verdict.to_dict() == {"type": "error", "error": "RuntimeError: shape bug"}
    assert report.status == "completed"
