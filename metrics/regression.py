"""Regression metrics: MSE, RMSE, MAE, R², Pearson and Spearman correlation.

NaN and infinity are refused (MetricError naming the side and the index): a model that emits
NaN has failed, and a silent NaN score would poison the leaderboard. Undefined statistics
follow scikit-learn's `force_finite` idea: R² of constant references is 1.0 for a perfect
prediction and 0.0 otherwise; a correlation with a constant side is 0.0 (no association),
where scipy would return NaN. R² and the correlations need at least two examples.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from metrics.errors import MetricError
from metrics.inputs import check_pair, float_array
from metrics.scores import average_ranks
from metrics.spec import Resampleable, mean_resampleable, table_resampleable


def numbers(predictions: Any, references: Any) -> tuple[np.ndarray, np.ndarray]:
    """Both sides as finite float64 vectors of equal, non-zero length."""
    preds, refs = check_pair(predictions, references)
    return float_array(preds, "predictions"), float_array(refs, "references")


def _at_least_two(n: int) -> None:
    if n < 2:
        raise MetricError(None, f"needs at least two examples, got {n}")


def squared_errors(predictions: Any, references: Any) -> np.ndarray:
    pred, ref = numbers(predictions, references)
    return (ref - pred) ** 2


def absolute_errors(predictions: Any, references: Any) -> np.ndarray:
    pred, ref = numbers(predictions, references)
    return np.abs(ref - pred)


def mse(predictions: Any, references: Any) -> float:
    """Mean squared error."""
    return float(np.mean(squared_errors(predictions, references)))


def rmse(predictions: Any, references: Any) -> float:
    """Root mean squared error."""
    return float(np.sqrt(mse(predictions, references)))


def mae(predictions: Any, references: Any) -> float:
    """Mean absolute error."""
    return float(np.mean(absolute_errors(predictions, references)))


def _r2_from_sums(residual: np.ndarray, total: np.ndarray) -> np.ndarray:
    safe = np.where(total == 0, 1.0, total)
    return np.where(total == 0, np.where(residual == 0, 1.0, 0.0), 1.0 - residual / safe)


def r2(predictions: Any, references: Any) -> float:
    """Coefficient of determination (scikit-learn's r2_score with force_finite=True)."""
    pred, ref = numbers(predictions, references)
    _at_least_two(len(ref))
    residual = np.sum((ref - pred) ** 2)
    total = np.sum((ref - np.mean(ref)) ** 2)
    return float(_r2_from_sums(np.asarray(residual), np.asarray(total)))


def _correlation(x: np.ndarray, y: np.ndarray) -> float:
    xm = x - x.mean()
    ym = y - y.mean()
    norm_x = np.linalg.norm(xm)
    norm_y = np.linalg.norm(ym)
    if norm_x == 0 or norm_y == 0:
        return 0.0
    return float(np.clip(np.dot(xm / norm_x, ym / norm_y), -1.0, 1.0))


def pearson(predictions: Any, references: Any) -> float:
    """Pearson's r; 0.0 when either side is constant."""
    pred, ref = numbers(predictions, references)
    _at_least_two(len(ref))
    return _correlation(pred, ref)


def spearman(predictions: Any, references: Any) -> float:
    """Spearman's rho (Pearson's r of average ranks); 0.0 when either side is constant."""
    pred, ref = numbers(predictions, references)
    _at_least_two(len(ref))
    return _correlation(average_ranks(pred), average_ranks(ref))


def rmse_resampleable(predictions: Any, references: Any) -> Resampleable:
    return mean_resampleable(squared_errors(predictions, references), finish=np.sqrt)


def r2_resampleable(predictions: Any, references: Any) -> Resampleable:
    """Sums of (y, y², residual²) per resample give R²; y is centred first for precision."""
    pred, ref = numbers(predictions, references)
    _at_least_two(len(ref))
    y = ref - ref.mean()
    n = len(y)

    def finish(sums: np.ndarray) -> np.ndarray:
        total = sums[:, 1] - sums[:, 0] ** 2 / n
        total = np.where(np.abs(total) < 1e-12 * max(1.0, float(np.sum(y**2))), 0.0, total)
        return _r2_from_sums(sums[:, 2], total)

    return table_resampleable(np.column_stack([y, y**2, (ref - pred) ** 2]), finish)


def pearson_resampleable(predictions: Any, references: Any) -> Resampleable:
    """Sums of (x, y, x², y², xy) per resample give Pearson's r (0 for a constant side)."""
    pred, ref = numbers(predictions, references)
    _at_least_two(len(ref))
    x = pred - pred.mean()
    y = ref - ref.mean()
    n = len(x)

    def finish(sums: np.ndarray) -> np.ndarray:
        sx, sy, sxx, syy, sxy = sums.T
        cov = sxy - sx * sy / n
        var_x = np.maximum(sxx - sx**2 / n, 0.0)
        var_y = np.maximum(syy - sy**2 / n, 0.0)
        denominator = np.sqrt(var_x * var_y)
        out = np.zeros(len(sums))
        np.divide(cov, denominator, out=out, where=denominator > 1e-300)
        return np.clip(out, -1.0, 1.0)

    return table_resampleable(np.column_stack([x, y, x * x, y * y, x * y]), finish)
