"""Client-side rate limits per endpoint: requests per minute, tokens per minute, pauses.

Semantics (exact, and tested on a fake clock):

* **RPM**: request starts are spaced ``60 / rpm`` seconds apart, with a burst of at most one
  second's worth (``ceil(rpm / 60)``, at least 1) after a quiet spell. No 1-second window holds
  more than that burst and no 60-second window holds more than ``rpm`` starts (with a 5 ms
  guard for network jitter). A saturated endpoint gets one start about every ``60 / rpm``
  seconds, not a burst every second. Starts are counted from when the request is sent.
* **TPM**: each call reserves its estimated tokens (prompt estimate + ``max_tokens``) before it
  starts; once the answer is in, the reservation is corrected to the real usage. No 60-second
  window holds more than ``tpm`` reserved tokens (a single call larger than ``tpm`` still goes,
  alone).
* **Pauses**: a 429 with ``Retry-After`` pauses the whole endpoint, and so do
  ``x-ratelimit-remaining-* = 0`` with ``x-ratelimit-reset-*`` (``1s``, ``6m0s``, ``12ms``).
  Missing or nonsensical headers (``-1``) are ignored. A pause longer than ``max_pause``
  (``--max-retry-after``) is not waited out: until it ends, calls to the endpoint fail at once
  with a ``rate_limit`` error that says so, rather than hang or hammer it. However long the
  pause (a spent daily quota asks for 86,400 s): the longer it is, the more surely the
  endpoint is closed, so no length is too long to count.

Waiters are served in arrival order (an ``anyio.Lock`` is fair), so one wakes at a time.
"""

from __future__ import annotations

import heapq
import math
import re
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import anyio
import anyio.lowlevel

from fanout.errors import ProviderError

WINDOW_S = 60.0
MAX_HEADER_PAUSE_S = 3600.0
_EPSILON = 1e-9  # float noise in the schedule must not cost a sleep
# Requests reach the server a few milliseconds apart from when they left, never exactly: a
# start leaves the window only this long after it would have, so the server never counts one
# too many. It costs 0.5 % of throughput on a saturated endpoint.
GUARD_S = 0.005
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


class Clock(Protocol):
    """Time as the limiter sees it; tests pass a fake one that jumps instead of sleeping."""

    def now(self) -> float: ...

    async def sleep_until(self, deadline: float, wake: anyio.Event) -> None:
        """Return at ``deadline``, or earlier once ``wake`` is set."""
        ...


class MonotonicClock:
    """The event loop's clock."""

    def now(self) -> float:
        return anyio.current_time()

    async def sleep_until(self, deadline: float, wake: anyio.Event) -> None:
        with anyio.move_on_after(max(deadline - self.now(), 0.0)):
            await wake.wait()


@dataclass
class _Entry:
    at: float
    tokens: int


@dataclass
class _Start:
    at: float


class Reservation:
    """One admitted request. ``settle`` replaces its token estimate with the real usage;
    ``mark_sent`` moves its start to the moment it really left (see ``RateLimiter``)."""

    def __init__(self, limiter: RateLimiter, start: _Start | None, entry: _Entry | None) -> None:
        self._limiter = limiter
        self._start = start
        self._entry = entry

    def mark_sent(self) -> None:
        now = self._limiter._clock.now()
        if self._start is not None:
            self._start.at = max(self._start.at, now)
        if self._entry is not None:
            self._entry.at = max(self._entry.at, now)

    def settle(self, tokens: int) -> None:
        if self._entry is not None and tokens != self._entry.tokens:
            self._entry.tokens = max(tokens, 0)
            self._limiter._changed()


