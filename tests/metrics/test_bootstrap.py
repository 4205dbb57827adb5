"""Bootstrap intervals and paired p-values: correct per resample, sane, deterministic."""

from __future__ import annotations

import numpy as np
import pytest

import metrics
from metrics.registry import get

RNG = np.random.default_rng(11)
LABELS_P = RNG.integers(0, 4, size=300)
LABELS_R = np.where(RNG.random(300) < 0.7, LABELS_P, RNG.integers(0, 4, size=300))
# one example of class 7, the last: a resample without it has a class absent on both sides
RARE_P, RARE_R = np.r_[LABELS_P[:299], 7], np.r_[LABELS_R[:299], 7]
NUMBERS_R = RNG.normal(size=300)
NUMBERS_P = NUMBERS_R + RNG.normal(scale=0.5, size=300)
WORDS = np.array(["a", "b", "c", "d", "e", "f", "g", "h"])
TEXT_R = [" ".join(WORDS[RNG.integers(0, 8, size=6)]) for _ in range(300)]
TEXT_P = [t if RNG.random() < 0.5 else t.replace(t[2], "x", 1) for t in TEXT_R]

CASES = {
    "accuracy": (LABELS_P, LABELS_R, {}),
    "macro_f1": (LABELS_P, LABELS_R, {}),
    "weighted_recall": (LABELS_P, LABELS_R, {}),
    "macro_precision": (RARE_P, RARE_R, {}),
    "precision": (LABELS_P % 2, LABELS_R % 2, {"average": "binary"}),
    "mcc": (LABELS_P, LABELS_R, {}),
    "mse": (NUMBERS_P, NUMBERS_R, {}),
    "rmse": (NUMBERS_P, NUMBERS_R, {}),
    "r2": (NUMBERS_P, NUMBERS_R, {}),
    "pearson": (NUMBERS_P, NUMBERS_R, {}),
    "squad_f1": (TEXT_P, TEXT_R, {}),
    "bleu": (TEXT_P, TEXT_R, {}),
    "chrf": (TEXT_P, TEXT_R, {}),
    "ter": (TEXT_P, TEXT_R, {}),
    "wer": (TEXT_P, TEXT_R, {}),
}


def _take(values, index):
    return values[index] if isinstance(values, np.ndarray) else [values[i] for i in index]


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_vectorised_resample_equals_recomputing_on_the_resampled_examples(name) -> None:
    preds, refs, options = CASES[name]
    spec = get(name)
    view = spec.resampleable(preds, refs, **spec.resolve_options(options))
    categories, inverse = np.unique(view.codes, return_inverse=True)
    rng = np.random.default_rng(5)
    n = len(refs)
    # four random resamples and one without the last example (RARE's only class-7 example)
    indices = np.vstack([rng.integers(0, n, size=(4, n)), np.r_[np.arange(n - 1), 0]])
    counts = np.stack([np.bincount(inverse[i], minlength=len(categories)) for i in indices])
    vectorised = view.evaluate(counts, categories)
    for index, value in zip(indices, vectorised, strict=True):
        direct = metrics.compute(name, _take(preds, index), _take(refs, index), **options)
        assert value == pytest.approx(direct, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("name", [*sorted(CASES), "spearman", "exact_match", "cer"])
def test_interval_contains_the_point_estimate(name) -> None:
    preds, refs, options = CASES.get(name, (NUMBERS_P, NUMBERS_R, {}))
    if name in ("exact_match", "cer"):
        preds, refs = TEXT_P, TEXT_R
    low, high = metrics.confidence_interval(name, preds, refs, resamples=300, **options)
    assert low <= metrics.compute(name, preds, refs, **options) <= high
    assert low < high


def test_interval_narrows_with_more_data_and_is_deterministic_with_a_seed() -> None:
    rng = np.random.default_rng(0)
    widths = []
    for n in (400, 40_000):
        refs = rng.integers(0, 3, size=n)
        preds = np.where(rng.random(n) < 0.8, refs, (refs + 1) % 3)
        low, high = metrics.confidence_interval("macro_f1", preds, refs, seed=1)
        assert (low, high) == metrics.confidence_interval("macro_f1", preds, refs, seed=1)
        assert (low, high) != metrics.confidence_interval("macro_f1", preds, refs, seed=2)
        widths.append(high - low)
    assert widths[1] < widths[0] / 5  # ~ 1/sqrt(100) of the width


@pytest.mark.parametrize("name", ["accuracy", "macro_f1"])
def test_multinomial_counts_and_index_resampling_give_the_same_distribution(name) -> None:
    preds, refs, _ = CASES[name]
    fast = metrics.bootstrap_distribution(name, preds, refs, resamples=3000, method="multinomial")
    slow = metrics.bootstrap_distribution(name, preds, refs, resamples=3000, method="indices")
    # standard error of a mean of 3000 draws is std/55; allow 4 of them
    assert abs(fast.mean() - slow.mean()) < 4 * slow.std() / np.sqrt(3000) * np.sqrt(2)
    assert fast.std() == pytest.approx(slow.std(), rel=0.1)


def test_paired_pvalue_separates_a_real_difference_from_none() -> None:
    rng = np.random.default_rng(3)
    refs = rng.integers(0, 2, size=2000)
    strong = np.where(rng.random(2000) < 0.9, refs, 1 - refs)
    weak = np.where(rng.random(2000) < 0.8, refs, 1 - refs)
    assert metrics.paired_bootstrap_pvalue("accuracy", strong, strong.copy(), refs) == 1.0
    p = metrics.paired_bootstrap_pvalue("accuracy", strong, weak, refs, resamples=2000)
    assert p < 0.01
    assert p == metrics.paired_bootstrap_pvalue("accuracy", strong, weak, refs, resamples=2000)
    # as many of strong's errors fixed as new errors made: same accuracy, no real difference
    right, wrong = np.flatnonzero(strong == refs), np.flatnonzero(strong != refs)
    other = strong.copy()
    flip = np.r_[rng.choice(right, 30, replace=False), rng.choice(wrong, 30, replace=False)]
    other[flip] = 1 - other[flip]
    assert metrics.paired_bootstrap_pvalue("macro_f1", strong, other, refs) > 0.2
    # metrics without a vectorised view are recomputed per resample, on the same resamples
    same = metrics.paired_bootstrap_pvalue(
        "spearman", NUMBERS_P, NUMBERS_P.copy(), NUMBERS_R, resamples=50
    )
    assert same == 1.0


def test_bootstrap_refuses_dict_metrics_and_bad_settings() -> None:
    with pytest.raises(metrics.MetricError, match="confusion_matrix: the bootstrap needs"):
        metrics.confidence_interval("confusion_matrix", [1, 2], [1, 2])
    with pytest.raises(metrics.MetricError, match="accuracy: resamples must be a positive int"):
        metrics.confidence_interval("accuracy", [1, 2], [1, 2], resamples=0)
    with pytest.raises(metrics.MetricError, match="accuracy: confidence must lie"):
        metrics.confidence_interval("accuracy", [1, 2], [1, 2], confidence=95)
    with pytest.raises(metrics.MetricError, match="accuracy: predictions and references differ"):
        metrics.confidence_interval("accuracy", [1, 2], [1, 2, 3])
