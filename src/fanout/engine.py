"""The stage engine: a run is a plan of stages; a stage makes calls; one caller makes every call.

``Engine`` is what runs share (the provider, each endpoint's limiter and cap, the global cap,
prices and the budget): one ``ask`` has one run on it, ``batch`` many. ``Engine.call`` is the
one caller: concurrency slots, endpoint limits, budget, retries, timeout, streaming and events
for a call of any stage and role. ``Execution`` runs a plan: stages in order, the calls of a
stage all at once, each behind its own error boundary.

Results live outside the task groups, pre-filled as ``cancelled``, so whatever stops the run
(Ctrl-C, a server's terminate, a consumer that leaves) the answers that arrived, and the text
that was streaming, are still there to report. Concurrency slots are held per attempt, never
while a call sleeps before a retry.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypedDict

import anyio

from fanout.cost import DEFAULT_COMPLETION_ESTIMATE, Budget, Pricing, estimate_tokens, most_tokens
from fanout.errors import BudgetExceeded, FanoutError, ProviderError
from fanout.event import (
    Broadcast,
    CallDelta,
    CallFallback,
    CallFinished,
    CallRetrying,
    CallSending,
    CallStarted,
    CallWaiting,
    Observer,
    RunFinished,
    RunStarted,
    StageFinished,
    StageStarted,
)
from fanout.limiter import RateLimiter
from fanout.models import (
    Agent,
    AgentError,
    Attachment,
    AttemptTiming,
    Call,
    CallResult,
    CallTiming,
    Completion,
    Endpoint,
    Fallback,
    Message,
    RunReport,
    RunStatus,
    StageResult,
    Usage,
)
from fanout.retry import RetryEvent, RetryPolicy, call_with_retries
from fanout.summary import StageError, Verdict
from fanout.tracing import CURRENT_TRACEPARENT, new_span_id, new_trace_id, traceparent

if TYPE_CHECKING:
    from pydantic import JsonValue

    from fanout.cache import CachedAnswer, ResponseCache
    from fanout.conversation import Transcript

# Every call of a stage is in flight at once, bounded per endpoint by its own concurrency:,
# rpm: and tpm:, and by this cap on the whole run (--concurrency lowers it): a panel of a few
# hundred personas goes in one wave.
DEFAULT_CONCURRENCY = 256
# A key the endpoint refuses (401) will not do better on the next call: the endpoint is closed
# for the rest of the run, as a day-long 429 closes it. A 403 is said the same way (the host,
# the key's variable) but closes nothing: it may be about one model, or one request's content.
REFUSED_KEY = (401, 403)
# Why a model gives up that another may not share: it is down or unreachable, its rate limit
# is spent past --max-retry-after, or the endpoint has no such model. Never a bad request, a
# refused key or content (a refusal is an answer), which another model would meet the same.
FALLBACK_KINDS = frozenset(
    {"server_error", "connection", "timeout", "incomplete_stream", "rate_limit", "not_found"}
)


class Provider(Protocol):
    """What the engine needs from an LLM API (``provider.OpenAIProvider``; tests script one)."""

    async def complete(
        self,
        agent: Agent,
        messages: Sequence[Message],
        *,
        timeout_s: float,
        on_delta: Callable[[str], None] | None = None,
        on_sent: Callable[[], None] | None = None,
        response_format: Mapping[str, Any] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> Completion:
        """One attempt. With ``on_delta`` the answer is streamed piece by piece; ``on_sent``
        is called when the request leaves (the rate limiter counts from then). ``tools``:
        functions the model may call (the calls come back in ``Completion.tool_calls``)."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class RunSettings:
    """How a run behaves, whatever the panel: the ``ask`` flags."""

    concurrency: int = DEFAULT_CONCURRENCY
    timeout: float = 120.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    rpm: float | None = None  # override every endpoint's limit
    tpm: float | None = None
    # Stream answers (deltas, time to first token) or ask for them whole; None: stream when an
    # observer shows the deltas (the live view, --jsonl), since parsing chunks costs CPU.
    stream: bool | None = None
    max_cost: float | None = None  # USD for the whole run; calls that could break it are skipped
    # Request fields set for every persona of the run (--param key=value), checked already.
    params: Mapping[str, JsonValue] = field(default_factory=dict, hash=False)
    cache: bool = False  # answer identical requests from the response cache (--cache)
    # Files every persona is sent with the question (-f), read and checked already.
    attachments: tuple[Attachment, ...] = ()


