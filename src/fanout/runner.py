"""The fan-out: every agent at once in one task group, each behind its own error boundary.

Results live in a list outside the task group, pre-filled as ``cancelled``, so whatever stops the
run (Ctrl-C, SIGTERM) the answers that arrived are still there to report, in the panel's order.
Concurrency slots are held per attempt, never while an agent sleeps before a retry.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import anyio

from fanout.cost import (
    DEFAULT_COMPLETION_ESTIMATE,
    Budget,
    Pricing,
    estimate_tokens,
    most_tokens,
)
from fanout.errors import BudgetExceeded, FanoutError, ProviderError
from fanout.events import (
    AgentDelta,
    AgentFinished,
    AgentRetrying,
    AgentSending,
    AgentStarted,
    AgentWaiting,
    Event,
    Observer,
    RunFinished,
    RunStarted,
)
from fanout.limiter import RateLimiter
from fanout.models import (
    Agent,
    AgentError,
    AgentResult,
    Completion,
    Endpoint,
    Message,
    RunReport,
    SynthesisResult,
    Usage,
    chat_messages,
)
from fanout.retry import RetryEvent, RetryPolicy, call_with_retries
from fanout.synthesis import synthesis_messages


class Provider(Protocol):
    """What the runner needs from an LLM API (``provider.OpenAIProvider``; tests script one)."""

    async def complete(
        self,
        agent: Agent,
        messages: Sequence[Message],
        *,
        timeout_s: float,
        on_delta: Callable[[str], None] | None = None,
        on_sent: Callable[[], None] | None = None,
        response_format: dict[str, Any] | None = None,
    ) -> Completion:
        """One attempt. With ``on_delta`` the answer is streamed piece by piece; ``on_sent``
        is called when the request leaves (the rate limiter counts from then);
        ``response_format`` asks for structured output where the endpoint can give it."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class RunSettings:
    """How a run behaves, whatever the panel: the ``ask`` flags."""

    concurrency: int = 8
    timeout: float = 120.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    rpm: float | None = None  # override every endpoint's limit
    tpm: float | None = None
    # Stream answers (deltas, time to first token) or ask for them whole; None: stream when an
    # observer shows the deltas (the live view, --jsonl), since parsing chunks costs CPU.
    stream: bool | None = None
    max_cost: float | None = None  # USD for the whole run; calls that could break it are skipped


class _Silent:
    def handle(self, event: Event) -> None:
        pass


class EndpointGates:
    """One rate limiter and one concurrency cap per endpoint, shared by everyone calling it."""

    def __init__(self, agents: Sequence[Agent], settings: RunSettings) -> None:
        self._limiters: dict[Endpoint, RateLimiter] = {}
        self._caps: dict[Endpoint, anyio.CapacityLimiter] = {}
        by_endpoint: dict[Endpoint, list[Agent]] = {}
        for agent in agents:
            by_endpoint.setdefault(agent.endpoint, []).append(agent)
        for endpoint, members in by_endpoint.items():
            # Agents sharing an endpoint may each state a limit; the strictest one holds.
            rpm = settings.rpm or _strictest(a.limits.rpm for a in members)
            tpm = settings.tpm or _strictest(a.limits.tpm for a in members)
            cap = _strictest(a.limits.concurrency for a in members)
            self._limiters[endpoint] = RateLimiter(
                rpm, tpm, max_pause=settings.retry.max_retry_after
            )
            self._caps[endpoint] = anyio.CapacityLimiter(int(cap) if cap else settings.concurrency)

    def limiter(self, endpoint: Endpoint) -> RateLimiter:
        return self._limiters[endpoint]

    def cap(self, endpoint: Endpoint) -> anyio.CapacityLimiter:
        return self._caps[endpoint]


