"""Label metrics from one confusion matrix: accuracy, precision/recall/F1, MCC, the matrix itself.

Every metric here is computed from integer-encoded labels (`metrics.labels`) and a confusion
matrix made with one `np.bincount`, and matches scikit-learn (`zero_division=0`): a class that
is never predicted has precision 0, a class that never occurs has recall 0, and an F1 whose
denominator (2*tp + fp + fn) is 0 is 0. The label set is the union of the labels in predictions
and references. The same formulas run on a stack of confusion matrices, which is how the
bootstrap scores all its resamples at once.

Accuracy also accepts, per example, a list (tuple, set) of acceptable labels as the reference.
"""

from __future__ import annotations

import operator
from typing import Any, Literal

import numpy as np

from metrics.errors import MetricError
from metrics.inputs import check_pair
from metrics.labels import (
    EncodedLabels,
    confusion_and_labels,
    encode_labels,
    label_pair,
)
from metrics.spec import Resampleable, add_columns, mean_resampleable

Average = Literal["macro", "micro", "weighted", "binary"]
AVERAGES = ("macro", "micro", "weighted", "binary")
_ALTERNATIVES = (list, tuple, set, frozenset, np.ndarray)


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (scikit-learn's zero_division=0)."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.zeros(np.broadcast(numerator, denominator).shape)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def _check_average(average: str) -> None:
    if average not in AVERAGES:
        raise MetricError(None, f"average={average!r} is not one of {', '.join(AVERAGES)}")


def _positive_index(encoded: EncodedLabels, average: str, pos_label: Any) -> int | None:
    """Code of the positive class for average='binary' (None: absent, so every count is 0)."""
    if average != "binary":
        return None
    labels = encoded.labels.tolist()
    if encoded.n_classes > 2:
        raise MetricError(
            None,
            f"average='binary' needs at most two labels, found {encoded.n_classes} "
            f"({labels[:10]}); use average='macro', 'micro' or 'weighted'",
        )
    index = encoded.index_of(pos_label)
    if index is None and encoded.n_classes == 2:
        raise MetricError(None, f"pos_label={pos_label!r} is not one of the labels {labels}")
    return index


def prf_from_confusion(
    cm: np.ndarray, average: str, positive: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 from confusion matrices (..., K, K): one value per matrix."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    predicted = cm.sum(axis=-2)
    true = cm.sum(axis=-1)
    if average == "binary":
        if positive is None:
            zero = np.zeros(cm.shape[:-2])
            return zero, zero, zero
        tp, predicted, true = tp[..., positive], predicted[..., positive], true[..., positive]
    elif average == "micro":
        tp, predicted, true = tp.sum(-1), predicted.sum(-1), true.sum(-1)
    precision = _divide(tp, predicted)
    recall = _divide(tp, true)
    f1 = _divide(2 * tp, predicted + true)
    if average == "macro":
        # a class absent from both sides (possible in a bootstrap resample) is not averaged
        seen = (predicted + true) > 0
        count = seen.sum(-1)
        return (
            _divide((precision * seen).sum(-1), count),
            _divide((recall * seen).sum(-1), count),
            _divide((f1 * seen).sum(-1), count),
        )
    if average == "weighted":
        total = true.sum(-1)
        return (
            _divide((precision * true).sum(-1), total),
            _divide((recall * true).sum(-1), total),
            _divide((f1 * true).sum(-1), total),
        )
    return precision, recall, f1


def mcc_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Matthews correlation (multiclass, scikit-learn's formula) of matrices (..., K, K)."""
    cm = np.asarray(cm, dtype=np.float64)
    true = cm.sum(axis=-1)
    predicted = cm.sum(axis=-2)
    correct = np.trace(cm, axis1=-2, axis2=-1)
    n = predicted.sum(-1)
    cov_tp = correct * n - (true * predicted).sum(-1)
    cov_pp = n**2 - (predicted * predicted).sum(-1)
    cov_tt = n**2 - (true * true).sum(-1)
    product = cov_pp * cov_tt
    return _divide(cov_tp, np.sqrt(product))


def accuracy_from_confusion(cm: np.ndarray) -> np.ndarray:
    cm = np.asarray(cm, dtype=np.float64)
    return np.trace(cm, axis1=-2, axis2=-1) / cm.sum(axis=(-2, -1))


def _has_alternatives(references: Any) -> bool:
    if isinstance(references, np.ndarray):
        if references.ndim == 2:
            return True
        if references.dtype != object:
            return False
    return any(isinstance(r, _ALTERNATIVES) for r in references)


def alternative_hits(predictions: Any, references: Any) -> np.ndarray:
    """Per example: is the prediction among the acceptable labels (a label or a list of them)?"""
    hits = np.empty(len(predictions), dtype=bool)
    seen_types: set[type] = set()
    for i, (pred, ref) in enumerate(zip(predictions, references, strict=True)):
        accepted = list(ref) if isinstance(ref, _ALTERNATIVES) else [ref]
        for label in (pred, *accepted):
            if not isinstance(label, str | int | np.integer | np.str_):
                raise MetricError(
                    None,
                    f"labels must be int or str, got {type(label).__name__} {label!r} "
                    f"in example {i}",
                )
            seen_types.add(str if isinstance(label, str) else int)
        hits[i] = any(pred == label for label in accepted)
    if len(seen_types) > 1:
        raise MetricError(
            None, "labels mix int and str across predictions and references; use one type"
        )
    return hits


def _plain(function: Any, predictions: Any, references: Any) -> Any:
    """`function(predictions, references)` on one label per example, with a clear refusal."""
    preds, refs = check_pair(predictions, references)
    try:
        return function(preds, refs)
    except MetricError:
        if _has_alternatives(refs):
            raise MetricError(
                None,
                "references hold lists of acceptable labels; only accuracy and "
                "top_k_accuracy accept those, this metric needs one label per example",
            ) from None
        raise


def accuracy_hits(predictions: Any, references: Any) -> np.ndarray:
    """Per example: is the prediction (one of) the reference label(s)?"""
    preds, refs = check_pair(predictions, references)
    try:
        kind, pred, ref = label_pair(preds, refs)
    except MetricError:
        if not _has_alternatives(refs):
            raise
        return alternative_hits(preds, refs)
    if kind == "number":
        return pred == ref
    return np.fromiter(map(operator.eq, pred, ref), dtype=bool, count=len(pred))


def accuracy_per_example(predictions: Any, references: Any) -> np.ndarray:
    """1.0 where the prediction is (one of) the reference label(s), else 0.0."""
    return accuracy_hits(predictions, references).astype(np.float64)


def accuracy(predictions: Any, references: Any) -> float:
    """Share of examples whose prediction equals the reference (or is among its alternatives)."""
    hits = accuracy_hits(predictions, references)
    return float(np.count_nonzero(hits)) / len(hits)


def _prf_value(
    which: int, predictions: Any, references: Any, average: str, pos_label: Any
) -> float:
    _check_average(average)
    cm, encoded = _plain(confusion_and_labels, predictions, references)
    positive = _positive_index(encoded, average, pos_label)
    return float(prf_from_confusion(cm, average, positive)[which])


def precision(
    predictions: Any, references: Any, *, average: str = "macro", pos_label: Any = 1
) -> float:
    """Precision averaged as asked (macro, micro, weighted by support, or binary for pos_label)."""
    return _prf_value(0, predictions, references, average, pos_label)


def recall(
    predictions: Any, references: Any, *, average: str = "macro", pos_label: Any = 1
) -> float:
    """Recall averaged as asked (macro, micro, weighted by support, or binary for pos_label)."""
    return _prf_value(1, predictions, references, average, pos_label)


def f1(predictions: Any, references: Any, *, average: str = "macro", pos_label: Any = 1) -> float:
    """F1 averaged as asked (macro, micro, weighted by support, or binary for pos_label)."""
    return _prf_value(2, predictions, references, average, pos_label)


def matthews_corrcoef(predictions: Any, references: Any) -> float:
    """Matthews correlation coefficient (multiclass); 0 when it is undefined, as scikit-learn."""
    cm, _ = _plain(confusion_and_labels, predictions, references)
    return float(mcc_from_confusion(cm))


def confusion_matrix(predictions: Any, references: Any) -> dict[str, Any]:
    """{"labels": sorted labels, "matrix": counts[reference][prediction]} (sklearn's layout)."""
    cm, encoded = _plain(confusion_and_labels, predictions, references)
    return {"labels": encoded.labels.tolist(), "matrix": cm.tolist()}


def confusion_resampleable(
    predictions: Any, references: Any, *, metric: str, average: str = "macro", pos_label: Any = 1
) -> Resampleable:
    """Bootstrap view of a confusion metric: categories are (reference, prediction) cells."""
    if metric == "accuracy":
        return mean_resampleable(accuracy_per_example(predictions, references))
    encoded = _plain(encode_labels, predictions, references)
    k = encoded.n_classes
    positive = None
    if metric in ("precision", "recall", "f1"):
        _check_average(average)
        positive = _positive_index(encoded, average, pos_label)
    which = {"precision": 0, "recall": 1, "f1": 2}.get(metric)

    def evaluate(counts: np.ndarray, categories: np.ndarray) -> np.ndarray:
        cms = add_columns(counts, categories, k * k).reshape(-1, k, k)
        if which is None:
            return mcc_from_confusion(cms)
        return prf_from_confusion(cms, average, positive)[which]

    return Resampleable(encoded.references * k + encoded.predictions, evaluate)