class EndpointGates:
    """One rate limiter and, where the agents file sets ``concurrency:``, one cap per endpoint,
    shared by every call to it. Agents sharing an endpoint may each state a limit; the
    strictest holds. An endpoint first met mid-run (a judge's) gets its gates then."""

    def __init__(self, agents: Iterable[Agent], settings: RunSettings) -> None:
        self._settings = settings
        self._limiters: dict[Endpoint, RateLimiter] = {}
        self._caps: dict[Endpoint, anyio.CapacityLimiter | None] = {}
        self._refused: dict[Endpoint, ProviderError] = {}  # a 401: closed for good
        by_endpoint: dict[Endpoint, list[Agent]] = {}
        for agent in agents:
            by_endpoint.setdefault(agent.endpoint, []).append(agent)
        for endpoint, members in by_endpoint.items():
            self._add(endpoint, members)

    def _add(self, endpoint: Endpoint, members: Sequence[Agent]) -> None:
        settings = self._settings
        rpm = settings.rpm or _strictest(a.limits.rpm for a in members)
        tpm = settings.tpm or _strictest(a.limits.tpm for a in members)
        cap = _strictest(a.limits.concurrency for a in members)
        self._limiters[endpoint] = RateLimiter(rpm, tpm, max_pause=settings.retry.max_retry_after)
        self._caps[endpoint] = anyio.CapacityLimiter(int(cap)) if cap else None

    def limiter(self, agent: Agent) -> RateLimiter:
        if agent.endpoint not in self._limiters:
            self._add(agent.endpoint, [agent])
        return self._limiters[agent.endpoint]

    def cap(self, agent: Agent) -> anyio.CapacityLimiter | None:
        if agent.endpoint not in self._caps:
            self._add(agent.endpoint, [agent])
        return self._caps[agent.endpoint]

    def refuse(self, agent: Agent, error: ProviderError) -> ProviderError:
        """The endpoint refused the key (401): no other call of the run (or batch) is sent to
        it; each fails at once with this error, which names the host and the variable holding
        the key (never the key). A 403 gets the same words, and closes nothing."""
        endpoint = agent.endpoint
        verb = "refused" if error.status_code == 401 else "denied a request made with"
        refused = ProviderError(
            f"{error.message} ({endpoint.host} {verb} the key in ${endpoint.api_key_env})",
            kind=error.kind,
            status_code=error.status_code,
            usage=error.usage,
        )
        if error.status_code == 401:
            self._refused.setdefault(endpoint, refused)
        return refused

    def check_open(self, agent: Agent) -> None:
        """Raise the error an endpoint was closed with, if it was."""
        refused = self._refused.get(agent.endpoint)
        if refused is not None:
            raise ProviderError(refused.message, kind=refused.kind, status_code=refused.status_code)


@dataclass(frozen=True)
class RunTrace:
    """Where a call sits: its run's trace and span, and the run's time zero (a
    ``time.perf_counter()`` value) that every timing of the run counts from."""

    trace_id: str
    span_id: str
    origin: float

    @classmethod
    def fresh(cls) -> RunTrace:
        return cls(new_trace_id(), new_span_id(), time.perf_counter())


