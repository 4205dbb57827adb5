"""Dynascore as Dynabench computes it, degenerate cases, intervals, ties, weight overrides."""

from __future__ import annotations

import numpy as np
import pytest

import metrics
from metrics import LeaderboardMetric, rank_models

METRICS = [
    "accuracy",  # primary, higher is better
    "examples_per_second",  # higher is better
    LeaderboardMetric("peak_memory_mb", "lower", offset=100.0),
]


def _row(model: str, d1: tuple[float, float, float], d2: tuple[float, float, float]) -> dict:
    names = ("accuracy", "examples_per_second", "peak_memory_mb")
    return {
        "model": model,
        "submission_id": f"sub-{model}",
        "scores": {
            "d1": dict(zip(names, d1, strict=True)),
            "d2": dict(zip(names, d2, strict=True)),
        },
    }


HAND_WORKED = [
    _row("A", (0.80, 100, 40), (0.70, 120, 40)),
    _row("B", (0.90, 50, 60), (0.80, 70, 60)),
    _row("C", (0.60, 200, 20), (0.60, 220, 20)),
]


def test_dynascore_on_a_hand_worked_example() -> None:
    board = rank_models(HAND_WORKED, metrics=METRICS, datasets=["d1", "d2"])
    # 1. dataset averages, weights 1/2 each:
    #    A: acc .75, eps 110, mem 40   B: acc .85, eps 60, mem 60   C: acc .60, eps 210, mem 20
    # 2. utilities x' = direction*x + offset (memory: -mem + 100):
    #    A: .75, 110, 60               B: .85, 60, 40                C: .60, 210, 80
    # 3. sorted by accuracy: C, A, B. Consecutive differences (both pass 1e-4 * .85):
    #    C->A: d_acc .15, |d_eps| 100, |d_mem'| 20     A->B: d_acc .10, |d_eps| 50, |d_mem'| 20
    #    AMRS_eps = mean(100/.15, 50/.10) = mean(2000/3, 500) = 1750/3
    #    AMRS_mem = mean(20/.15, 20/.10) = mean(400/3, 200) = 500/3;  AMRS_acc = 1
    assert board.amrs["examples_per_second"] == pytest.approx(1750 / 3)
    assert board.amrs["peak_memory_mb"] == pytest.approx(500 / 3)
    assert board.amrs["accuracy"] == 1.0
    # 4. weights 4, 1, 1 -> 4/6, 1/6, 1/6
    #    A: (4*.75 + 110*3/1750 + 60*3/500) / 6 = (3 + .188571... + .36) / 6 = .591428...
    #    B: (4*.85 +  60*3/1750 + 40*3/500) / 6 = (3.4 + .102857... + .24) / 6 = .623809...
    #    C: (4*.60 + 210*3/1750 + 80*3/500) / 6 = (2.4 + .36 + .48) / 6 = .54
    expected = {
        "A": (3 + 330 / 1750 + 0.36) / 6,
        "B": (3.4 + 180 / 1750 + 0.24) / 6,
        "C": (2.4 + 0.36 + 0.48) / 6,
    }
    assert [r.model for r in board.rows] == ["B", "A", "C"]
    assert [r.rank for r in board.rows] == [1, 2, 3]
    for row in board.rows:
        assert row.dynascore == pytest.approx(expected[row.model], abs=1e-12)
    top = board.rows[0]
    assert top.metrics == pytest.approx(
        {"accuracy": 0.85, "examples_per_second": 60, "peak_memory_mb": 60}
    )
    assert top.utilities["peak_memory_mb"] == pytest.approx(0.24)
    assert top.info == {"submission_id": "sub-B"}
    assert board.weights == pytest.approx(
        {"accuracy": 4 / 6, "examples_per_second": 1 / 6, "peak_memory_mb": 1 / 6}
    )


