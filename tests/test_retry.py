"""The retry loop: the first attempt alone when it succeeds, tenacity's waits and events after."""

from __future__ import annotations

import pytest

from fanout.errors import ProviderError
from fanout.retry import RetryEvent, RetryPolicy, call_with_retries

pytestmark = pytest.mark.anyio


def _failure(*, retryable: bool = True, retry_after: float | None = None) -> ProviderError:
    return ProviderError(
        "busy", kind="server_error", status_code=503, retryable=retryable, retry_after=retry_after
    )


class Script:
    """An attempt that fails as scripted, then answers; and a sleep that only records."""

    def __init__(self, *failures: ProviderError) -> None:
        self.failures = list(failures)
        self.numbers: list[int] = []
        self.slept: list[float] = []
        self.events: list[RetryEvent] = []

    async def attempt(self, number: int) -> str:
        self.numbers.append(number)
        if self.failures:
            raise self.failures.pop(0)
        return f"answer {number}"

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)

    async def run(self, policy: RetryPolicy) -> str:
        return await call_with_retries(
            self.attempt, policy, on_retry=self.events.append, sleep=self.sleep
        )


async def test_a_first_answer_is_taken_without_waiting() -> None:
    script = Script()
    assert await script.run(RetryPolicy(retries=3)) == "answer 1"
    assert (script.numbers, script.slept, script.events) == ([1], [], [])


async def test_failures_are_retried_with_numbered_attempts_and_one_event_per_wait() -> None:
    script = Script(_failure(retry_after=1.5), _failure())
    assert await script.run(RetryPolicy(retries=3, backoff_base=0.5, backoff_cap=4)) == "answer 3"
    assert script.numbers == [1, 2, 3]
    assert [(e.attempt, e.max_attempts) for e in script.events] == [(1, 4), (2, 4)]
    assert script.slept[0] == 1.5  # the server's Retry-After wins over backoff
    assert 0 <= script.slept[1] <= 1.0  # full jitter up to base * 2 ** (attempt - 1)
    assert [e.wait_s for e in script.events] == script.slept


async def test_the_last_error_is_raised_as_it_is_once_the_attempts_are_spent() -> None:
    last = _failure()
    script = Script(_failure(), _failure(), last)
    with pytest.raises(ProviderError) as caught:
        await script.run(RetryPolicy(retries=2))
    assert caught.value is last
    assert script.numbers == [1, 2, 3] and len(script.events) == 2


async def test_an_error_not_worth_retrying_ends_the_call_at_once() -> None:
    refused = _failure(retryable=False)
    script = Script(refused)
    with pytest.raises(ProviderError) as caught:
        await script.run(RetryPolicy(retries=3))
    assert caught.value is refused and script.numbers == [1] and script.slept == []


@pytest.mark.parametrize("failures", [1, 2], ids=["first attempt", "a later attempt"])
async def test_a_server_asking_to_wait_too_long_fails_the_call_saying_why(failures: int) -> None:
    script = Script(*([_failure()] * (failures - 1)), _failure(retry_after=600))
    with pytest.raises(ProviderError) as caught:
        await script.run(RetryPolicy(retries=3, max_retry_after=60))
    assert "asked to wait 600 s, more than --max-retry-after 60 s" in caught.value.message
    assert not caught.value.retryable and script.numbers == list(range(1, failures + 1))
