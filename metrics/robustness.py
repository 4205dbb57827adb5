"""Dynaboard's robustness and fairness: a model judged against its own unperturbed answers.

A task has a dataset and a perturbed copy of it (typos and paraphrases for robustness,
swapped demographic terms for fairness). The model's predictions on the perturbed examples
are scored with the task's primary metric against the model's OWN predictions on the
original examples (not against the gold labels): the question is whether the perturbation
changes the answer. As in Dynabench, perturbed predictions are grouped by the original
example they perturb, the metric is computed per group, and the groups are averaged; originals
without any perturbed copy are skipped.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from metrics.errors import MetricError
from metrics.inputs import as_sequence
from metrics.registry import computable


def _group_index(groups: Any, n_perturbed: int, n_original: int) -> np.ndarray:
    if groups is None:
        if n_perturbed != n_original:
            raise MetricError(
                None,
                f"perturbed and original predictions differ in length ({n_perturbed} vs "
                f"{n_original}); pass groups=[index of the original for each perturbed one]",
            )
        return np.arange(n_perturbed)
    index = np.asarray(as_sequence(groups, "groups"))
    if index.shape != (n_perturbed,) or index.dtype.kind not in "iu":
        raise MetricError(
            None, f"groups must hold one int per perturbed prediction ({n_perturbed})"
        )
    if n_perturbed and (index.min() < 0 or index.max() >= n_original):
        raise MetricError(None, f"groups must index the {n_original} original predictions")
    return index.astype(np.int64)


def delta_metric(
    name: str,
    perturbed_predictions: Any,
    original_predictions: Any,
    *,
    groups: Any = None,
    **options: Any,
) -> float:
    """Mean over originals of metric `name`(their perturbed predictions, [original] * k).

    `groups[j]` is the index in `original_predictions` of the example that perturbed
    prediction j perturbs; without `groups` the two lists are aligned one to one. The value
    is on the metric's own scale (a fraction for accuracy), not rounded.
    """
    spec = computable(name)
    resolved = spec.resolve_options(options)
    try:
        perturbed = as_sequence(perturbed_predictions, "perturbed predictions")
        original = as_sequence(original_predictions, "original predictions")
        index = _group_index(groups, len(perturbed), len(original))
        if len(perturbed) == 0:
            raise MetricError(None, "empty input: no perturbed predictions")
        targets = [original[i] for i in index]
        if spec.per_example is not None:
            values = spec.per_example(perturbed, targets, **resolved)
            sums = np.bincount(index, weights=values, minlength=len(original))
            sizes = np.bincount(index, minlength=len(original))
            seen = sizes > 0
            return float(np.mean(sums[seen] / sizes[seen]))
        order = np.argsort(index, kind="stable")
        starts = np.flatnonzero(np.r_[True, index[order][1:] != index[order][:-1]])
        per_group = [
            spec.apply([perturbed[j] for j in members], [targets[j] for j in members], **resolved)
            for members in np.split(order, starts[1:])
        ]
        return float(np.mean(per_group))
    except MetricError as exc:
        raise exc.named(name) from None
