"""Series summaries: the numbers a benchmark run reports for a metric it printed several times."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metrics import MetricError
from metrics.series import SeriesSummary, summarise


def test_three_equal_values_summarise_to_that_value() -> None:
    assert summarise([12.5, 12.5, 12.5]) == SeriesSummary(
        median=12.5, min=12.5, max=12.5, n=3, mean=12.5, ci_low=12.5, ci_high=12.5
    )


def test_the_median_ignores_one_slow_iteration_that_moves_the_mean() -> None:
    summary = summarise([10.0, 10.2, 9.9, 10.1, 10.0, 10.3, 9.8, 10.1, 55.0])
    assert summary.median == 10.1
    assert summary.mean == pytest.approx(135.4 / 9)
    assert (summary.min, summary.max, summary.n) == (9.8, 55.0, 9)
    # a resample is dominated by the slow iteration (5 of 9 draws) with probability < 0.3 %
    assert summary.ci_low <= summary.median <= summary.ci_high < 11.0


def test_one_value_has_an_interval_of_zero_width() -> None:
    summary = summarise([3])
    assert (summary.median, summary.ci_low, summary.ci_high, summary.n) == (3.0, 3.0, 3.0, 1)


def test_interval_is_deterministic_for_a_seed_and_narrows_with_more_values() -> None:
    rng = np.random.default_rng(4)
    small, large = rng.normal(10, 1, 20), rng.normal(10, 1, 2000)
    assert summarise(small, seed=3) == summarise(small, seed=3)
    assert summarise(small, seed=3) != summarise(small, seed=4)
    width = lambda s: s.ci_high - s.ci_low  # noqa: E731
    assert width(summarise(large)) < width(summarise(small)) / 4


def test_interval_covers_the_true_median_about_as_often_as_it_says() -> None:
    rng = np.random.default_rng(8)
    covered = 0
    trials = 200
    for _ in range(trials):
        summary = summarise(rng.normal(50.0, 2.0, 41), resamples=1000, seed=None)
        covered += summary.ci_low <= 50.0 <= summary.ci_high
    # nominal 95 %; the percentile bootstrap of a median runs a little wide or narrow
    assert 0.88 <= covered / trials <= 0.995


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=40))
def test_summary_is_ordered_for_any_series(values: list[float]) -> None:
    s = summarise(values, resamples=200)
    assert s.min <= s.ci_low <= s.median <= s.ci_high <= s.max
    assert s.min <= s.mean <= s.max or np.isclose(s.mean, s.min) or np.isclose(s.mean, s.max)
    assert s.n == len(values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([], "empty"),
        ([1.0, float("nan")], "NaN or a missing value at index 1"),
        ([1.0, float("inf")], "infinite value at index 1"),
        (["12.5"], "must be numbers"),
    ],
)
def test_bad_series_are_refused_with_the_place_and_the_problem(values, message) -> None:
    with pytest.raises(MetricError, match=message):
        summarise(values)


def test_bad_options_are_refused() -> None:
    with pytest.raises(MetricError, match="confidence"):
        summarise([1.0, 2.0], confidence=1.0)
    with pytest.raises(MetricError, match="resamples"):
        summarise([1.0, 2.0], resamples=0)