def test_five_metrics_with_default_weights_give_the_primary_half_the_weight() -> None:
    names = ["accuracy", "examples_per_second", "peak_memory_mb", "robustness", "fairness"]
    scores = {"d": dict.fromkeys(names, 1.0)}
    board = rank_models([{"model": "m", "scores": scores}], metrics=names)
    assert board.weights["accuracy"] == 4 / (4 + 1 + 1 + 1 + 1) == 0.5
    assert metrics.normalise_weights(metrics.default_weights(names))["fairness"] == 0.125


def _dynabench_reference(raw: np.ndarray, direction, offset, weights) -> np.ndarray:
    """Dynabench's ScoreModel.dynascore transliterated from pandas to numpy (column 0 = perf)."""
    order = np.argsort(raw[:, 0], kind="stable")
    converted = (direction * raw + offset)[order]
    delta = np.diff(converted, axis=0)
    satisfied = np.abs(delta[:, 0]) > converted[:, 0].max() * 1e-4
    w = np.asarray(weights, dtype=float) / np.sum(weights)
    score = np.zeros(len(raw))
    for m in range(raw.shape[1]):
        amrs = np.mean(np.abs(delta[satisfied, m]) / delta[satisfied, 0])
        score += converted[:, m] / abs(amrs) * w[m]
    out = np.empty(len(raw))
    out[order] = score
    return out


@pytest.mark.parametrize("seed", range(20))
def test_matches_dynabenchs_algorithm_on_random_leaderboards(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_models, n_metrics = int(rng.integers(2, 9)), int(rng.integers(1, 5))
    raw = rng.random((n_models, n_metrics)) * 10 ** rng.integers(0, 3, size=n_metrics) + 1
    direction = np.where(rng.random(n_metrics) < 0.5, 1, -1)
    direction[0] = 1 if seed % 2 else -1  # a lower-is-better primary metric too
    offset = np.round(rng.random(n_metrics) * 50) * (direction < 0) + 200 * (direction[0] < 0)
    weights = rng.integers(1, 5, size=n_metrics)
    columns = [
        LeaderboardMetric(f"m{j}", "higher" if direction[j] > 0 else "lower", float(offset[j]))
        for j in range(n_metrics)
    ]
    rows = [
        {"model": f"model{i}", "scores": {"d": {f"m{j}": raw[i, j] for j in range(n_metrics)}}}
        for i in range(n_models)
    ]
    board = rank_models(
        rows, metrics=columns, weights={f"m{j}": float(w) for j, w in enumerate(weights)}
    )
    expected = _dynabench_reference(raw, direction, offset, weights)
    got = {r.model: r.dynascore for r in board.rows}
    for i in range(n_models):
        assert got[f"model{i}"] == pytest.approx(expected[i], rel=1e-9)


def test_dataset_weights_are_normalised() -> None:
    board = rank_models(HAND_WORKED, metrics=METRICS, datasets={"d1": 3, "d2": 1})
    assert board.dataset_weights == {"d1": 0.75, "d2": 0.25}
    assert board.rows[0].metrics["accuracy"] == pytest.approx(0.75 * 0.9 + 0.25 * 0.8)


def test_models_without_every_score_are_listed_but_not_ranked() -> None:
    partial = {
        "model": "D",
        "scores": {"d1": {"accuracy": 0.99, "examples_per_second": 1, "peak_memory_mb": 1}},
    }
    board = rank_models([*HAND_WORKED, partial], metrics=METRICS, datasets=["d1", "d2"])
    assert [r.model for r in board.rows] == ["B", "A", "C"]
    assert board.unranked == {"D": "no scores on dataset 'd2'"}


def test_single_model_scores_its_primary_metric_only() -> None:
    board = rank_models(HAND_WORKED[:1], metrics=METRICS, datasets=["d1", "d2"])
    # no pair of models: no exchange rate, only accuracy (AMRS 1) counts, with weight 4/6
    assert board.amrs == {"accuracy": 1.0, "examples_per_second": None, "peak_memory_mb": None}
    assert board.rows[0].dynascore == pytest.approx(4 / 6 * 0.75)


def test_equal_primary_values_and_a_constant_metric_do_not_produce_nan() -> None:
    same = [_row("A", (0.8, 100, 40), (0.8, 100, 40)), _row("B", (0.8, 50, 40), (0.8, 50, 40))]
    board = rank_models(same, metrics=METRICS)
    assert [r.rank for r in board.rows] == [1, 1]
    assert all(np.isfinite(r.dynascore) for r in board.rows)
    constant = [_row("A", (0.8, 100, 40), (0.8, 100, 40)), _row("B", (0.9, 50, 40), (0.9, 50, 40))]
    board = rank_models(constant, metrics=METRICS)
    assert board.amrs["peak_memory_mb"] is None  # memory never moves: it cannot separate models
    assert board.rows[0].utilities["peak_memory_mb"] == 0.0


def test_weights_override_and_its_errors() -> None:
    board = rank_models(
        HAND_WORKED,
        metrics=METRICS,
        weights=metrics.parse_weights("accuracy=1, examples_per_second=5"),
    )
    assert board.rows[0].model == "C"  # throughput now dominates
    with pytest.raises(
        metrics.MetricError,
        match="accuracyy: not one of the leaderboard's metrics; did you mean 'accuracy'",
    ):
        rank_models(HAND_WORKED, metrics=METRICS, weights={"accuracyy": 1})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "weights: empty weights override"),
        ("accuracy4", "weights: item 1 'accuracy4' is not metric=weight"),
        ("accuracy=4,", "weights: item 2 is empty"),
        ("accuracy=four", "accuracy: weight 'four' is not a number"),
        ("accuracy=-1", "accuracy: weight must be a non-negative number"),
        ("accuracy=1,accuracy=2", "accuracy: weight given twice"),
        ("acuracy=1", "acuracy: not one of the leaderboard's metrics; did you mean 'accuracy'"),
    ],
)
def test_parse_weights_errors(text: str, message: str) -> None:
    with pytest.raises(metrics.MetricError, match=f"^{message}"):
        metrics.parse_weights(text, metrics=["accuracy", "wer"])


