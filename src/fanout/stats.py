"""The statistics of an eval, in pure Python: Wilson intervals for pass rates, percentiles,
an exact McNemar test for paired pass/fail results, and Bradley-Terry ratings from pairwise
preferences with bootstrap intervals.

Everything here is deterministic for a given input (the bootstrap takes a seed), so an eval's
document is the same whenever it is rebuilt from the same answers.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

Z95 = 1.959963984540054  # the standard normal's 97.5th percentile
ELO_SCALE = 400.0  # ratings as Chatbot Arena prints them: 400 points = 10:1 odds
ELO_BASE = 1000.0


def wilson(passed: int, total: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of ``passed / total`` (95 % by default): it stays inside
    [0, 1] and is honest at 0 % and 100 %, where the normal approximation collapses to a
    point. ``(0.0, 1.0)`` for no trials."""
    if total <= 0:
        return 0.0, 1.0
    p = passed / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    low, high = max(0.0, centre - half), min(1.0, centre + half)
    # Exactly 0 and 1 at the edges (float noise would print 1e-17).
    return (0.0 if passed == 0 else low), (1.0 if passed == total else high)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) by linear interpolation between closest ranks (numpy's
    default); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))


def mcnemar(only_a: int, only_b: int) -> float:
    """The exact two-sided McNemar p-value for paired pass/fail results: ``only_a`` cases A
    passed and B failed, ``only_b`` the reverse. Cases both passed or both failed say nothing
    about which is better. 1.0 when nothing differs."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail: float = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class Comparison:
    """One judged pair in one case: ``score`` is 1.0 when ``first`` won, 0.0 when ``second``
    did, 0.5 for a tie (an inconsistent pair included)."""

    case: str
    first: str
    second: str
    score: float


@dataclass(frozen=True)
class Rating:
    """A persona's Bradley-Terry rating on the Elo scale, with its bootstrap interval."""

    persona: str
    rating: float
    ci_low: float
    ci_high: float
    wins: float  # ties count a half
    games: int


def bradley_terry(
    players: Sequence[str], comparisons: Sequence[Comparison], *, prior: float = 1.0
) -> dict[str, float]:
    """Bradley-Terry strengths by Hunter's MM algorithm, on the Elo scale (mean 1000).

    A tie counts half a win to each side. ``prior`` adds that many virtual games of each
    player against an average opponent, half won: a persona that won every comparison gets a
    large but finite rating instead of running off to infinity."""
    index = {p: i for i, p in enumerate(players)}
    n = len(players)
    if n == 0:
        return {}
    wins = [prior / 2] * n
    pair_games: dict[tuple[int, int], float] = {}
    for c in comparisons:
        i, j = index[c.first], index[c.second]
        wins[i] += c.score
        wins[j] += 1 - c.score
        key = (min(i, j), max(i, j))
        pair_games[key] = pair_games.get(key, 0.0) + 1
    strength = [1.0] * n
    for _ in range(500):
        updated = []
        for i in range(n):
            # The virtual opponent has strength 1 (the geometric mean, kept so below).
            denominator = prior / (strength[i] + 1.0)
            for (a, b), games in pair_games.items():
                if i in (a, b):
                    other = b if i == a else a
                    denominator += games / (strength[i] + strength[other])
            updated.append(wins[i] / denominator if denominator > 0 else strength[i])
        mean_log = sum(math.log(s) for s in updated) / n
        updated = [s / math.exp(mean_log) for s in updated]
        change = max(abs(math.log(u / s)) for u, s in zip(updated, strength, strict=True))
        strength = updated
        if change < 1e-9:
            break
    return {p: ELO_BASE + ELO_SCALE * math.log10(strength[index[p]]) for p in players}


def rate(
    players: Sequence[str],
    comparisons: Sequence[Comparison],
    *,
    rounds: int = 200,
    seed: int = 0,
) -> list[Rating]:
    """Bradley-Terry ratings, best first, each with a 95 % interval from ``rounds`` bootstrap
    resamples of the cases (a case's comparisons stay together: they share its question)."""
    point = bradley_terry(players, comparisons)
    by_case: dict[str, list[Comparison]] = {}
    for c in comparisons:
        by_case.setdefault(c.case, []).append(c)
    cases = list(by_case)
    rng = random.Random(seed)
    samples: dict[str, list[float]] = {p: [] for p in players}
    for _ in range(rounds if cases else 0):
        drawn = [c for _ in cases for c in by_case[rng.choice(cases)]]
        for player, value in bradley_terry(players, drawn).items():
            samples[player].append(value)
    wins: dict[str, float] = dict.fromkeys(players, 0.0)
    games: dict[str, int] = dict.fromkeys(players, 0)
    for c in comparisons:
        wins[c.first] += c.score
        wins[c.second] += 1 - c.score
        games[c.first] += 1
        games[c.second] += 1
    ratings = []
    for player in players:
        low = percentile(samples[player], 2.5)
        high = percentile(samples[player], 97.5)
        value = point[player]
        ratings.append(
            Rating(
                player,
                round(value, 1),
                round(value if low is None else min(low, value), 1),
                round(value if high is None else max(high, value), 1),
                wins[player],
                games[player],
            )
        )
    return sorted(ratings, key=lambda r: (-r.rating, r.persona))


def overlapping(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether two intervals share any point."""
    return a[0] <= b[1] and b[0] <= a[1]


def win_rates(outcomes: Mapping[str, tuple[float, int]]) -> dict[str, float]:
    """``{persona: wins / games}`` from ``{persona: (wins, games)}`` (no games: 0)."""
    return {p: (w / g if g else 0.0) for p, (w, g) in outcomes.items()}
