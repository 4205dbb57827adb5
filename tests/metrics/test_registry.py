"""The registry: names, metadata, options and the errors every metric gives for bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import metrics

LABEL_METRICS = [
    "accuracy",
    "macro_f1",
    "micro_f1",
    "weighted_f1",
    "f1",
    "precision",
    "recall",
    "mcc",
    "confusion_matrix",
]
NUMBER_METRICS = ["mse", "rmse", "mae", "r2", "pearson", "spearman"]
TEXT_METRICS = ["exact_match", "squad_f1", "bleu", "chrf", "chrf_plus_plus", "ter", "wer", "cer"]
COMPUTED = [n for n in metrics.names() if metrics.get(n).computable]


def test_every_named_metric_is_registered_with_metadata() -> None:
    for name in [
        *LABEL_METRICS,
        *NUMBER_METRICS,
        *TEXT_METRICS,
        "top_k_accuracy",
        "roc_auc",
        "log_loss",
    ]:
        assert metrics.is_registered(name)
    for name in metrics.names():
        spec = metrics.get(name)
        info = spec.describe()
        assert info["direction"] in ("higher", "lower")
        assert info["utility_direction"] == (1 if spec.direction == "higher" else -1)
        assert info["value_type"] in ("float", "dict")
        assert spec.pretty_name and spec.description
    assert not metrics.is_registered("nope")


def test_performance_and_delta_metrics_carry_leaderboard_metadata() -> None:
    assert metrics.get("examples_per_second").direction == "higher"
    for name in ("latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "peak_memory_mb"):
        assert metrics.get(name).direction == "lower"
    assert metrics.get("robustness").family == "delta"
    with pytest.raises(
        metrics.MetricError,
        match=r"latency_p99_ms: cannot be computed .*metrics\.summarize_performance",
    ):
        metrics.compute("latency_p99_ms", [1], [1])
    with pytest.raises(
        metrics.MetricError, match=r"fairness: cannot be computed .*metrics\.delta_metric"
    ):
        metrics.compute("fairness", [1], [1])


def test_unknown_metric_names_a_close_match_and_the_known_ones() -> None:
    with pytest.raises(
        metrics.MetricError,
        match=r"^macro_f: unknown metric; did you mean 'macro_f1'.*known metrics: accuracy, ",
    ):
        metrics.compute("macro_f", [1], [1])
    with pytest.raises(metrics.MetricError, match=r"^zzz: unknown metric; known metrics: accuracy"):
        metrics.get("zzz")


@pytest.mark.parametrize("name", COMPUTED)
def test_length_mismatch_is_refused_by_name(name: str) -> None:
    with pytest.raises(
        metrics.MetricError,
        match=rf"^{name}: .* differ in length \(2 predictions, 3 references\)",
    ):
        metrics.compute(name, ["a", "b"], ["a", "b", "c"])


@pytest.mark.parametrize("name", COMPUTED)
def test_empty_inputs_are_refused_by_name(name: str) -> None:
    with pytest.raises(metrics.MetricError, match=rf"^{name}: empty input"):
        metrics.compute(name, [], [])


@pytest.mark.parametrize("name", LABEL_METRICS)
def test_wrong_label_types_are_refused_by_name(name: str) -> None:
    with pytest.raises(
        metrics.MetricError, match=rf"^{name}: predictions are numbers but references are strings"
    ):
        metrics.compute(name, [1, 2], ["1", "2"])
    with pytest.raises(
        metrics.MetricError, match=rf"^{name}: references mix label types \(int, str\)"
    ):
        metrics.compute(name, [1, 2], [1, "2"])
    with pytest.raises(metrics.MetricError, match=rf"^{name}: predictions hold continuous values"):
        metrics.compute(name, [0.5, 1.0], [1, 1])
    with pytest.raises(
        metrics.MetricError, match=rf"^{name}: predictions must be int or str labels, got dict"
    ):
        metrics.compute(name, [{"label": 1}], [1])


@pytest.mark.parametrize("name", TEXT_METRICS)
def test_non_text_predictions_are_refused_by_name(name: str) -> None:
    with pytest.raises(metrics.MetricError, match=rf"^{name}: prediction 0 must be a string"):
        metrics.compute(name, [3], ["three"])


@pytest.mark.parametrize("name", ["accuracy", "mse", "bleu"])
def test_a_bare_string_is_not_a_sequence_of_examples(name: str) -> None:
    with pytest.raises(metrics.MetricError, match=rf"^{name}: predictions must be a sequence"):
        metrics.compute(name, "abc", ["a", "b", "c"])


def test_options_are_checked() -> None:
    assert metrics.compute("f1", [1, 2, 2], [1, 2, 1], average="micro") == metrics.compute(
        "micro_f1", [1, 2, 2], [1, 2, 1]
    )
    with pytest.raises(
        metrics.MetricError, match=r"^accuracy: unknown option\(s\) k; accepted options: none"
    ):
        metrics.compute("accuracy", [1], [1], k=3)
    with pytest.raises(
        metrics.MetricError,
        match=r"^f1: average='sample' is not one of macro, micro, weighted, binary",
    ):
        metrics.compute("f1", [1], [1], average="sample")
    with pytest.raises(metrics.MetricError, match=r"^top_k_accuracy: k must be a positive int"):
        metrics.compute("top_k_accuracy", [[1, 2]], [1], k=0)


def test_numpy_arrays_tuples_and_generators_are_accepted() -> None:
    expected = metrics.compute("accuracy", [1, 2, 3], [1, 2, 2])
    assert metrics.compute("accuracy", np.array([1, 2, 3]), (1, 2, 2)) == expected
    assert metrics.compute("accuracy", (x for x in [1, 2, 3]), np.array([1, 2, 2])) == expected
    assert metrics.compute("accuracy", np.array(["a", "b"]), ["a", "c"]) == 0.5


def test_register_refuses_to_shadow_a_builtin() -> None:
    with pytest.raises(
        metrics.MetricError, match="accuracy: a metric with this name is already registered"
    ):
        metrics.register(metrics.get("accuracy"))


def test_import_does_no_heavy_work() -> None:
    code = (
        "import sys, metrics; print(*(m in sys.modules for m in ('sacrebleu', 'sklearn', 'scipy')))"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    )
    assert out.stdout.split() == ["False", "False", "False"]
