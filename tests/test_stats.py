"""The statistics of an eval, against known values."""

from __future__ import annotations

import pytest

from fanout.stats import Comparison, bradley_terry, mcnemar, percentile, rate, wilson


def test_wilson_interval_known_values() -> None:
    assert wilson(0, 0) == (0.0, 1.0)
    low, high = wilson(8, 8)
    assert (round(low, 4), high) == (0.6756, 1.0)
    low, high = wilson(4, 8)
    assert (round(low, 4), round(high, 4)) == (0.2152, 0.7848)
    low, high = wilson(81, 263)  # Wilson's own example, as textbooks give it
    assert (round(low, 3), round(high, 3)) == (0.255, 0.366)


def test_percentiles_interpolate_like_numpy() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 95) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([float(i) for i in range(1, 101)], 95) == pytest.approx(95.05)


def test_mcnemar_is_exact_and_two_sided() -> None:
    assert mcnemar(0, 0) == 1.0
    assert mcnemar(4, 0) == 0.125
    assert mcnemar(0, 8) == pytest.approx(2 / 256)
    assert mcnemar(3, 3) == 1.0


def test_bradley_terry_orders_and_centres_the_ratings() -> None:
    games = [Comparison(str(i), "a", "b", 1.0) for i in range(6)]
    games += [Comparison(str(i), "b", "c", 1.0) for i in range(6)]
    games += [Comparison(str(i), "a", "c", 0.5) for i in range(2)]
    ratings = bradley_terry(["a", "b", "c"], games)
    assert ratings["a"] > ratings["b"] > ratings["c"]
    assert sum(ratings.values()) / 3 == pytest.approx(1000.0)
    even = bradley_terry(["x", "y"], [Comparison("1", "x", "y", 0.5)])
    assert even["x"] == pytest.approx(even["y"])


def test_rate_gives_bootstrap_intervals_best_first() -> None:
    games = [Comparison(str(i), "strong", "weak", 1.0 if i % 4 else 0.0) for i in range(40)]
    board = rate(["weak", "strong"], games, rounds=100, seed=1)
    assert [r.persona for r in board] == ["strong", "weak"]
    for row in board:
        assert row.ci_low <= row.rating <= row.ci_high and row.ci_low < row.ci_high
    assert board[0].wins == 30 and board[0].games == 40
    assert rate(["a", "b"], [], rounds=10)[0].ci_low == rate(["a", "b"], [])[0].rating
