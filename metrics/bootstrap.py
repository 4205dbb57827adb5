"""Bootstrap over examples: confidence intervals and paired significance between two models.

A resample draws n examples with replacement. Most metrics are functions of how many times
each *kind* of example was drawn (a (reference, prediction) cell for confusion metrics, a
per-example value for means, sacrebleu's segment statistics for BLEU), so a resample is a
vector of counts over the distinct kinds. With few kinds (accuracy: 2; 10-class macro-F1:
at most 100 cells) the counts are drawn directly from the multinomial distribution — the
exact distribution of the counts that resampling indices would give — and all resamples are
scored at once; with many kinds, indices are drawn with numpy and bincounted per resample.
Metrics without such a view (spearman, roc_auc) are recomputed on each resample (slower).

Intervals are percentile intervals. Results are deterministic for a given seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from metrics.errors import MetricError
from metrics.registry import computable
from metrics.spec import MetricSpec, Resampleable

Method = Literal["auto", "multinomial", "indices"]
_CHUNK_ELEMENTS = 1 << 22


def _check(spec: MetricSpec, resamples: int, method: str) -> None:
    if spec.value_type != "float":
        raise MetricError(spec.name, "the bootstrap needs a metric with a single float value")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise MetricError(spec.name, f"resamples must be a positive int, got {resamples!r}")
    if method not in ("auto", "multinomial", "indices"):
        raise MetricError(spec.name, f"method must be auto, multinomial or indices, not {method!r}")


def _joint(codes: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """One category per example for several metrics at once, and each metric's categories."""
    if len(codes) == 1:
        uniques, inverse = np.unique(codes[0], return_inverse=True)
        return inverse.ravel(), [uniques]
    radices = [int(c.max()) + 1 for c in codes]
    joint = np.zeros(len(codes[0]), dtype=np.int64)
    for c, radix in zip(codes, radices, strict=True):
        joint = joint * radix + c
    uniques, inverse = np.unique(joint, return_inverse=True)
    parts = []
    rest = uniques
    for radix in reversed(radices):
        parts.append(rest % radix)
        rest = rest // radix
    return inverse.ravel(), parts[::-1]


def _draw(
    inverse: np.ndarray, weights: np.ndarray, size: int, rng: np.random.Generator, method: str
) -> np.ndarray:
    n = len(inverse)
    kinds = len(weights)
    if method == "multinomial":
        return rng.multinomial(n, weights / n, size=size)
    picked = inverse[rng.integers(0, n, size=(size, n))]
    picked += (np.arange(size) * kinds)[:, None]
    return np.bincount(picked.ravel(), minlength=size * kinds).reshape(size, kinds)


