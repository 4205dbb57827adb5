"""Summaries of a series of measurements: several values of one metric in one benchmark run.

A benchmark that prints ``elapsed: 12.5`` on every iteration gives a series, not a number.
It is reported by its median (robust to a slow first iteration or a noisy neighbour), its
range, its mean and a percentile bootstrap interval of the median. The bootstrap resamples
the values themselves, not (prediction, reference) pairs, so ``metrics.bootstrap`` (built
on the metric registry) does not apply; this one is the same idea for a plain vector:
``resamples`` draws of n values with replacement, the median of each, and the
``(1 - confidence) / 2`` quantiles of those medians. Deterministic for a seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from metrics.errors import MetricError
from metrics.inputs import float_array

_CHUNK_ELEMENTS = 1 << 22  # resampled values drawn at once


@dataclass(frozen=True)
class SeriesSummary:
    """Median, range, count and mean of a series, with a bootstrap interval of the median."""

    median: float
    min: float
    max: float
    n: int
    mean: float
    ci_low: float
    ci_high: float


def _bootstrap_medians(values: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    n = len(values)
    chunk = max(1, min(resamples, _CHUNK_ELEMENTS // n))
    medians = []
    for done in range(0, resamples, chunk):
        size = min(chunk, resamples - done)
        medians.append(np.median(values[rng.integers(0, n, size=(size, n))], axis=1))
    return np.concatenate(medians)


def summarise(
    values: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int | None = 0,
) -> SeriesSummary:
    """Summarise a series of finite numbers; NaN, infinity and an empty series are refused.

    One value gives an interval of zero width at that value: there is nothing to resample.
    """
    if not 0 < confidence < 1:
        raise MetricError(None, f"confidence must lie strictly between 0 and 1, got {confidence}")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise MetricError(None, f"resamples must be a positive int, got {resamples!r}")
    arr = float_array(values, "series values")
    if len(arr) == 0:
        raise MetricError(None, "the series is empty; a summary needs at least one value")
    median = float(np.median(arr))
    if len(arr) == 1 or np.ptp(arr) == 0:
        low = high = median
    else:
        medians = _bootstrap_medians(arr, resamples, np.random.default_rng(seed))
        tail = (1 - confidence) / 2
        low, high = (float(q) for q in np.quantile(medians, [tail, 1 - tail]))
    return SeriesSummary(
        median=median,
        min=float(arr.min()),
        max=float(arr.max()),
        n=len(arr),
        mean=float(arr.mean()),
        ci_low=low,
        ci_high=high,
    )