class Engine:
    """What runs share: the provider, each endpoint's limiter and cap, the concurrency cap, the
    prices and the budget. One ``ask`` has one run; ``batch`` has many runs on one engine, so the
    limits hold across all of them."""

    def __init__(
        self,
        provider: Provider,
        callers: Sequence[Agent],
        settings: RunSettings | None = None,
        pricing: Pricing | None = None,
    ) -> None:
        self.provider = provider
        self.settings = settings or RunSettings()
        self.pricing = pricing or Pricing({})
        self.gates = EndpointGates(callers, self.settings)
        self.panel_cap = anyio.CapacityLimiter(self.settings.concurrency)
        max_cost = self.settings.max_cost
        self.budget = Budget(max_cost) if max_cost is not None else None


class PanelRun:
    """One prompt sent to a panel (and, optionally, merged by a synthesizer)."""

    def __init__(
        self,
        prompt: str,
        agents: Sequence[Agent],
        *,
        provider: Provider | None = None,
        settings: RunSettings | None = None,
        synthesizer: Agent | None = None,
        observer: Observer | None = None,
        pricing: Pricing | None = None,
        done: Sequence[AgentResult] = (),
        run_id: str | None = None,
        engine: Engine | None = None,
    ) -> None:
        """``done``: results already in hand (a retried or re-synthesized run); only the agents
        without one are asked. ``engine``: shared with other runs (else one of its own, from
        ``provider``, ``settings`` and ``pricing``)."""
        if engine is None:
            if provider is None:
                raise TypeError("PanelRun needs a provider or an engine")
            callers = [*agents, *([synthesizer] if synthesizer else [])]
            engine = Engine(provider, callers, settings, pricing)
        self.engine = engine
        self.prompt = prompt
        self.agents = list(agents)
        self.provider = engine.provider
        self.settings = engine.settings
        self.synthesizer = synthesizer
        self.observer: Observer = observer or _Silent()
        self.pricing = engine.pricing
        self.budget = engine.budget
        self.run_id = run_id or uuid.uuid4().hex[:12]
        kept = {r.name: r for r in done}
        self.results = [kept.get(a.name) or AgentResult(a.name, a.model) for a in self.agents]
        self._to_ask = [a.name not in kept for a in self.agents]
        self.synthesis: SynthesisResult | None = None
        if synthesizer is not None:
            self.synthesis = SynthesisResult(name=synthesizer.name, model=synthesizer.model)
        self._gates = engine.gates
        self._panel_cap = engine.panel_cap
        wants = bool(getattr(self.observer, "wants_deltas", False))
        self._stream = self.settings.stream if self.settings.stream is not None else wants
        self._started_wall = datetime.now(UTC)
        self._started = time.perf_counter()
        self.interrupted = False
        self._started_agents: set[str] = set()

    async def execute(self) -> None:
        """Ask every agent, then synthesize. Cancellation leaves the unfinished ones cancelled."""
        self._started_wall = datetime.now(UTC)
        self._started = time.perf_counter()
        self.observer.handle(RunStarted(self.run_id, self.prompt, self.agents, self.synthesizer))
        async with anyio.create_task_group() as tg:
            for index, agent in enumerate(self.agents):
                if self._to_ask[index]:
                    messages = chat_messages(agent, self.prompt)
                    tg.start_soon(self._call, agent, messages, self.results[index], False)
        if self.synthesizer is not None and self.synthesis is not None:
            await self._synthesize(self.synthesizer, self.synthesis)

    def conclude(self) -> RunReport:
        """The final report, after telling observers how the agents cut short ended."""
        report = self.report()
        pending = [*report.agents, *([report.synthesis] if report.synthesis else [])]
        for result in pending:
            if result.status == "cancelled" and result.name in self._started_agents:
                synthesis = result is report.synthesis
                self.observer.handle(AgentFinished(result, synthesis=synthesis))
        self.observer.handle(RunFinished(report))
        return report

    def report(self) -> RunReport:
        """The run as it stands: complete after ``execute``, partial after an interruption."""
        return RunReport(
            run_id=self.run_id,
            prompt=self.prompt,
            started_at=self._started_wall.isoformat(timespec="milliseconds"),
            finished_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
            duration_s=round(time.perf_counter() - self._started, 3),
            agents=self.results,
            synthesis=self.synthesis,
            interrupted=self.interrupted,
        )

    async def _synthesize(self, agent: Agent, result: SynthesisResult) -> None:
        answered = [r for r in self.results if r.status == "ok"]
        result.sources = [r.name for r in answered]
        result.missing = [r.name for r in self.results if r.status != "ok"]
        result.partial = bool(result.missing)
        if not answered:
            result.status = "skipped"
            result.error = AgentError("no_answers", "no persona answered, nothing to synthesize")
            return
        messages = synthesis_messages(agent.instructions, self.prompt, answered, result.missing)
        await self._call(agent, messages, result, True)

    async def _call(
        self, agent: Agent, messages: list[Message], result: AgentResult, synthesis: bool
    ) -> None:
        """One agent's whole exchange, retries included. Never raises, except cancellation."""
        limiter = self._gates.limiter(agent.endpoint)
        estimate = estimate_tokens(messages) + (agent.max_tokens or DEFAULT_COMPLETION_ESTIMATE)
        timeout = agent.timeout or self.settings.timeout
        started: float | None = None
        attempt_started = 0.0
        failed_usage = Usage()  # what failed attempts consumed, when the server said

        def on_delta(text: str) -> None:
            if result.ttft_s is None:
                result.ttft_s = round(time.perf_counter() - attempt_started, 3)
            self.observer.handle(AgentDelta(agent, text))

        async def attempt(number: int) -> Completion:
            nonlocal started, attempt_started, failed_usage
            async with AsyncExitStack() as slots:
                # A slot is held for the attempt only: retry back-off frees it for others.
                if not synthesis:
                    await slots.enter_async_context(self._panel_cap)
                await slots.enter_async_context(self._gates.cap(agent.endpoint))
                if started is None:
                    started = time.perf_counter()
                    self._started_agents.add(agent.name)
                    self.observer.handle(AgentStarted(agent, synthesis=synthesis))
                reserved = await self._reserve(agent, messages)
                spent = Usage()
                timed_out = False
                try:
                    if limiter.would_wait(estimate):
                        self.observer.handle(AgentWaiting(agent))
                    reservation = await limiter.acquire(estimate)
                    result.attempts, result.ttft_s = number, None
                    attempt_started = time.perf_counter()
                    self.observer.handle(AgentSending(agent, number))
                    try:
                        # The client bounds each read; this bounds the whole attempt, so a
                        # server trickling bytes without ever answering is cut too.
                        with anyio.fail_after(timeout):
                            completion = await self.provider.complete(
                                agent,
                                messages,
                                timeout_s=timeout,
                                on_delta=on_delta if self._stream else None,
                                on_sent=reservation.mark_sent,
                            )
                    except TimeoutError:
                        reservation.settle(0)
                        raise ProviderError.timeout(timeout) from None
                    except ProviderError as exc:
                        spent = exc.usage or spent
                        reservation.settle(spent.total_tokens)
                        failed_usage += spent
                        limiter.observe(exc.headers)
                        if exc.status_code == 429 and exc.retryable and exc.retry_after:
                            limiter.pause_for(exc.retry_after)
                        raise
                    spent = completion.usage or _estimated_usage(messages, completion.text)
                    reservation.settle(spent.total_tokens)
                    limiter.observe(completion.headers)
                    return completion
                finally:
                    if self.budget is not None:
                        # An answer cut off (timeout, Ctrl-C) may still be billed: count the
                        # worst case, so the budget holds whatever the server charged.
                        cut_off = timed_out or (not spent.total_tokens and _cancelled())
                        cost = reserved if cut_off else self.pricing.cost(agent.model, spent)
                        self.budget.settle(reserved, cost or 0.0)

        def on_retry(event: RetryEvent) -> None:
            reason = str(event.error.status_code or event.error.kind)
            self.observer.handle(
                AgentRetrying(
                    agent,
                    event.attempt,
                    event.max_attempts,
                    event.wait_s,
                    reason,
                    event.error.message,
                )
            )

        try:
            completion = await call_with_retries(attempt, self.settings.retry, on_retry=on_retry)
        except BudgetExceeded as exc:
            result.status = "skipped"
            result.error = AgentError("budget", str(exc))
        except ProviderError as exc:
            result.status = "error"
            result.error = AgentError(exc.kind, exc.message, exc.status_code, exc.retryable)
        except Exception as exc:  # one agent's bug must not take the panel down
            cause = _innermost(exc)
            result.status = "error"
            result.error = AgentError("internal", f"{type(cause).__name__}: {cause}")
        else:
            result.status = "ok"
            result.answer = completion.text.strip()
            # A server that reports no usage gets it counted from the text, and says so.
            result.usage_estimated = completion.usage is None
            result.usage = completion.usage or _estimated_usage(messages, completion.text)
        finally:
            result.usage += failed_usage
            result.cost_usd = self.pricing.cost(agent.model, result.usage)
            if started is not None:
                result.latency_s = round(time.perf_counter() - started, 3)
        self.observer.handle(AgentFinished(result, synthesis=synthesis))

    async def _reserve(self, agent: Agent, messages: list[Message]) -> float:
        """Hold one call's worst-case cost against ``--max-cost``; raise if it cannot fit."""
        if self.budget is None:
            return 0.0
        answer = agent.max_tokens or DEFAULT_COMPLETION_ESTIMATE
        worst = self.pricing.worst_case(agent.model, most_tokens(messages), answer)
        if worst is None:
            raise BudgetExceeded(
                f"the price of {agent.model} is unknown, so --max-cost cannot bound it "
                "(add it under pricing: in the agents file)"
            )
        if not await self.budget.reserve(worst):
            raise BudgetExceeded(
                f"not asked: its worst case ${worst:.6f} is more than the "
                f"${max(self.budget.left_usd, 0):.6f} left of --max-cost "
                f"${self.budget.limit_usd:g}"
            )
        return worst


