"""When and how long to retry a failed call: the policy and the loop that follows it.

The openai client never retries by itself (``max_retries=0``), so ``retries=N`` means at most
N + 1 HTTP attempts. The server's ``retry-after-ms`` / ``retry-after`` wins over backoff; a server
asking for longer than ``max_retry_after`` fails the call at once instead of stalling the run.

The loop is a plain ``for``: tenacity ran it once, but built a retrier (several objects and
closures) for every call, and a batch makes hundreds of thousands of calls that mostly succeed
at once. Backoff is tenacity's ``wait_random_exponential`` ("full jitter"), unchanged.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import anyio

from fanout.errors import ProviderError

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
    number = 1
    while True:
        try:
            return await attempt(number)
        except ProviderError as exc:
            error = _bounded(exc, policy)
            if not error.retryable or number >= policy.max_attempts:
                if error is exc:
                    raise
                raise error from None
            wait = error.retry_after if error.retry_after is not None else backoff(number, policy)
            if on_retry is not None:
                on_retry(RetryEvent(number, policy.max_attempts, wait, error))
        await sleep(wait)
        number += 1


def backoff(failed: int, policy: RetryPolicy) -> float:
    """Full jitter: a random wait up to ``backoff_base * 2 ** (failed - 1)``, at most
    ``backoff_cap`` (tenacity's ``wait_random_exponential``)."""
    exponent = failed - 1
    high = policy.backoff_cap if exponent > 60 else policy.backoff_base * 2.0**exponent
    return random.uniform(0, max(0.0, min(high, policy.backoff_cap)))


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
