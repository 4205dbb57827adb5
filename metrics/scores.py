"""Metrics of ranked or scored predictions: top-k accuracy, ROC AUC and log loss.

Score rows (one float per class) have their columns in the order of `labels`, which defaults
to the sorted distinct reference labels, as scikit-learn's `LabelBinarizer` orders them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from metrics.errors import MetricError
from metrics.inputs import check_pair, float_array
from metrics.labels import label_array

_ROW_TYPES = (list, tuple, np.ndarray)


def _classes(references: Any, labels: Any) -> tuple[np.ndarray | list[str], np.ndarray]:
    """(class labels in column order, column index of each reference)."""
    kind, refs = label_array(references, "references")
    if labels is None:
        classes = np.unique(refs) if kind == "number" else sorted(set(refs))
    else:
        labels_kind, classes = label_array(list(labels), "labels")
        if labels_kind != kind:
            raise MetricError(None, f"labels are {labels_kind}s but references are {kind}s")
        if len(set(np.asarray(classes).tolist())) != len(classes):
            raise MetricError(None, "labels must not repeat")
    index = {label: i for i, label in enumerate(np.asarray(classes).tolist())}
    ref_list = refs.tolist() if isinstance(refs, np.ndarray) else refs
    missing = [r for r in ref_list if r not in index]
    if missing:
        raise MetricError(None, f"reference label {missing[0]!r} is not among labels {list(index)}")
    columns = np.fromiter(map(index.__getitem__, ref_list), dtype=np.int64, count=len(ref_list))
    return classes, columns


def _is_score_rows(predictions: Any) -> bool:
    if isinstance(predictions, np.ndarray):
        return predictions.ndim == 2 and predictions.dtype.kind == "f"
    first = predictions[0]
    if not isinstance(first, _ROW_TYPES) or len(first) == 0:
        return False
    return all(isinstance(x, float | np.floating) for x in first)


def top_k_hits(predictions: Any, references: Any, *, k: int = 5, labels: Any = None) -> np.ndarray:
    """Per example: is the reference among the k best predictions?

    A prediction is a ranked list of labels (best first), or a row of float scores, one per
    class (then ties rank the later column first, as scikit-learn's top_k_accuracy_score).
    """
    preds, refs = check_pair(predictions, references)
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise MetricError(None, f"k must be a positive int, got {k!r}")
    if _is_score_rows(preds):
        scores = float_array(preds, "predictions", ndim=2)
        classes, columns = _classes(refs, labels)
        n_columns = scores.shape[1]
        if n_columns != len(classes):
            raise MetricError(
                None,
                f"score rows have {n_columns} columns but there are {len(classes)} classes; "
                "pass labels=[...] naming every column",
            )
        true_score = scores[np.arange(len(scores)), columns][:, None]
        later = np.arange(n_columns)[None, :] > columns[:, None]
        above = (scores > true_score) | ((scores == true_score) & later)
        return above.sum(axis=1) < k
    hits = np.empty(len(preds), dtype=bool)
    for i, (ranked, ref) in enumerate(zip(preds, refs, strict=True)):
        if not isinstance(ranked, _ROW_TYPES):
            raise MetricError(
                None,
                f"prediction {i} must be a ranked list of labels or a row of scores, "
                f"got {type(ranked).__name__}",
            )
        accepted = ref if isinstance(ref, list | tuple | set | frozenset) else (ref,)
        top = list(ranked[:k])
        hits[i] = any(label in top for label in accepted)
    return hits


def top_k_accuracy(predictions: Any, references: Any, *, k: int = 5, labels: Any = None) -> float:
    """Share of examples whose reference is among the k best predictions."""
    return float(np.mean(top_k_hits(predictions, references, k=k, labels=labels)))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    group = np.cumsum(np.r_[True, ordered[1:] != ordered[:-1]]) - 1
    sizes = np.bincount(group)
    ends = np.cumsum(sizes)
    averages = ends - (sizes - 1) / 2.0
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = averages[group]
    return ranks


def binary_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve via the rank-sum (Mann-Whitney) identity, ties counting 1/2."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    ranks = average_ranks(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_auc(predictions: Any, references: Any, *, labels: Any = None) -> float:
    """ROC AUC: binary (one score per example, for the greater label), or one-vs-rest macro.

    For more than two classes a prediction is a row of class probabilities (summing to 1, as
    scikit-learn requires), and the result is the unweighted mean of each class's AUC.
    """
    preds, refs = check_pair(predictions, references)
    classes, columns = _classes(refs, labels)
    n_classes = len(classes)
    first = preds[0]
    scores = float_array(preds, "predictions", ndim=2 if isinstance(first, _ROW_TYPES) else 1)
    if scores.ndim == 2 and scores.shape[1] != n_classes:
        raise MetricError(
            None,
            f"score rows have {scores.shape[1]} columns but there are {n_classes} classes; "
            "pass labels=[...] naming every column",
        )
    present = np.bincount(columns, minlength=n_classes)
    if n_classes < 2 or (present == 0).any():
        raise MetricError(
            None,
            "ROC AUC is undefined unless every class occurs in the references "
            f"(found {int((present > 0).sum())} of {max(n_classes, 2)} classes)",
        )
    if scores.ndim == 1 or n_classes == 2:
        positive_scores = scores if scores.ndim == 1 else scores[:, 1]
        if scores.ndim == 1 and n_classes != 2:
            raise MetricError(None, f"one score per example needs two classes, found {n_classes}")
        return binary_auc(columns == 1, positive_scores)
    if not np.allclose(1.0, scores.sum(axis=1)):
        raise MetricError(
            None, "multiclass ROC AUC needs probability rows that sum to 1 over the classes"
        )
    return float(np.mean([binary_auc(columns == c, scores[:, c]) for c in range(n_classes)]))


def log_loss_per_example(predictions: Any, references: Any, *, labels: Any = None) -> np.ndarray:
    """-log p(reference class), probabilities clipped to [eps, 1 - eps] as scikit-learn."""
    preds, refs = check_pair(predictions, references)
    classes, columns = _classes(refs, labels)
    if len(classes) < 2:
        raise MetricError(
            None,
            f"references hold a single class ({np.asarray(classes).tolist()}); pass "
            "labels=[...] listing every class so the probability columns can be matched",
        )
    first = preds[0]
    probs = float_array(preds, "predictions", ndim=2 if isinstance(first, _ROW_TYPES) else 1)
    if probs.min() < 0 or probs.max() > 1:
        raise MetricError(None, "predictions must be probabilities in [0, 1]")
    if probs.ndim == 1:
        probs = np.column_stack([1 - probs, probs])
    if probs.shape[1] != len(classes):
        raise MetricError(
            None,
            f"probability rows have {probs.shape[1]} columns but there are {len(classes)} "
            "classes; pass labels=[...] naming every column",
        )
    eps = np.finfo(np.float64).eps
    chosen = np.clip(probs, eps, 1 - eps)[np.arange(len(probs)), columns]
    return -np.log(chosen)


def log_loss(predictions: Any, references: Any, *, labels: Any = None) -> float:
    """Mean cross-entropy of the reference classes under the predicted probabilities."""
    return float(np.mean(log_loss_per_example(predictions, references, labels=labels)))