def test_parse_weights() -> None:
    assert metrics.parse_weights(" accuracy = 4 ,wer=0.5") == {"accuracy": 4.0, "wer": 0.5}


def test_confidence_intervals_and_ties_from_per_example_predictions() -> None:
    rng = np.random.default_rng(0)
    refs = rng.integers(0, 2, size=1000)
    good = np.where(rng.random(1000) < 0.9, refs, 1 - refs)
    twin = good.copy()
    twin[np.flatnonzero(good == refs)[:3]] ^= 1  # 3 more errors: not a real difference
    bad = np.where(rng.random(1000) < 0.6, refs, 1 - refs)
    preds = {"good": good, "twin": twin, "bad": bad}
    rows = [
        {"model": m, "scores": {"d": {"accuracy": metrics.compute("accuracy", p, refs)}}}
        for m, p in preds.items()
    ]
    board = rank_models(rows, metrics=["accuracy"])
    board = metrics.attach_confidence_intervals(board, predictions=preds, references=refs)
    board = metrics.mark_ties(board, predictions=preds, references=refs)
    assert [r.model for r in board.rows] == ["good", "twin", "bad"]
    for row in board.rows:
        low, high = row.primary_ci
        assert low <= row.metrics["accuracy"] <= high
    assert [r.tied for r in board.rows] == [False, True, False]
    assert board.rows[0].pvalue is None and board.rows[2].pvalue < 0.01
    assert board.to_dict()["rows"][1]["tied"] is True


def test_caller_supplied_interval_is_kept() -> None:
    rows = [dict(HAND_WORKED[0], primary_ci=(0.7, 0.8))]
    assert rank_models(rows, metrics=METRICS).rows[0].primary_ci == (0.7, 0.8)
