"""The runner with a scripted provider injected: ordering, error boundaries, cancellation."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import anyio
import pytest

from fanout.cost import estimate_tokens
from fanout.errors import ProviderError
from fanout.events import AgentDelta, AgentFinished, AgentRetrying, AgentStarted, Event
from fanout.models import Agent, Completion, Message, Usage
from fanout.retry import RetryPolicy
from fanout.runner import PanelRun, RunSettings

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
        if isinstance(event, AgentStarted):
            self.events.append(f"started {event.agent.name}")
        elif isinstance(event, AgentRetrying):
            self.events.append(f"retry {event.agent.name} {event.attempt}/{event.max_attempts}")
        elif isinstance(event, AgentDelta):
            self.events.append(f"delta {event.agent.name} {event.text}")
        elif isinstance(event, AgentFinished):
            self.events.append(f"finished {event.result.name} {event.result.status}")


def answer(text: str, usage: Usage | None = None) -> Behaviour:
    async def behave(attempt: int) -> Completion:
        return Completion(text=text, usage=usage)

    return behave


def agents(*names: str) -> list[Agent]:
    return [Agent(name=n, model=f"m-{n}") for n in names]


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
    assert (synthesis.status, synthesis.answer, synthesis.partial) == ("ok", "merged", True)
    assert (synthesis.sources, synthesis.missing) == (["a"], ["b"])
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