class Engine:
    """What runs share: the provider, each endpoint's gates, the global cap, prices, budget."""

    def __init__(
        self,
        provider: Provider,
        agents: Iterable[Agent] = (),
        settings: RunSettings | None = None,
        pricing: Pricing | None = None,
        cache: ResponseCache | None = None,
    ) -> None:
        self.provider = provider
        self.settings = settings or RunSettings()
        self.pricing = pricing or Pricing({})
        self.gates = EndpointGates(agents, self.settings)
        self.cap = anyio.CapacityLimiter(self.settings.concurrency)
        max_cost = self.settings.max_cost
        self.budget = Budget(max_cost) if max_cost is not None else None
        self.cache = cache or (_default_cache() if self.settings.cache else None)

    async def call(
        self,
        call: Call,
        result: CallResult,
        observer: Observer,
        *,
        stream: bool,
        trace: RunTrace | None = None,
    ) -> None:
        """Make ``call`` (retries included) and fill ``result``, its timing included. Never
        raises, except cancellation, and then ``result`` keeps whatever text had arrived."""
        if call.skip is not None:
            result.status, result.error = "skipped", call.skip
            observer.handle(CallFinished(call, result))
            return
        if self._from_cache(call, result, observer, stream):
            return
        attempts = _Attempts(self, call, result, observer, stream, trace or RunTrace.fresh())
        try:
            completion = await self._with_fallbacks(attempts)
        except BudgetExceeded as exc:
            result.status, result.error = "skipped", AgentError("budget", str(exc))
        except ProviderError as exc:
            result.status = "error"
            result.error = AgentError(exc.kind, exc.message, exc.status_code, exc.retryable)
            attempts.keep_partial(exc.partial_text)
        except anyio.get_cancelled_exc_class():
            attempts.keep_partial(attempts.streamed)
            attempts.settle()
            raise
        except Exception as exc:  # one call's bug must not take the run down
            cause = _innermost(exc)
            result.status = "error"
            result.error = AgentError("internal", f"{type(cause).__name__}: {cause}")
        else:
            _answered(call, result, completion)
            if attempts.cached:  # a fallback's answer, kept from an earlier run: free
                result.usage, result.usage_estimated, result.cached = Usage(), False, True
            else:
                self._to_cache(attempts.call, completion)
        attempts.settle()
        observer.handle(CallFinished(call, result))

    def _from_cache(self, call: Call, result: CallResult, observer: Observer, stream: bool) -> bool:
        """The cache step: answer ``call`` from the response cache if it holds its request
        (then the call is ``cached``, costs nothing and sends nothing)."""
        hit = self._cached(call)
        if hit is None:
            return False
        observer.handle(CallStarted(call))
        if stream and hit.text:
            observer.handle(CallDelta(call, hit.text))
        _answered(call, result, hit.completion())
        result.usage, result.usage_estimated, result.cost_usd = Usage(), False, 0.0
        result.cached = True
        observer.handle(CallFinished(call, result))
        return True

    def _cached(self, call: Call) -> CachedAnswer | None:
        """The cache's answer to ``call``'s request, if there is a cache and it has one."""
        if self.cache is None:
            return None
        from fanout.cache import request_key

        return self.cache.get(request_key(call.agent, call.messages, **_key_parts(call)))

    def _to_cache(self, call: Call, completion: Completion) -> None:
        """Keep a complete answer for the next identical request (written off the loop)."""
        if self.cache is None:
            return
        from fanout.cache import CachedAnswer, complete, request_key

        if complete(completion):
            key = request_key(call.agent, call.messages, **_key_parts(call))
            self.cache.put(key, CachedAnswer.of(completion), call.agent.model)

    async def _with_fallbacks(self, attempts: _Attempts) -> Completion:
        """The call's attempts (retries included), then, if its model gives up for a reason
        another model may not have (``FALLBACK_KINDS``), the same on each of the persona's
        ``fallbacks:`` in turn. The last error is raised as it came."""
        fallbacks = list(attempts.call.agent.fallbacks)
        while True:
            try:
                return await call_with_retries(
                    attempts.attempt, self.settings.retry, on_retry=attempts.on_retry
                )
            except ProviderError as exc:
                if not fallbacks or exc.kind not in FALLBACK_KINDS:
                    raise
                attempts.fall_back(fallbacks.pop(0), exc)
                hit = self._cached(attempts.call)  # this fallback answered it before
                if hit is not None:
                    attempts.cached = True
                    return hit.completion()

    async def _reserve(self, call: Call) -> float:
        """Hold one call's worst-case cost against ``--max-cost``; raise if it cannot fit."""
        if self.budget is None:
            return 0.0
        agent = call.agent
        answer = agent.max_tokens or DEFAULT_COMPLETION_ESTIMATE
        worst = self.pricing.worst_case(agent.model, most_tokens(call.messages), answer)
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


class Deadline:
    """``anyio.fail_after`` without its two generator-based context managers: one cancel scope
    with a deadline, and ``TimeoutError`` if the deadline is what ended it. Made once per
    attempt, so a batch of 100,000 calls makes 100,000 of them."""

    __slots__ = ("_scope",)

    def __init__(self, seconds: float) -> None:
        self._scope = anyio.CancelScope(deadline=anyio.current_time() + seconds)

    def __enter__(self) -> anyio.CancelScope:
        return self._scope.__enter__()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        swallowed = self._scope.__exit__(kind, error, traceback)
        if self._scope.cancelled_caught and anyio.current_time() >= self._scope.deadline:
            raise TimeoutError
        return bool(swallowed)


