"""Classification metrics agree with scikit-learn to 1e-9 on random and edge-case inputs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn import metrics as sk

import metrics

TOL = 1e-9


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _random_case(seed: int) -> tuple[list, list]:
    """Labels with absent classes, one-example and one-class cases mixed in by the seed."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    k = int(rng.integers(1, 7))
    refs = rng.integers(0, k, size=n)
    # predictions drawn from a shifted range: some classes only predicted, some never
    preds = np.where(rng.random(n) < 0.5, refs, rng.integers(0, k + 1, size=n) + seed % 3)
    if seed % 2:
        names = np.array(["cat", "dog", "emu", "fox", "gnu", "hen", "ibis", "jay", "kiwi"])
        return names[preds].tolist(), names[refs].tolist()
    return preds.tolist(), refs.tolist()


EDGE_CASES = [
    ([1], [1]),  # one example
    ([0, 0, 0], [0, 0, 0]),  # one class everywhere
    ([1, 1, 1], [0, 0, 0]),  # disjoint predicted and true classes
    ([0, 1, 2, 3], [0, 0, 0, 0]),  # classes only in predictions
    ([0, 0, 0, 0], [0, 1, 2, 3]),  # classes only in references
    (["b", "a", "b"], ["a", "a", "c"]),  # strings, a class absent from predictions
    ([5, 7, 7, 5, 9], [9, 7, 5, 5, 9]),  # non-contiguous ids
    ([-3, 10**12, 2], [2, -3, 10**12]),  # ids too spread for the lookup table
    ([1.0, 2.0, 2.0], [2.0, 2.0, 1.0]),  # integral floats
]


@pytest.mark.parametrize("case", [*range(120), *EDGE_CASES])
def test_confusion_metrics_match_scikit_learn(case) -> None:
    preds, refs = _random_case(case) if isinstance(case, int) else case
    pairs = {
        "accuracy": sk.accuracy_score(refs, preds),
        "mcc": _quiet(sk.matthews_corrcoef, refs, preds),
    }
    for average in ("macro", "micro", "weighted"):
        for name, fn in (
            ("precision", sk.precision_score),
            ("recall", sk.recall_score),
            ("f1", sk.f1_score),
        ):
            expected = _quiet(fn, refs, preds, average=average, zero_division=0)
            pairs[f"{average}_{name}"] = expected
            assert abs(metrics.compute(name, preds, refs, average=average) - expected) <= TOL
    for name, expected in pairs.items():
        assert abs(metrics.compute(name, preds, refs) - expected) <= TOL, name


@pytest.mark.parametrize("seed", range(40))
def test_binary_average_matches_scikit_learn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 30))
    refs = (rng.random(n) < rng.random()).astype(int).tolist()
    preds = (rng.random(n) < rng.random()).astype(int).tolist()
    for name, fn in (("precision", sk.precision_score), ("recall", sk.recall_score)):
        expected = _quiet(fn, refs, preds, average="binary", zero_division=0)
        assert abs(metrics.compute(name, preds, refs, average="binary") - expected) <= TOL
    expected = _quiet(sk.f1_score, refs, preds, average="binary", pos_label=0, zero_division=0)
    got = metrics.compute("f1", preds, refs, average="binary", pos_label=0)
    assert abs(got - expected) <= TOL


def test_binary_average_without_the_positive_class_is_zero_as_scikit_learn() -> None:
    assert metrics.compute("f1", [0, 0], [0, 0], average="binary") == 0.0
    assert _quiet(sk.f1_score, [0, 0], [0, 0], average="binary") == 0.0


def test_binary_average_refuses_three_labels_and_a_missing_pos_label() -> None:
    with pytest.raises(metrics.MetricError, match=r"f1: average='binary' needs at most two"):
        metrics.compute("f1", [0, 1, 2], [0, 1, 1], average="binary")
    with pytest.raises(metrics.MetricError, match=r"pos_label=1 is not one of the labels"):
        metrics.compute("f1", ["a", "b"], ["a", "a"], average="binary")


def test_confusion_matrix_matches_scikit_learn_layout() -> None:
    preds, refs = ["b", "a", "c", "c"], ["a", "a", "c", "b"]
    result = metrics.compute("confusion_matrix", preds, refs)
    assert result["labels"] == ["a", "b", "c"]
    assert result["matrix"] == sk.confusion_matrix(refs, preds).tolist()
    assert metrics.get("confusion_matrix").value_type == "dict"


