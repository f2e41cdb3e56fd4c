"""The rate limiter on a fake clock: exact windows, no real sleeping."""

from __future__ import annotations

import itertools
import re

import anyio
import anyio.lowlevel
import pytest

from fanout.errors import ProviderError
from fanout.limiter import GUARD_S, RateLimiter, parse_duration

pytestmark = pytest.mark.anyio


class FakeClock:
    """Time jumps straight to each deadline: a minute of limiting runs in microseconds."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    async def sleep_until(self, deadline: float, wake: anyio.Event) -> None:
        self.t = max(self.t, deadline)
        await anyio.lowlevel.checkpoint()


async def starts(limiter: RateLimiter, clock: FakeClock, n: int, tokens: int = 0) -> list[float]:
    times = []
    for _ in range(n):
        await limiter.acquire(tokens)
        times.append(clock.t)
    return times


def most_in_window(times: list[float], width: float) -> int:
    """The most starts in any half-open window (t - width, t]."""
    return max(sum(1 for s in times if t - width + 1e-9 < s <= t) for t in times)


async def test_rpm_1200_bursts_one_second_and_never_exceeds_either_window() -> None:
    clock = FakeClock()
    times = await starts(RateLimiter(rpm=1200, clock=clock), clock, 200)
    assert times[:20] == [0.0] * 20  # a burst of one second's worth
    assert times[20] == pytest.approx(1.0 + GUARD_S)  # then the steady pace: 20 a second
    gaps = [b - a for a, b in itertools.pairwise(times[20:])]
    assert min(gaps) >= 0.05 - 1e-9
    assert max(gaps) <= 0.05 + GUARD_S + 1e-9
    assert most_in_window(times, 1.0 + GUARD_S) == 20
    assert most_in_window(times, 60.0) <= 1200
    assert times[-1] == pytest.approx(1.0 + 179 * (1.0 + GUARD_S) / 20, abs=0.05)


async def test_start_moved_to_when_it_was_sent_holds_the_window() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rpm=60, clock=clock)  # one start a second
    first = await limiter.acquire()
    clock.t = 0.3
    first.mark_sent()  # it took 0.3 s to leave (connection set-up)
    await limiter.acquire()
    assert clock.t == pytest.approx(1.3 + GUARD_S)


async def test_burst_comes_back_only_after_a_quiet_spell() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rpm=600, clock=clock)  # burst 10, one start every 0.1 s
    await starts(limiter, clock, 12)
    clock.t += 5.0  # idle: the bucket refills
    times = await starts(limiter, clock, 10)
    assert times == [clock.t] * 10


async def test_rpm_60_spaces_starts_one_second_apart() -> None:
    clock = FakeClock()
    times = await starts(RateLimiter(rpm=60, clock=clock), clock, 5)
    assert times == pytest.approx([k * (1.0 + GUARD_S) for k in range(5)])


async def test_low_rpm_is_spread_over_the_minute_not_bunched() -> None:
    clock = FakeClock()
    times = await starts(RateLimiter(rpm=10, clock=clock), clock, 4)
    assert times == pytest.approx([0.0, 6.0, 12.0, 18.0])


@pytest.mark.parametrize("rpm", [90, 120, 600, 1000])
async def test_no_sixty_second_window_holds_more_than_rpm(rpm: int) -> None:
    clock = FakeClock()
    n = rpm * 2 + 7
    times = await starts(RateLimiter(rpm=rpm, clock=clock), clock, n)
    assert most_in_window(times, 60.0 + GUARD_S) <= rpm
    assert most_in_window(times, 1.0 + GUARD_S) <= -(-rpm // 60)
    # and it leaves no capacity unused: n starts at rpm/60 a second take n / (rpm/60) seconds
    assert times[-1] <= n / (rpm / 60) * (1 + GUARD_S)


async def test_tpm_holds_a_call_until_its_tokens_fit_in_the_window() -> None:
    clock = FakeClock()
    limiter = RateLimiter(tpm=1000, clock=clock)
    await limiter.acquire(400)
    clock.t = 10.0
    await limiter.acquire(400)
    await limiter.acquire(400)  # 1200 > 1000: waits for the first reservation to leave
    assert clock.t == pytest.approx(60.0)


async def test_tpm_correction_with_real_usage_frees_the_difference() -> None:
    clock = FakeClock()
    limiter = RateLimiter(tpm=1000, clock=clock)
    first = await limiter.acquire(400)
    await limiter.acquire(400)
    first.settle(100)  # the answer was shorter than max_tokens
    await limiter.acquire(400)  # 100 + 400 + 400 fits
    assert clock.t == 0.0
    await limiter.acquire(200)  # 1100 does not: waits until the settled 100 expires
    assert clock.t == pytest.approx(60.0)


async def test_tpm_correction_upwards_delays_the_next_call() -> None:
    clock = FakeClock()
    limiter = RateLimiter(tpm=1000, clock=clock)
    first = await limiter.acquire(100)
    first.settle(900)  # the estimate was low
    await limiter.acquire(200)
    assert clock.t == pytest.approx(60.0)


async def test_a_call_larger_than_tpm_still_goes_alone() -> None:
    clock = FakeClock()
    limiter = RateLimiter(tpm=100, clock=clock)
    await limiter.acquire(500)
    assert clock.t == 0.0
    await limiter.acquire(1)
    assert clock.t == pytest.approx(60.0)


async def test_pause_holds_every_request_of_the_endpoint() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    limiter.pause_for(2.5)
    await limiter.acquire()
    assert clock.t == pytest.approx(2.5)
    await limiter.acquire()
    assert clock.t == pytest.approx(2.5)


async def test_the_limiter_tells_how_long_a_call_would_wait() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rpm=60, clock=clock)  # one start a second
    assert limiter.expected_wait() == 0.0
    await limiter.acquire()
    assert limiter.expected_wait() == pytest.approx(1.0 + GUARD_S)
    clock.t = 0.5
    assert limiter.expected_wait() == pytest.approx(0.5 + GUARD_S)
    told: list[float] = []
    await limiter.acquire(on_wait=told.append)  # and a waiter hears it when it waits
    assert told == [pytest.approx(0.5 + GUARD_S)]
    unlimited = RateLimiter(clock=clock)
    unlimited.pause_for(3)
    assert unlimited.expected_wait() == pytest.approx(3.0)


async def test_pause_only_ever_extends() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rpm=600, clock=clock)
    limiter.pause_for(5)
    limiter.pause_for(1)
    await limiter.acquire()
    assert clock.t == pytest.approx(5.0)


@pytest.mark.parametrize(
    ("headers", "paused_for"),
    [
        ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s"}, 360.0),
        ({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "12ms"}, 0.012),
        ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1.5s"}, 1.5),
        ({"x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "20s"}, 0.0),
        ({"x-ratelimit-remaining-requests": "-1", "x-ratelimit-reset-requests": "20s"}, 0.0),
        ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "-1"}, 0.0),
        ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "soon"}, 0.0),
        ({"x-ratelimit-remaining-requests": "none", "x-ratelimit-reset-requests": "1s"}, 0.0),
        ({}, 0.0),
    ],
)
async def test_rate_limit_headers_pause_only_when_exhausted_and_sane(
    headers: dict[str, str], paused_for: float
) -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    limiter.observe(headers)
    await limiter.acquire()
    assert clock.t == pytest.approx(paused_for)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("12ms", 0.012),
        ("1h", 3600.0),
        ("2m30.5s", 150.5),
        ("0.25", 0.25),
        ("-1", None),
        ("0s", None),
        ("", None),
        ("abc", None),
        ("5x", None),
        ("1s junk", None),
        ("99h", None),
        (None, None),
    ],
)
def test_parse_duration(text: str | None, seconds: float | None) -> None:
    assert parse_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


async def test_concurrent_waiters_are_served_in_arrival_order() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rpm=60, clock=clock)
    served: list[tuple[int, float]] = []

    async def one(i: int) -> None:
        await limiter.acquire()
        served.append((i, clock.t))

    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(one, i)
            await anyio.lowlevel.checkpoint()
    assert [i for i, _ in served] == [0, 1, 2, 3, 4]
    assert [t for _, t in served] == pytest.approx([k * (1.0 + GUARD_S) for k in range(5)])


async def test_unlimited_limiter_never_waits() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    await starts(limiter, clock, 1000, tokens=10**6)
    assert clock.t == 0.0


async def test_settling_wakes_a_waiter_on_the_real_clock() -> None:
    limiter = RateLimiter(tpm=1000)  # the event loop's clock: the waiter would sleep 60 s
    held = await limiter.acquire(900)
    done = anyio.Event()

    async def waiter() -> None:
        await limiter.acquire(500)
        done.set()

    with anyio.fail_after(10):  # a hang guard, not a timing assertion
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            assert not done.is_set()
            held.settle(100)
            await done.wait()


async def test_windows_count_send_times_even_when_sends_come_out_of_order() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rpm=120, clock=clock)  # at most 2 starts in any second
    a = await limiter.acquire()
    b = await limiter.acquire()
    b.mark_sent()
    clock.t = 0.9
    a.mark_sent()  # a needed a new connection: it left 0.9 s after b
    sent = [0.0, 0.9]
    for _ in range(3):
        reservation = await limiter.acquire()
        reservation.mark_sent()
        sent.append(clock.t)
    assert most_in_window(sorted(sent), 1.0) <= 2


async def test_a_pause_too_long_to_wait_fails_calls_at_once() -> None:
    clock = FakeClock()
    limiter = RateLimiter(max_pause=60, clock=clock)
    limiter.pause_for(1800)
    with pytest.raises(ProviderError, match="paused this endpoint for 1800 s"):
        await limiter.acquire()
    assert clock.t == 0.0  # it did not wait
    clock.t = 1801
    await limiter.acquire()  # the pause is over


@pytest.mark.parametrize("seconds", [3601.0, 86_400.0, 1e12])
async def test_a_pause_of_a_day_or_more_closes_the_endpoint_until_then(seconds: float) -> None:
    clock = FakeClock()
    limiter = RateLimiter(max_pause=60, clock=clock)
    limiter.pause_for(seconds)  # a spent daily quota: Retry-After 86400
    for _ in range(3):  # every later call, not just the next one
        with pytest.raises(ProviderError, match=re.escape(f"for {seconds:g} s")) as e:
            await limiter.acquire()
        assert (e.value.kind, e.value.status_code, e.value.retryable) == ("rate_limit", 429, False)
    assert clock.t == 0.0  # failed at once, no waiting
    clock.t = seconds + 1
    await limiter.acquire()  # the quota is back


def test_a_closed_endpoint_says_how_long_in_words() -> None:
    limiter = RateLimiter(max_pause=60, clock=FakeClock())
    limiter.pause_for(86_400)
    with pytest.raises(ProviderError, match=r"86400 s \(24 h\), more than --max-retry-after 60 s"):
        limiter._check_blocked()


async def test_a_long_pause_within_max_pause_is_waited_out() -> None:
    clock = FakeClock()
    limiter = RateLimiter(max_pause=100_000, clock=clock)  # --max-retry-after 100000
    limiter.pause_for(86_400)
    await limiter.acquire()
    assert clock.t == pytest.approx(86_400)


@pytest.mark.parametrize("seconds", [0.0, -5.0, float("inf"), float("nan")])
async def test_a_pause_of_no_length_or_no_end_is_ignored(seconds: float) -> None:
    clock = FakeClock()
    limiter = RateLimiter(max_pause=60, clock=clock)
    limiter.pause_for(seconds)
    await limiter.acquire()
    assert clock.t == 0.0