class _Attempts:
    """The attempts of one call: each holds its slots, its rate-limit reservation and its share
    of the budget for exactly as long as it runs, and settles them on every path."""

    def __init__(
        self,
        engine: Engine,
        call: Call,
        result: CallResult,
        observer: Observer,
        stream: bool,
        trace: RunTrace,
    ) -> None:
        self.engine, self.call, self.result, self.observer = engine, call, result, observer
        self.stream = stream
        self.trace = trace
        self.origin = trace.origin
        # Each phase is one perf_counter() read, kept relative to the run's start.
        self.timing = CallTiming(new_span_id(), self._now())
        result.timing = self.timing
        self.current: AttemptTiming | None = None
        agent = call.agent
        self.limiter = engine.gates.limiter(agent)
        self.endpoint_cap = engine.gates.cap(agent)
        self.limited = bool(self.limiter.rpm or self.limiter.tpm)
        self.estimate = estimate_tokens(call.messages) + (
            agent.max_tokens or DEFAULT_COMPLETION_ESTIMATE
        )
        self.timeout = agent.timeout or engine.settings.timeout
        self.started: float | None = None
        self.attempt_started = 0.0
        self.failed_usage = Usage()  # what failed attempts consumed, when the server said
        self.parts: list[str] = []  # the current attempt's streamed text
        # Models that gave up before this one (fallbacks): attempts, tokens and their cost.
        self.offset = 0
        self.prior_usage = Usage()
        self.prior_cost: float | None = 0.0
        self.cached = False  # answered from the response cache (a fallback's earlier answer)

    def fall_back(self, fallback: Fallback, error: ProviderError) -> None:
        """Go on with ``fallback``'s model: what the model before it consumed is kept (priced
        at its own model), and the result says why it gave up."""
        before = self.call.agent
        spent = self.failed_usage
        cost = self.engine.pricing.cost(before.model, spent) if spent.total_tokens else 0.0
        self.prior_usage += spent
        self.prior_cost = (
            None if cost is None or self.prior_cost is None else self.prior_cost + cost
        )
        self.failed_usage = Usage()
        given_up = self.result.details.get("fell_back_from")
        if not isinstance(given_up, list):
            given_up = self.result.details["fell_back_from"] = []
        given_up.append(
            {
                "model": before.model,
                "base_url": before.endpoint.display_url,
                "attempts": self.result.attempts - self.offset,
                "error": asdict(AgentError(error.kind, error.message, error.status_code)),
            }
        )
        self.offset = self.result.attempts
        agent = replace(before, model=fallback.model, endpoint=fallback.endpoint)
        self.call = replace(self.call, agent=agent)
        self.result.model = agent.model
        self.limiter = self.engine.gates.limiter(agent)
        self.endpoint_cap = self.engine.gates.cap(agent)
        self.limited = bool(self.limiter.rpm or self.limiter.tpm)
        reason = str(error.status_code or error.kind)
        self.observer.handle(
            CallFallback(self.call, before.model, agent.model, reason, error.message)
        )

    @property
    def streamed(self) -> str:
        return "".join(self.parts)

    def _now(self, at: float | None = None) -> float:
        """Seconds since the run started (``at``: a perf_counter() value already read)."""
        return round((time.perf_counter() if at is None else at) - self.origin, 6)

    def on_delta(self, text: str) -> None:
        if self.result.ttft_s is None:
            now = time.perf_counter()
            self.result.ttft_s = round(now - self.attempt_started, 3)
            if self.current is not None:
                self.current.first_token_s = self._now(now)
        self.parts.append(text)
        self.observer.handle(CallDelta(self.call, text))

    def _waiting(self, seconds: float) -> None:
        self.observer.handle(CallWaiting(self.call, seconds))

    def on_retry(self, event: RetryEvent) -> None:
        if self.timing.attempts:
            self.timing.attempts[-1].backoff_s = round(event.wait_s, 6)
        reason = str(event.error.status_code or event.error.kind)
        self.observer.handle(
            CallRetrying(
                self.call,
                event.attempt,
                event.max_attempts,
                event.wait_s,
                reason,
                event.error.message,
            )
        )

    async def attempt(self, number: int) -> Completion:
        number += self.offset  # counted across the models a fallback went through
        self.current = timing = AttemptTiming(number, new_span_id(), self._now())
        self.timing.attempts.append(timing)
        try:
            # A slot is held for the attempt only: retry back-off frees it for others.
            async with self.engine.cap:
                if self.endpoint_cap is None:
                    return await self._attempt(number, timing)
                async with self.endpoint_cap:
                    return await self._attempt(number, timing)
        except ProviderError as exc:
            timing.error = exc.kind
            raise
        except BudgetExceeded:
            timing.error = "budget"
            raise
        except anyio.get_cancelled_exc_class():
            timing.error = "cancelled"
            raise
        except Exception:
            timing.error = "internal"
            raise
        finally:
            timing.end_s = self._now()

    async def _attempt(self, number: int, timing: AttemptTiming) -> Completion:
        engine, call, result = self.engine, self.call, self.result
        granted = time.perf_counter()
        timing.slot_s = self._now(granted)
        if self.started is None:
            self.started = granted
            self.observer.handle(CallStarted(call))
        engine.gates.check_open(call.agent)  # a refused key is not sent again
        reserved = await engine._reserve(call)
        spent: Usage | None = None
        timed_out = False
        try:
            if self.limiter.would_wait(self.estimate):
                # How long, if the limiter knows yet (not while others queue ahead of us):
                # told again by acquire once it does, so the display can count down.
                self.observer.handle(CallWaiting(call, self.limiter.expected_wait(self.estimate)))
            reservation = await self.limiter.acquire(self.estimate, on_wait=self._waiting)
            result.attempts, result.ttft_s = number, None
            self.parts = []
            self.attempt_started = time.perf_counter()
            timing.limiter_s = timing.sent_s = self._now(self.attempt_started)
            self.observer.handle(CallSending(call, number, timing.span_id))
            # The request carries this attempt's span id (the HTTP client's hook reads it).
            token = CURRENT_TRACEPARENT.set(traceparent(self.trace.trace_id, timing.span_id))
            try:
                # The client bounds each read; this bounds the whole attempt, so a server
                # trickling bytes without ever answering is cut too.
                with Deadline(self.timeout):
                    completion = await engine.provider.complete(
                        call.agent,
                        call.messages,
                        timeout_s=self.timeout,
                        on_delta=self.on_delta if self.stream else None,
                        # The send-time mark only matters to a limiter that counts starts.
                        on_sent=reservation.mark_sent if self.limited else None,
                        response_format=call.response_format,
                        # Only calls that offer tools pass them: providers without tool
                        # support (older fakes) keep working.
                        **({"tools": call.tools} if call.tools else {}),
                    )
            except TimeoutError:
                timed_out = True
                reservation.settle(0)
                raise ProviderError.timeout(self.timeout) from None
            except ProviderError as exc:
                timed_out = exc.kind == "timeout"
                spent = exc.usage or Usage()
                reservation.settle(spent.total_tokens)
                self.failed_usage += spent
                self.limiter.observe(exc.headers)
                if exc.status_code == 429 and exc.retryable and exc.retry_after:
                    self.limiter.pause_for(exc.retry_after)
                if exc.status_code in REFUSED_KEY:
                    raise engine.gates.refuse(call.agent, exc) from None
                raise
            finally:
                CURRENT_TRACEPARENT.reset(token)
            spent = completion.usage or _estimated_usage(call.messages, completion.text)
            reservation.settle(spent.total_tokens)
            self.limiter.observe(completion.headers)
            return completion
        finally:
            if engine.budget is not None:
                # An answer cut off (timeout, Ctrl-C) may still be billed: count the worst
                # case, so the budget holds whatever the server charged.
                cut_off = timed_out or (spent is None and _cancelled())
                used = spent or Usage()
                cost = reserved if cut_off else engine.pricing.cost(call.agent.model, used)
                engine.budget.settle(reserved, cost or 0.0)

    def _cost(self, own: Usage) -> float | None:
        """The call's cost: its model's tokens at its price, plus what models before it (that
        a fallback replaced) cost; unknown when a price that counts is."""
        cost = self.engine.pricing.cost(self.result.model, own)
        if not self.prior_usage.total_tokens:
            return cost
        if (cost is None and own.total_tokens) or self.prior_cost is None:
            return None
        return self.prior_cost + (cost or 0.0)

    def keep_partial(self, text: str | None) -> None:
        """A call cut short keeps the text it had (for display), marked truncated."""
        if text:
            self.result.answer = text.strip()
            self.result.truncated = True

    def settle(self) -> None:
        """Usage, cost and latency of the call as it ended; never raises."""
        result = self.result
        try:
            if result.status != "ok" and result.answer and not result.usage.total_tokens:
                # Cut short: the tokens it streamed were billed; count them from the text.
                result.usage = _estimated_usage(self.call.messages, result.answer)
                result.usage_estimated = True
            own = result.usage + self.failed_usage
            self.failed_usage = Usage()
            result.usage = own + self.prior_usage
            result.cost_usd = self._cost(own)
            now = time.perf_counter()
            self.timing.end_s = self._now(now)
            if self.started is not None:
                result.latency_s = round(now - self.started, 3)
        except Exception as exc:  # bookkeeping must never escape the call's boundary
            result.status = "error"
            result.error = AgentError("internal", f"{type(exc).__name__}: {exc}")


