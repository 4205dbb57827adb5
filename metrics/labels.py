"""Class labels as integer codes: type checks, encoding with numpy and confusion counts.

Labels are all numbers (int, bool, or integral floats) or all strings, on both sides; the
label set is the sorted union of the labels seen in predictions and references, the same set
and order as scikit-learn's `unique_labels`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from metrics.errors import MetricError

_NUMBER_TYPES = (int, float, np.integer, np.floating, np.bool_)


@dataclass(frozen=True)
class EncodedLabels:
    """Predictions and references as codes into `labels` (sorted union of both sides)."""

    predictions: np.ndarray
    references: np.ndarray
    labels: np.ndarray

    @property
    def n_classes(self) -> int:
        return len(self.labels)

    def index_of(self, label: Any) -> int | None:
        """Code of `label`, or None when it is not among the labels."""
        if self.labels.dtype.kind in "biuf":
            if isinstance(label, str) or not isinstance(label, _NUMBER_TYPES):
                return None
        elif not isinstance(label, str):
            return None
        hits = np.flatnonzero(self.labels == label)
        return int(hits[0]) if len(hits) else None


def _describe_types(kinds: set[type]) -> str:
    return ", ".join(sorted(t.__name__ for t in kinds))


def _check_distinct(distinct: set[Any], what: str) -> str:
    """'number' or 'string' for a set of distinct labels; refuses anything else or a mix."""
    kinds = {type(x) for x in distinct}
    if all(issubclass(t, str) for t in kinds):
        return "string"
    if all(issubclass(t, _NUMBER_TYPES) for t in kinds):
        return "number"
    if any(x is None for x in distinct):
        raise MetricError(None, f"{what} contain a missing label (None)")
    raise MetricError(
        None,
        f"{what} mix label types ({_describe_types(kinds)}); labels must all be int or all be str",
    )


def _integral(arr: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(arr).all():
        raise MetricError(None, f"{what} contain NaN or infinity; labels must be int or str")
    if not np.array_equal(arr, np.round(arr)):
        raise MetricError(
            None,
            f"{what} hold continuous values (non-integral floats); classification metrics "
            "need class labels (int or str)",
        )
    return arr.astype(np.int64)


def label_array(values: Any, what: str) -> tuple[str, Any]:
    """('number', int64 array) or ('string', list of str) for one side's labels."""
    if isinstance(values, np.ndarray):
        if values.ndim != 1:
            raise MetricError(
                None, f"{what} must hold one label per example (shape {values.shape})"
            )
        kind = values.dtype.kind
        if kind in "biu":
            return "number", values.astype(np.int64, copy=False)
        if kind == "f":
            return "number", _integral(values, what)
        if kind in "US":
            return "string", values.astype(str).tolist()
        values = values.tolist()
    first = values[0]
    if isinstance(first, _NUMBER_TYPES) and not isinstance(first, str):
        try:
            arr = np.asarray(values)
        except ValueError:
            arr = None
        if arr is not None and arr.ndim == 1 and arr.dtype.kind in "biu":
            return "number", arr.astype(np.int64, copy=False)
        if arr is not None and arr.ndim == 1 and arr.dtype.kind == "f":
            return "number", _integral(arr, what)
    try:
        distinct = set(values)
    except TypeError:
        bad = next(x for x in values if not isinstance(x, (str, *_NUMBER_TYPES)))
        raise MetricError(
            None, f"{what} must be int or str labels, got {type(bad).__name__} {bad!r}"
        ) from None
    if _check_distinct(distinct, what) == "string":
        return "string", list(values)
    return "number", _integral(np.asarray(list(values), dtype=np.float64), what)


def _encode_numbers(pred: np.ndarray, ref: np.ndarray) -> EncodedLabels:
    lo = int(min(pred.min(), ref.min()))
    hi = int(max(pred.max(), ref.max()))
    span = hi - lo + 1
    if span <= 2 * (len(pred) + len(ref)) + 1024:
        # O(n) table lookup instead of sorting: the common case of small label ids.
        p0 = pred - lo
        r0 = ref - lo
        present = np.bincount(p0, minlength=span) > 0
        present |= np.bincount(r0, minlength=span) > 0
        lut = np.cumsum(present) - 1
        return EncodedLabels(lut[p0], lut[r0], np.flatnonzero(present) + lo)
    labels, inverse = np.unique(np.concatenate([pred, ref]), return_inverse=True)
    return EncodedLabels(inverse[: len(pred)], inverse[len(pred) :], labels)


def _encode_strings(pred: list[str], ref: list[str]) -> EncodedLabels:
    labels = sorted(set(pred).union(ref))
    index = {label: i for i, label in enumerate(labels)}
    lookup = index.__getitem__
    return EncodedLabels(
        np.fromiter(map(lookup, pred), dtype=np.int64, count=len(pred)),
        np.fromiter(map(lookup, ref), dtype=np.int64, count=len(ref)),
        np.array(labels),
    )


def label_pair(predictions: Any, references: Any) -> tuple[str, Any, Any]:
    """('number', int64 array, int64 array) or ('string', list, list); refuses mixed sides."""
    p_kind, pred = label_array(predictions, "predictions")
    r_kind, ref = label_array(references, "references")
    if p_kind != r_kind:
        raise MetricError(
            None,
            f"predictions are {p_kind}s but references are {r_kind}s; "
            "labels must be the same type on both sides",
        )
    return p_kind, pred, ref


def encode_labels(predictions: Any, references: Any) -> EncodedLabels:
    """Integer codes for both sides; refuses a mix of numbers and strings across the sides."""
    kind, pred, ref = label_pair(predictions, references)
    if kind == "number":
        return _encode_numbers(pred, ref)
    return _encode_strings(pred, ref)


def confusion_counts(encoded: EncodedLabels) -> np.ndarray:
    """K x K counts, rows = reference label, columns = predicted label (scikit-learn's layout)."""
    k = encoded.n_classes
    cells = encoded.references * k + encoded.predictions
    return np.bincount(cells, minlength=k * k).reshape(k, k)


def confusion_and_labels(predictions: Any, references: Any) -> tuple[np.ndarray, EncodedLabels]:
    """Confusion counts and the labels (their codes are left empty on the fast path).

    Small integer labels skip the encoding: one bincount over the span of label values, then
    the rows and columns of values that occur in neither side are dropped.
    """
    kind, pred, ref = label_pair(predictions, references)
    if kind == "number":
        lo = int(min(pred.min(), ref.min()))
        span = int(max(pred.max(), ref.max())) - lo + 1
        if span <= 1024:
            if lo:
                pred, ref = pred - lo, ref - lo
            cm = np.bincount(ref * span + pred, minlength=span * span).reshape(span, span)
            present = np.flatnonzero((cm.sum(axis=0) > 0) | (cm.sum(axis=1) > 0))
            if len(present) < span:
                cm = cm[np.ix_(present, present)]
            empty = np.empty(0, dtype=np.int64)
            return cm, EncodedLabels(empty, empty, present + lo)
        encoded = _encode_numbers(pred, ref)
    else:
        encoded = _encode_strings(pred, ref)
    return confusion_counts(encoded), encoded
