"""Regression metrics agree with scikit-learn and scipy to 1e-9; NaN is refused by name."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as sk

import metrics

TOL = 1e-9


def _case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 80))
    refs = rng.normal(scale=10.0 ** rng.integers(-2, 4), size=n)
    if seed % 5 == 0:
        refs = np.round(refs)  # ties for the rank correlation
    preds = refs + rng.normal(scale=rng.random() * 5, size=n)
    if seed % 7 == 0:
        preds = np.round(preds, 0)
    # constant sides are covered by their own test (scipy gives NaN there, we give 0)
    refs[0] += 0 if np.ptp(refs) else 1.0
    preds[0] += 0 if np.ptp(preds) else 1.0
    return preds, refs


@pytest.mark.parametrize("seed", range(80))
def test_regression_metrics_match_scikit_learn_and_scipy(seed: int) -> None:
    preds, refs = _case(seed)
    expected = {
        "mse": sk.mean_squared_error(refs, preds),
        "rmse": sk.root_mean_squared_error(refs, preds),
        "mae": sk.mean_absolute_error(refs, preds),
        "r2": sk.r2_score(refs, preds),
        "pearson": stats.pearsonr(preds, refs).statistic,
        "spearman": stats.spearmanr(preds, refs).statistic,
    }
    for name, value in expected.items():
        got = metrics.compute(name, preds.tolist(), refs.tolist())
        assert abs(got - value) <= TOL * max(1.0, abs(value)), name


def test_r2_of_constant_references_follows_scikit_learn_force_finite() -> None:
    assert metrics.compute("r2", [3.0, 3.0], [3.0, 3.0]) == sk.r2_score([3.0, 3.0], [3.0, 3.0])
    assert metrics.compute("r2", [2.0, 4.0], [3.0, 3.0]) == sk.r2_score([3.0, 3.0], [2.0, 4.0])


def test_correlation_with_a_constant_side_is_zero_not_nan() -> None:
    assert metrics.compute("pearson", [1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) == 0.0
    assert metrics.compute("spearman", [1.0, 2.0, 3.0], [5.0, 5.0, 5.0]) == 0.0


@pytest.mark.parametrize("name", ["mse", "rmse", "mae", "r2", "pearson", "spearman"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, None])
def test_nan_infinity_and_missing_values_are_refused_by_name(name: str, bad) -> None:
    with pytest.raises(metrics.MetricError, match=rf"^{name}: references contain .* at index 1"):
        metrics.compute(name, [1.0, 2.0, 3.0], [1.0, bad, 3.0])


def test_strings_are_not_numbers() -> None:
    with pytest.raises(metrics.MetricError, match="mae: predictions must be numbers, got str"):
        metrics.compute("mae", ["1.5", 2.0], [1.0, 2.0])


def test_correlations_need_two_examples() -> None:
    with pytest.raises(metrics.MetricError, match="pearson: needs at least two examples"):
        metrics.compute("pearson", [1.0], [1.0])