class RateLimiter:
    """The limits of one endpoint, shared by every agent (and the synthesis) that calls it."""

    def __init__(
        self,
        rpm: float | None = None,
        tpm: float | None = None,
        *,
        max_pause: float = MAX_HEADER_PAUSE_S,
        clock: Clock | None = None,
    ) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self.max_pause = max_pause
        self._clock: Clock = clock or MonotonicClock()
        self._lock = anyio.Lock()
        self._wake = anyio.Event()
        self._paused_until = -math.inf
        self._blocked_until = -math.inf  # a pause too long to wait out
        self._blocked_for = 0.0
        self._interval = WINDOW_S / rpm if rpm else 0.0
        self._burst = max(1, math.ceil(rpm / 60)) if rpm else 0
        self._per_minute = max(math.floor(rpm), 1) if rpm else 0
        self._tat = -math.inf  # theoretical arrival time of the next start (GCRA)
        # Every start of the last minute. Starts move later once sent, so these are pruned by
        # time and counted by time, never by the order they were admitted in.
        self._starts: deque[_Start] = deque()
        self._tokens: deque[_Entry] = deque()

    @property
    def paused_until(self) -> float:
        return self._paused_until

    async def acquire(
        self, tokens: int = 0, on_wait: Callable[[float], None] | None = None
    ) -> Reservation:
        """Wait until one request of ``tokens`` estimated tokens may start, then record it.
        ``on_wait`` hears how many seconds it is about to wait, whenever that becomes known
        or changes (for the display).

        The start is recorded now; ``Reservation.mark_sent`` moves it to when the request
        actually left. A burst admitted at one instant leaves over the time it takes to build
        each request and open connections, and the windows must count what the server sees.
        """
        self._check_blocked()
        if not self.rpm and not self.tpm and self._paused_until <= self._clock.now():
            await anyio.lowlevel.checkpoint()
            return Reservation(self, None, None)
        async with self._lock:
            held_by_window = False
            told = -math.inf
            while True:
                now = self._clock.now()
                ready, window_bound = self._ready_at(now, tokens)
                if ready <= now + _EPSILON:
                    return self._record(now, tokens, held_by_window)
                held_by_window |= window_bound
                if on_wait is not None and abs(ready - told) > 0.05:
                    told = ready
                    on_wait(ready - now)
                await self._clock.sleep_until(ready, self._wake)
                self._check_blocked()

    def would_wait(self, tokens: int = 0) -> bool:
        """Whether ``acquire`` would have to wait now (for the display; not a promise)."""
        if not self.rpm and not self.tpm:
            return self._paused_until > self._clock.now()
        now = self._clock.now()
        return self._lock.locked() or self._ready_at(now, tokens)[0] > now + _EPSILON

    def expected_wait(self, tokens: int = 0) -> float | None:
        """How long ``acquire`` would wait now, as far as the limiter can tell (for the
        display): 0 if not at all, None when other callers queue first, whose own requests
        will move the time."""
        now = self._clock.now()
        if not self.rpm and not self.tpm:
            return max(self._paused_until - now, 0.0)
        if self._lock.locked():
            return None
        return max(self._ready_at(now, tokens)[0] - now, 0.0)

    def pause_for(self, seconds: float) -> None:
        """Hold every request to this endpoint for ``seconds`` (a 429's Retry-After); beyond
        ``max_pause``, close it until then (every call fails at once, without a request)."""
        if not 0 < seconds < math.inf:
            return
        until = self._clock.now() + seconds
        if seconds > self.max_pause:
            if until > self._blocked_until:
                self._blocked_until, self._blocked_for = until, seconds
            self._changed()
        elif until > self._paused_until:
            self._paused_until = until
            self._changed()

    def _check_blocked(self) -> None:
        if self._blocked_until > self._clock.now():
            raise ProviderError(
                f"the server paused this endpoint for {self._blocked_for:g} s"
                f"{_in_words(self._blocked_for)}, more than --max-retry-after {self.max_pause:g} s",
                kind="rate_limit",
                status_code=429,
            )

    def observe(self, headers: Mapping[str, str]) -> None:
        """Learn from ``x-ratelimit-remaining-*`` / ``x-ratelimit-reset-*`` response headers."""
        for kind in ("requests", "tokens"):
            remaining = _parse_int(headers.get(f"x-ratelimit-remaining-{kind}"))
            reset = parse_duration(headers.get(f"x-ratelimit-reset-{kind}"))
            if remaining == 0 and reset is not None:
                self.pause_for(reset)

    def _ready_at(self, now: float, tokens: int) -> tuple[float, bool]:
        """When the next start may go, and whether a 1 s / 60 s window is what holds it."""
        ready = max(now, self._paused_until)
        window_bound = False
        if self.rpm:
            paced = self._tat - (self._burst - 1) * self._interval
            windows = -math.inf
            while self._starts and self._starts[0].at <= now - WINDOW_S - GUARD_S:
                self._starts.popleft()
            recent = [s.at for s in self._starts if s.at > now - 1.0 - GUARD_S]
            if len(recent) >= self._burst:  # free once the burst-th latest start is 1 s old
                windows = heapq.nlargest(self._burst, recent)[-1] + 1.0 + GUARD_S
            if len(self._starts) >= self._per_minute:
                latest = heapq.nlargest(self._per_minute, (s.at for s in self._starts))[-1]
                windows = max(windows, latest + WINDOW_S + GUARD_S)
            window_bound = windows > max(ready, paced)
            ready = max(ready, paced, windows)
        if self.tpm:
            ready = max(ready, self._tokens_ready_at(now, tokens))
        return ready, window_bound

    def _tokens_ready_at(self, now: float, tokens: int) -> float:
        assert self.tpm is not None
        while self._tokens and self._tokens[0].at <= now - WINDOW_S:
            self._tokens.popleft()
        need = min(tokens, self.tpm)
        held = sum(e.tokens for e in self._tokens)
        if held + need <= self.tpm:
            return now
        for entry in self._tokens:
            held -= entry.tokens
            if held + need <= self.tpm:
                return entry.at + WINDOW_S
        return now  # unreachable: once every entry expired, held is 0

    def _record(self, now: float, tokens: int, held_by_window: bool) -> Reservation:
        start = entry = None
        if self.rpm:
            if held_by_window:
                # Held back by a window: resume at the steady pace rather than bursting again,
                # so a saturated endpoint sees evenly spaced starts, not a burst every second.
                self._tat = now + self._burst * self._interval
            else:
                self._tat = max(self._tat, now) + self._interval
            start = _Start(now)
            self._starts.append(start)
        if self.tpm:
            entry = _Entry(now, tokens)
            self._tokens.append(entry)
        return Reservation(self, start, entry)

    def _changed(self) -> None:
        self._wake.set()
        self._wake = anyio.Event()


def parse_duration(value: str | None) -> float | None:
    """Seconds in ``1s``, ``6m0s``, ``12ms``, ``1h2m``, ``0.5`` (plain seconds); else ``None``."""
    if value is None:
        return None
    text = value.strip().lower()
    try:
        seconds = float(text)
    except ValueError:
        parts = _DURATION.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            return None
        scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
        seconds = sum(float(n) * scale[u] for n, u in parts)
    return seconds if 0 < seconds <= MAX_HEADER_PAUSE_S else None


def _in_words(seconds: float) -> str:
    """`` (24 h)``: a long wait in units a person reads at a glance; short ones need none."""
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= 2 * size or (unit != "d" and seconds >= size):
            return f" ({seconds / size:.3g} {unit})"
    return ""


def _parse_int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