def _resampled_values(
    views: Sequence[Resampleable], resamples: int, seed: int | None, method: str
) -> list[np.ndarray]:
    inverse, categories = _joint([np.asarray(v.codes, dtype=np.int64) for v in views])
    weights = np.bincount(inverse)
    n, kinds = len(inverse), len(weights)
    if method == "auto":
        method = "multinomial" if kinds * 8 <= n else "indices"
    width = kinds if method == "multinomial" else max(n, kinds)
    chunk = max(1, min(resamples, _CHUNK_ELEMENTS // width))
    rng = np.random.default_rng(seed)
    out: list[list[np.ndarray]] = [[] for _ in views]
    done = 0
    while done < resamples:
        size = min(chunk, resamples - done)
        counts = _draw(inverse, weights, size, rng, method)
        for values, view, cats in zip(out, views, categories, strict=True):
            values.append(np.asarray(view.evaluate(counts, cats), dtype=np.float64))
        done += size
    return [np.concatenate(values) for values in out]


def _take(values: Any, index: np.ndarray) -> Any:
    if isinstance(values, np.ndarray):
        return values[index]
    return [values[i] for i in index]


def _recomputed_values(
    spec: MetricSpec,
    predictions: Sequence[Any],
    references: Any,
    options: dict[str, Any],
    resamples: int,
    seed: int | None,
) -> list[np.ndarray]:
    """Fallback: recompute the metric on each resample; an undefined resample gives NaN."""
    n = len(references)
    rng = np.random.default_rng(seed)
    out = np.full((len(predictions), resamples), np.nan)
    for b in range(resamples):
        index = rng.integers(0, n, size=n)
        refs = _take(references, index)
        for j, preds in enumerate(predictions):
            try:
                out[j, b] = spec.apply(_take(preds, index), refs, **options)
            except MetricError:
                continue
    return list(out)


def _distributions(
    name: str,
    predictions: Sequence[Any],
    references: Any,
    *,
    resamples: int,
    seed: int | None,
    method: str,
    options: dict[str, Any],
) -> tuple[MetricSpec, dict[str, Any], list[np.ndarray]]:
    spec = computable(name)
    _check(spec, resamples, method)
    resolved = spec.resolve_options(options)
    try:
        if spec.resampleable is None:
            for preds in predictions:  # validate once, with the metric's own messages
                spec.apply(preds, references, **resolved)
            values = _recomputed_values(spec, predictions, references, resolved, resamples, seed)
        else:
            views = [spec.resampleable(p, references, **resolved) for p in predictions]
            values = _resampled_values(views, resamples, seed, method)
    except MetricError as exc:
        raise exc.named(name) from None
    return spec, resolved, values


def bootstrap_distribution(
    name: str,
    predictions: Any,
    references: Any,
    *,
    resamples: int = 1000,
    seed: int | None = 0,
    method: Method = "auto",
    **options: Any,
) -> np.ndarray:
    """The metric on `resamples` bootstrap resamples of the examples (NaN where undefined)."""
    return _distributions(
        name,
        [predictions],
        references,
        resamples=resamples,
        seed=seed,
        method=method,
        options=options,
    )[2][0]


def confidence_interval(
    name: str,
    predictions: Any,
    references: Any,
    *,
    confidence: float = 0.95,
    resamples: int = 1000,
    seed: int | None = 0,
    method: Method = "auto",
    **options: Any,
) -> tuple[float, float]:
    """Percentile bootstrap interval (low, high) of the metric over examples."""
    if not 0 < confidence < 1:
        raise MetricError(name, f"confidence must lie strictly between 0 and 1, got {confidence}")
    values = bootstrap_distribution(
        name, predictions, references, resamples=resamples, seed=seed, method=method, **options
    )
    if np.isnan(values).all():
        raise MetricError(name, "the metric is undefined on every bootstrap resample")
    tail = (1 - confidence) / 2
    low, high = np.nanquantile(values, [tail, 1 - tail])
    return float(low), float(high)


def paired_bootstrap_pvalue(
    name: str,
    predictions_a: Any,
    predictions_b: Any,
    references: Any,
    *,
    resamples: int = 1000,
    seed: int | None = 0,
    method: Method = "auto",
    **options: Any,
) -> float:
    """Two-sided p-value that models A and B score the same on these examples.

    Both models are scored on the same resamples. Under the null hypothesis the resampled
    differences are centred on 0 (shifted by their mean), and the p-value is
    (1 + #{|shifted difference| >= |observed difference|}) / (resamples + 1).
    Identical predictions give 1.0; a small p-value means the difference is significant.
    """
    spec, resolved, (values_a, values_b) = _distributions(
        name,
        [predictions_a, predictions_b],
        references,
        resamples=resamples,
        seed=seed,
        method=method,
        options=options,
    )
    try:
        observed = spec.apply(predictions_a, references, **resolved) - spec.apply(
            predictions_b, references, **resolved
        )
    except MetricError as exc:
        raise exc.named(name) from None
    deltas = values_a - values_b
    deltas = deltas[~np.isnan(deltas)]
    if len(deltas) == 0:
        raise MetricError(name, "the metric is undefined on every bootstrap resample")
    shifted = np.abs(deltas - deltas.mean())
    extreme = np.count_nonzero(shifted >= abs(observed) - 1e-12)
    return float((1 + extreme) / (len(deltas) + 1))