# -- plans and their execution ------------------------------------------------------------------


@dataclass
class RunContext:
    """What a stage sees when it builds its calls: the question, the chosen personas, the other
    roles (synthesizer, judge...), the shape's options and the stages that already ran."""

    prompt: str
    agents: Sequence[Agent]
    roles: Mapping[str, Agent]
    options: Mapping[str, object]
    stages: dict[str, StageResult] = field(default_factory=dict)
    # The conversation this run continues (its earlier turns), if any: each persona is sent
    # its own thread (``conversation.persona_thread``).
    conversation: Transcript | None = None


class Stage(Protocol):
    """One step of a plan. ``calls`` is asked when the stage starts (earlier stages are in the
    context by then); ``verdict`` when its calls are over (a typed ``Verdict``, or None).
    ``key`` names the verdict in the result document (``vote``, ``judge``...), or None. A
    stage whose calls are the run's answers has ``holds_answers = True``."""

    id: str
    kind: str
    key: str | None

    def calls(self, context: RunContext) -> list[Call]: ...

    def verdict(self, context: RunContext, results: Sequence[CallResult]) -> Verdict | None: ...


class Execution:
    """One run of a plan on an engine.

    ``kept``: results already in hand, by call id (a run carried on): those calls are not made
    again. ``previous``: the stored report a carried-on run started from; a call redone that
    ends worse than it was (cancelled, or failed where it had an answer) keeps its old result,
    and stages never reached keep theirs, so an interrupted retry leaves the run as it was.

    The run is a span of ``trace_id`` (a child of ``parent_span_id`` when it continues a
    trace). Its calls' timings count from its start; a carried-on run's clock starts where the
    stored one's duration ended, so the new calls follow the old ones on one time axis.
    """

    def __init__(
        self,
        engine: Engine,
        stages: Sequence[Stage],
        context: RunContext,
        observer: Observer | None = None,
        *,
        shape: str = "panel",
        run_id: str | None = None,
        trace_id: str | None = None,
        kept: Mapping[str, CallResult] | None = None,
        previous: RunReport | None = None,
        parent_span_id: str | None = None,
    ) -> None:
        self.engine = engine
        self.stages = list(stages)
        self.context = context
        self.observer: Observer = observer or Broadcast()
        self.shape = shape
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.trace_id = trace_id or new_trace_id()
        self.span_id = new_span_id()
        self.parent_span_id = parent_span_id
        self.kept = dict(kept or {})
        self.previous = previous
        self.results = [_stage_result(s) for s in self.stages]
        self._calls: dict[str, Call] = {}
        self._asked: set[str] = set()  # call ids made (not kept) in this execution
        wants = bool(getattr(self.observer, "wants_deltas", False))
        setting = engine.settings.stream
        self.stream = setting if setting is not None else wants
        self.interrupted = False
        self._started_wall = datetime.now(UTC)
        self._started = time.perf_counter()
        self._trace = RunTrace(self.trace_id, self.span_id, self._started)

    @property
    def prompt(self) -> str:
        return self.context.prompt

    async def execute(self) -> None:
        """Run the stages in order. Cancellation leaves the unfinished calls cancelled."""
        self._started_wall = datetime.now(UTC)
        epoch_ns, self._started = time.time_ns(), time.perf_counter()
        offset = self.previous.duration_s if self.previous is not None else 0.0
        self._trace = RunTrace(self.trace_id, self.span_id, self._started - offset)
        plan = [(s.id, s.kind) for s in self.stages]
        needed = {r for s in self.stages for r in getattr(s, "roles", ())}
        roles = {r: a.name for r, a in self.context.roles.items() if r in needed}
        agents = [a.name for a in self.context.agents]
        self.observer.handle(
            RunStarted(
                self.run_id,
                self.trace_id,
                self.prompt,
                self.shape,
                plan,
                agents,
                roles,
                span_id=self.span_id,
                parent_span_id=self.parent_span_id,
                epoch_ns=epoch_ns - int(offset * 1e9),
                conversation_id=self.conversation_id,
                turn=self.turn,
            )
        )
        index = 0
        while index < len(self.stages):  # the plan may grow as it runs (see ``_grow``)
            stage = self.stages[index]
            await self._run_stage(stage, self.results[index])
            self._grow(index, stage)
            index += 1

    def _grow(self, index: int, stage: Stage) -> None:
        """A stage may add stages after itself once it is over (``follow(context)``): a loop
        whose turns are not known in advance (an orchestrator's tool calls) is a plan that
        grows one stage at a time, each made and recorded like any other."""
        follow = getattr(stage, "follow", None)
        if follow is None:
            return
        try:
            added = list(follow(self.context))
        except Exception as exc:  # a shape's bug ends the loop, never the run
            self.results[index].verdict = StageError(f"{type(exc).__name__}: {exc}")
            return
        self.stages[index + 1 : index + 1] = added
        self.results[index + 1 : index + 1] = [_stage_result(s) for s in added]

    async def _run_stage(self, stage: Stage, stage_result: StageResult) -> None:
        try:
            calls = stage_calls(stage, self.context, self.engine.settings)
        except Exception as exc:  # a shape's bug costs its stage, never the answers so far
            calls = []
            stage_result.verdict = StageError(f"{type(exc).__name__}: {exc}")
        stage_result.calls = [self.kept.get(c.call_id) or CallResult.of(c) for c in calls]
        self.context.stages[stage.id] = stage_result
        self.observer.handle(StageStarted(stage.id, stage.kind, calls))
        async with anyio.create_task_group() as tg:
            for call, result in zip(calls, stage_result.calls, strict=True):
                self._calls[call.call_id] = call
                if call.call_id not in self.kept:
                    self._asked.add(call.call_id)
                    tg.start_soon(self._call, call, result)
        if stage_result.verdict is None:
            try:
                stage_result.verdict = stage.verdict(self.context, stage_result.calls)
            except Exception as exc:  # a shape's bug costs its verdict, never the answers
                stage_result.verdict = StageError(f"{type(exc).__name__}: {exc}")
        self.observer.handle(StageFinished(stage.id, stage.kind, stage_result.verdict, stage.key))

    async def _call(self, call: Call, result: CallResult) -> None:
        await self.engine.call(call, result, self.observer, stream=self.stream, trace=self._trace)

    def report(self) -> RunReport:
        """The run as it stands: complete after ``execute``, partial after an interruption."""
        stages = self.results
        if self.previous is not None:
            stages = self._merged(self.previous)
        return RunReport(
            run_id=self.run_id,
            prompt=self.prompt,
            started_at=self._started_wall.isoformat(timespec="milliseconds"),
            finished_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
            duration_s=round(time.perf_counter() - self._started, 3),
            stages=stages,
            trace_id=self.trace_id,
            shape=self.shape,
            interrupted=self.interrupted and self.previous is None,
            # A carried-on run that was interrupted keeps the status it had: what it did not
            # redo is exactly as it was.
            recorded_status=_kept_status(self.previous) if self.interrupted else None,
            span_id=self.span_id,
            parent_span_id=self.parent_span_id,
            attachments=self.engine.settings.attachments,
            conversation_id=self.conversation_id,
            turn=self.turn,
        )

    @property
    def conversation_id(self) -> str:
        """The conversation the run is a turn of: the run's own id for a first turn that
        nobody named."""
        conversation = self.context.conversation
        return (conversation.id if conversation else "") or self.run_id

    @property
    def turn(self) -> int:
        conversation = self.context.conversation
        return conversation.turn if conversation else 1

    def conclude(self) -> RunReport:
        """The final report, after telling observers how the calls cut short ended."""
        for stage in self.results:
            for result in stage.calls:
                call = self._calls.get(result.call_id)
                # Started (a slot, perhaps a wait for the rate limiter) but never finished.
                started = result.attempts or result.latency_s is not None
                if call is not None and result.status == "cancelled" and started:
                    self.observer.handle(CallFinished(call, result))
        report = self.report()
        self.observer.handle(RunFinished(report))
        return report

    def _merged(self, previous: RunReport) -> list[StageResult]:
        """This execution's stages over the stored ones (see the class docstring)."""
        merged: list[StageResult] = []
        for stage in self.results:
            old = previous.stage(stage.id)
            reached = stage.id in self.context.stages
            if not reached and old is not None:
                merged.append(old)
                continue
            olds = {c.call_id: c for c in old.calls} if old else {}
            calls = []
            for result in stage.calls:
                before = olds.get(result.call_id)
                worse = result.status == "cancelled" or (
                    result.status != "ok" and before is not None and before.status == "ok"
                )
                calls.append(before if before is not None and worse else result)
            verdict = stage.verdict if stage.verdict is not None or old is None else old.verdict
            merged.append(
                StageResult(stage.id, stage.kind, calls, verdict, stage.key, stage.holds_answers)
            )
        return merged