async def run_interruptibly(
    run: PanelRun, cleanup: Callable[[], Awaitable[None]] | None = None
) -> RunReport:
    """Execute ``run``, then ``cleanup`` (shielded). SIGINT or SIGTERM stops the run and keeps
    what arrived; a second one, even during the clean-up, ends the process at once."""
    run.interrupted = await interruptibly(run.execute, cleanup)
    return run.conclude()


async def interruptibly(
    body: Callable[[], Awaitable[None]], cleanup: Callable[[], Awaitable[None]] | None = None
) -> bool:
    """Run ``body`` until it ends or SIGINT/SIGTERM cancels it, then ``cleanup`` (shielded).
    Returns whether it was interrupted. A second signal ends the process at once."""
    interrupted = False
    try:
        async with anyio.create_task_group() as tg:
            work = anyio.CancelScope()

            async def watch_signals() -> None:
                nonlocal interrupted
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for signum in signals:
                        if interrupted:
                            # The user insists: die of the signal, as if we had never caught it.
                            signal.signal(signum, signal.SIG_DFL)
                            os.kill(os.getpid(), signum)
                        interrupted = True
                        work.cancel()

            tg.start_soon(watch_signals)
            try:
                with work:
                    await body()
            finally:
                if cleanup is not None:
                    with anyio.CancelScope(shield=True):
                        await cleanup()
            tg.cancel_scope.cancel()
    except ExceptionGroup as group:
        # A task group wraps what the work raised; a FanoutError reaches the CLI as itself.
        fanout_errors, rest = group.split(FanoutError)
        if fanout_errors is not None and rest is None:
            raise _innermost(fanout_errors) from None
        raise
    return interrupted


def _estimated_usage(messages: Sequence[Message], text: str) -> Usage:
    prompt_tokens = estimate_tokens(messages)
    answer_tokens = max(1, len(text) // 4) if text else 0
    return Usage(prompt_tokens, answer_tokens, prompt_tokens + answer_tokens)


def _cancelled() -> bool:
    """Whether the current task is being cancelled (inside a ``finally``)."""
    import sys

    return isinstance(sys.exc_info()[1], anyio.get_cancelled_exc_class())


def _innermost(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _strictest(values: Iterable[float | None]) -> float | None:
    given = [v for v in values if v is not None]
    return min(given) if given else None