def test_large_inputs_take_the_fast_path_and_still_agree() -> None:
    preds, refs = (np.random.default_rng(7).integers(0, 10, size=200_000) for _ in range(2))
    assert (
        abs(metrics.compute("macro_f1", preds, refs) - sk.f1_score(refs, preds, average="macro"))
        <= TOL
    )
    assert abs(metrics.compute("mcc", preds, refs) - sk.matthews_corrcoef(refs, preds)) <= TOL


def test_accuracy_accepts_lists_of_acceptable_labels() -> None:
    preds = ["yes", "no", "maybe", "no"]
    refs = [["yes", "y"], "yes", ("maybe", "perhaps"), []]
    assert metrics.compute("accuracy", preds, refs) == 0.5


def test_other_label_metrics_refuse_lists_of_labels() -> None:
    with pytest.raises(metrics.MetricError, match="macro_f1: references hold lists"):
        metrics.compute("macro_f1", ["a", "b"], [["a"], "b"])


@pytest.mark.parametrize("seed", range(30))
def test_top_k_accuracy_on_scores_matches_scikit_learn_including_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, k_classes = int(rng.integers(7, 40)), int(rng.integers(3, 7))
    refs = rng.integers(0, k_classes, size=n)
    refs[:k_classes] = np.arange(k_classes)  # every class present, as scikit-learn needs
    scores = rng.integers(0, 4, size=(n, k_classes)).astype(float)  # many ties
    for k in (1, 2, k_classes - 1):
        expected = sk.top_k_accuracy_score(refs, scores, k=k)
        assert abs(metrics.compute("top_k_accuracy", scores, refs, k=k) - expected) <= TOL


def test_top_k_accuracy_on_ranked_lists() -> None:
    ranked = [["b", "a", "c"], ["c", "b", "a"], ["a", "c", "b"]]
    assert metrics.compute("top_k_accuracy", ranked, ["a", "a", "b"], k=2) == pytest.approx(1 / 3)
    assert metrics.compute("top_k_accuracy", ranked, ["a", "a", "b"], k=3) == 1.0


@pytest.mark.parametrize("seed", range(30))
def test_roc_auc_matches_scikit_learn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(6, 80))
    refs = rng.integers(0, 2, size=n)
    refs[:2] = [0, 1]
    scores = np.round(rng.random(n), 1)  # ties
    expected = sk.roc_auc_score(refs, scores)
    assert abs(metrics.compute("roc_auc", scores, refs) - expected) <= TOL
    k = int(rng.integers(3, 6))
    multi = rng.integers(0, k, size=n)
    multi[:k] = np.arange(k)
    probs = rng.dirichlet(np.ones(k), size=n)
    expected = sk.roc_auc_score(multi, probs, multi_class="ovr", average="macro")
    assert abs(metrics.compute("roc_auc", probs, multi) - expected) <= TOL


def test_roc_auc_refuses_a_single_class() -> None:
    with pytest.raises(metrics.MetricError, match="roc_auc: ROC AUC is undefined"):
        metrics.compute("roc_auc", [0.2, 0.8], [1, 1])


@pytest.mark.parametrize("seed", range(30))
def test_log_loss_matches_scikit_learn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(5, 50)), int(rng.integers(2, 5))
    refs = rng.integers(0, k, size=n)
    refs[:k] = np.arange(k)
    probs = rng.dirichlet(np.ones(k), size=n)
    probs[0] = 0.0
    probs[0, (refs[0] + 1) % k] = 1.0  # a confident miss: clipping matters
    expected = sk.log_loss(refs, probs)
    assert abs(metrics.compute("log_loss", probs, refs) - expected) <= TOL
    binary = (refs % 2).tolist()
    positive = rng.random(n)
    assert abs(metrics.compute("log_loss", positive, binary) - sk.log_loss(binary, positive)) <= TOL


def test_log_loss_needs_labels_when_references_hold_one_class() -> None:
    with pytest.raises(metrics.MetricError, match="log_loss: references hold a single class"):
        metrics.compute("log_loss", [[0.2, 0.8]], ["b"])
    got = metrics.compute("log_loss", [[0.2, 0.8]], ["b"], labels=["a", "b"])
    assert got == pytest.approx(sk.log_loss(["b"], [[0.2, 0.8]], labels=["a", "b"]))