def stage_calls(stage: Stage, context: RunContext, settings: RunSettings) -> list[Call]:
    """The calls ``stage`` makes in ``context``, as every run (and a batch's flat pool) makes
    them: the personas' carrying the run's attachments (``-f``)."""
    return _with_attachments(stage.calls(context), settings.attachments)


def _with_attachments(calls: list[Call], attachments: Sequence[Attachment]) -> list[Call]:
    """The personas' calls carrying the run's attachments (``-f``), if it has any."""
    if not attachments:
        return calls
    from fanout.attachments import with_attachments

    return with_attachments(calls, attachments)


def _answered(call: Call, result: CallResult, completion: Completion) -> None:
    """Fill ``result`` with an answer (from the server, or the cache), read by its stage."""
    result.status = "ok"
    result.answer = completion.text.strip()
    result.finish_reason = completion.finish_reason
    result.response_model = completion.model
    result.truncated = completion.finish_reason == "length"
    # A server that reports no usage gets it counted from the text, and says so.
    result.usage_estimated = completion.usage is None
    result.usage = completion.usage or _estimated_usage(call.messages, completion.text)
    if completion.tool_calls:  # what the model asked for; the shape acts on it
        result.details["tool_calls"] = [dict(t) for t in completion.tool_calls]
    if call.read is not None:
        with suppress(Exception):  # a shape's reader bug: the answer stays as it came
            call.read(result)


