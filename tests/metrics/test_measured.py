"""Performance summaries from timings, and Dynaboard's robustness/fairness deltas."""

from __future__ import annotations

import numpy as np
import pytest

import metrics


def test_performance_summary() -> None:
    summary = metrics.summarize_performance(
        [0.010, 0.020, 0.100], [2, 2, 1], wall_time=0.5, peak_memory_bytes=3 * 2**20
    )
    per_example_ms = [10, 10, 20, 20, 100]  # each example waits for its whole batch
    assert summary["examples_per_second"] == 10.0
    assert summary["latency_p50_ms"] == pytest.approx(np.percentile(per_example_ms, 50))
    assert summary["latency_p90_ms"] == pytest.approx(np.percentile(per_example_ms, 90))
    assert summary["latency_p99_ms"] == pytest.approx(np.percentile(per_example_ms, 99))
    assert summary["peak_memory_mb"] == 3.0
    assert set(summary) == set(metrics.PERFORMANCE_METRICS)
    assert all(metrics.is_registered(name) for name in summary)


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (([0.1], [1, 2]), {}, "differ in length"),
        (([], []), {}, "empty input"),
        (([float("nan")], [1]), {}, "finite, non-negative"),
        (([0.1], [0]), {}, "positive integers"),
        (([0.1], [1]), {"wall_time": 0}, "wall_time must be positive"),
    ],
)
def test_performance_summary_refuses_bad_timings(args, kwargs, message) -> None:
    options = {"wall_time": 1.0, "peak_memory_bytes": 0, **kwargs}
    with pytest.raises(metrics.MetricError, match=f"^performance: .*{message}"):
        metrics.summarize_performance(*args, **options)


def test_robustness_scores_perturbed_predictions_against_the_models_own_answers() -> None:
    original = ["pos", "neg", "pos"]  # the model's answers on the original examples
    perturbed = ["pos", "neg", "neg", "neg", "neg"]  # its answers on perturbed copies
    groups = [0, 0, 1, 1, 2]  # which original each perturbed example comes from
    # per original: 1 of 2 answers kept, 2 of 2 kept, 0 of 1 kept -> mean(0.5, 1, 0) = 0.5
    assert metrics.delta_metric("accuracy", perturbed, original, groups=groups) == 0.5
    # macro-F1 per group, as Dynabench does: group 0 scores ["pos","neg"] against ["pos","pos"]:
    # F1(pos) = 2*1/(2*1+0+1) = 2/3, F1(neg) = 0 -> 1/3; group 1 -> 1; group 2 -> 0
    assert metrics.delta_metric("macro_f1", perturbed, original, groups=groups) == pytest.approx(
        (1 / 3 + 1 + 0) / 3
    )


def test_robustness_with_one_perturbation_per_example_and_errors() -> None:
    assert metrics.delta_metric("accuracy", [1, 2, 3, 4], [1, 2, 0, 0]) == 0.5
    with pytest.raises(
        metrics.MetricError, match=r"^accuracy: perturbed and original predictions differ"
    ):
        metrics.delta_metric("accuracy", [1, 2], [1])
    with pytest.raises(metrics.MetricError, match=r"^accuracy: groups must index the 1 original"):
        metrics.delta_metric("accuracy", [1, 2], [1], groups=[0, 1])
