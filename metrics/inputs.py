"""Input checks shared by the metric families: sequences, lengths, numbers, NaN."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn

import numpy as np

from metrics.errors import MetricError


def as_sequence(values: Any, what: str) -> Any:
    """`values` as a list, tuple or array with one item per example (other iterables are listed)."""
    if isinstance(values, str | bytes | Mapping):
        raise MetricError(
            None,
            f"{what} must be a sequence with one item per example, got {type(values).__name__}",
        )
    if isinstance(values, np.ndarray):
        if values.ndim == 0:
            raise MetricError(None, f"{what} must be a sequence, got a scalar array")
        return values
    if isinstance(values, list | tuple):
        return values
    try:
        return list(values)
    except TypeError:
        raise MetricError(
            None,
            f"{what} must be a sequence with one item per example, got {type(values).__name__}",
        ) from None


def check_pair(predictions: Any, references: Any) -> tuple[Any, Any]:
    """Both sides as sequences of the same, non-zero length."""
    preds = as_sequence(predictions, "predictions")
    refs = as_sequence(references, "references")
    if len(preds) != len(refs):
        raise MetricError(
            None,
            f"predictions and references differ in length "
            f"({len(preds)} predictions, {len(refs)} references)",
        )
    if len(preds) == 0:
        raise MetricError(None, "empty input: no predictions and no references; need at least one")
    return preds, refs


def _refuse_non_finite(arr: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        index = np.argwhere(bad)[0]
        where = int(index[0]) if len(index) == 1 else tuple(int(i) for i in index)
        kind = "NaN or a missing value" if np.isnan(arr[tuple(index)]) else "an infinite value"
        raise MetricError(
            None, f"{what} contain {kind} at index {where}; this metric refuses NaN and infinity"
        )


def float_array(values: Any, what: str, *, ndim: int = 1) -> np.ndarray:
    """A finite float64 array of `ndim` dimensions; strings, None, NaN and inf are refused."""
    try:
        arr = values if isinstance(values, np.ndarray) else np.asarray(values)
    except ValueError:
        arr = None  # ragged rows
    if arr is None or arr.dtype.kind not in "biuf":
        _explain_non_numbers(values, what, ndim)
    out = arr.astype(np.float64, copy=False)
    if out.ndim != ndim:
        shape = "one number per example" if ndim == 1 else "one row of numbers per example"
        raise MetricError(None, f"{what} must hold {shape}; got an array of shape {out.shape}")
    _refuse_non_finite(out, what)
    return out


def _explain_non_numbers(values: Any, what: str, ndim: int) -> NoReturn:
    items: list[tuple[Any, Any]]
    if ndim == 1:
        items = list(enumerate(values))
    else:
        rows = [as_sequence(row, what) for row in values]
        if len({len(row) for row in rows}) > 1:
            raise MetricError(None, f"{what} must be rows of equal length (one score per class)")
        items = [((i, j), x) for i, row in enumerate(rows) for j, x in enumerate(row)]
    for where, item in items:
        if item is None:
            raise MetricError(None, f"{what} contain a missing value (None) at index {where}")
        if not isinstance(item, int | float | np.number | bool):
            raise MetricError(
                None, f"{what} must be numbers, got {type(item).__name__} {item!r} at index {where}"
            )
    raise MetricError(None, f"{what} must be numbers")
