"""When and how long to retry a failed call. tenacity runs the loop; this module is its policy.

The openai client never retries by itself (``max_retries=0``), so ``retries=N`` means at most
N + 1 HTTP attempts. The server's ``retry-after-ms`` / ``retry-after`` wins over backoff; a server
asking for longer than ``max_retry_after`` fails the call at once instead of stalling the run.

The first attempt is made before any retrier exists (or tenacity is imported: 5 ms of a
launch): tenacity builds several objects and closures per retrier, and a batch makes hundreds
of thousands of calls that mostly succeed at once. A call that fails worth retrying hands that
failure to tenacity as its first attempt, so the waits, the events and the attempt numbers are
tenacity's, as if it had run them all.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import anyio

from fanout.errors import ProviderError

if TYPE_CHECKING:  # tenacity loads with the first call that fails worth retrying
    from tenacity import RetryCallState

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """``retries`` after the first attempt; backoff is exponential with full jitter."""

    retries: int = 3
    max_retry_after: float = 60.0
    backoff_base: float = 0.5
    backoff_cap: float = 20.0

    @property
    def max_attempts(self) -> int:
        return self.retries + 1


@dataclass(frozen=True)
class RetryEvent:
    """A failed attempt that will be tried again after ``wait_s`` seconds."""

    attempt: int  # the attempt that failed, from 1
    max_attempts: int
    wait_s: float
    error: ProviderError


async def call_with_retries(
    attempt: Callable[[int], Awaitable[T]],
    policy: RetryPolicy,
    *,
    on_retry: Callable[[RetryEvent], None] | None = None,
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
) -> T:
    """Run ``attempt(n)`` for n = 1, 2, ... until it succeeds or the policy gives up.

    The last error is raised as it is, so the caller sees the provider's own message.
    """

    async def bounded(number: int) -> T:
        try:
            return await attempt(number)
        except ProviderError as exc:
            error = _bounded(exc, policy)
            if error is exc:
                raise
            raise error from None

    try:
        return await bounded(1)  # most calls end here, with no retrier built
    except ProviderError as exc:
        if not exc.retryable or policy.max_attempts <= 1:
            raise
        first = exc

    async def replayed(number: int) -> T:
        if number == 1:
            raise first  # tenacity's first attempt is the one already made
        return await bounded(number)

    return await _retrying(replayed, policy, on_retry, sleep)


async def _retrying(
    attempt: Callable[[int], Awaitable[T]],
    policy: RetryPolicy,
    on_retry: Callable[[RetryEvent], None] | None,
    sleep: Callable[[float], Awaitable[None]],
) -> T:
    from tenacity import (
        AsyncRetrying,
        retry_if_exception,
        stop_after_attempt,
        wait_random_exponential,
    )

    backoff = wait_random_exponential(multiplier=policy.backoff_base, max=policy.backoff_cap)

    def wait(state: RetryCallState) -> float:
        error = _error_of(state)
        if error is not None and error.retry_after is not None:
            return error.retry_after
        return float(backoff(state))

    def before_sleep(state: RetryCallState) -> None:
        error = _error_of(state)
        if on_retry is not None and error is not None and state.next_action is not None:
            on_retry(
                RetryEvent(
                    state.attempt_number, policy.max_attempts, state.next_action.sleep, error
                )
            )

    retrying = AsyncRetrying(
        stop=stop_after_attempt(policy.max_attempts),
        retry=retry_if_exception(lambda e: isinstance(e, ProviderError) and e.retryable),
        wait=wait,
        before_sleep=before_sleep,
        sleep=sleep,
        reraise=True,
    )
    async for state in retrying:
        with state:
            return await attempt(state.retry_state.attempt_number)
    raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover


def _error_of(state: RetryCallState) -> ProviderError | None:
    if state.outcome is None or not state.outcome.failed:
        return None
    exc = state.outcome.exception()
    return exc if isinstance(exc, ProviderError) else None


def _bounded(exc: ProviderError, policy: RetryPolicy) -> ProviderError:
    """The error as the loop treats it: a server asking to wait longer than
    ``max_retry_after`` is not retried, and the error says why."""
    asked = exc.retry_after
    if exc.retryable and asked is not None and asked > policy.max_retry_after:
        return ProviderError(
            f"{exc.message} (the server asked to wait {asked:g} s, "
            f"more than --max-retry-after {policy.max_retry_after:g} s)",
            kind=exc.kind,
            status_code=exc.status_code,
            retryable=False,
            retry_after=asked,
            headers=exc.headers,
        )
    return exc