class _KeyParts(TypedDict):
    response_format: Mapping[str, object] | None
    tools: Sequence[Mapping[str, object]] | None
    repeat: int


def _key_parts(call: Call) -> _KeyParts:
    """What of a call beyond its agent and messages makes its request (the cache's key)."""
    from fanout.cache import repeat_index

    return {
        "response_format": call.response_format,
        "tools": call.tools,
        "repeat": repeat_index(call.name),
    }


def _default_cache() -> ResponseCache:
    """The response cache beside the history (``StorageError`` if it cannot be opened)."""
    import os

    from fanout.cache import ResponseCache, cache_path

    return ResponseCache.shared(cache_path(os.environ))


def _stage_result(stage: Stage) -> StageResult:
    """A stage's result before it runs: no calls yet, no verdict."""
    holds = bool(getattr(stage, "holds_answers", False))
    return StageResult(stage.id, stage.kind, key=stage.key, holds_answers=holds)


def _kept_status(previous: RunReport | None) -> RunStatus | None:
    if previous is None:
        return None
    status = previous.status
    return "cancelled" if status in ("running", "interrupted") else status


def _estimated_usage(messages: Sequence[Message], text: str) -> Usage:
    prompt_tokens = estimate_tokens(messages)
    answer_tokens = max(1, len(text) // 4) if text else 0
    return Usage(prompt_tokens, answer_tokens, prompt_tokens + answer_tokens)


def _cancelled() -> bool:
    """Whether the current task is being cancelled (inside a ``finally``)."""
    return isinstance(sys.exc_info()[1], anyio.get_cancelled_exc_class())


def _innermost(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def unwrap_fanout_error(group: BaseExceptionGroup[BaseException]) -> FanoutError | None:
    """The ``FanoutError`` a task group wrapped, when that is all it holds."""
    fanout_errors, rest = group.split(FanoutError)
    if fanout_errors is not None and rest is None:
        inner = _innermost(fanout_errors)
        return inner if isinstance(inner, FanoutError) else None
    return None


def _strictest(values: Iterable[float | None]) -> float | None:
    given = [v for v in values if v is not None]
    return min(given) if given else None
