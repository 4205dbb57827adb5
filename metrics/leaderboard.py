"""The leaderboard aggregate: Dynascore as Dynabench computes it, plus intervals and ties.

Dynascore (Ma et al. 2021, Dynaboard; dynabench api/models/score.py ScoreModel.dynascore):

1. each metric is averaged over the scoring datasets with the dataset weights (normalised to
   sum 1; equal by default, as the Dynabench frontend sends them);
2. each average is converted to a utility ``x' = direction * x + offset`` (direction +1 when
   higher is better, -1 when lower is better);
3. models are sorted by the primary (perf) metric; over consecutive pairs whose utility of
   the primary metric differs by more than ``1e-4 * max(perf')``, the average marginal rate
   of substitution is ``AMRS_m = mean(|Δm'| / |Δperf'|)``;
4. ``dynascore = Σ_m w_m * x'_m / AMRS_m`` with the metric weights normalised to sum 1
   (default: 4 for the primary metric, 1 for each other one).

Only models with a value for every metric on every scoring dataset are ranked. Models with
equal primary values keep their input order when sorted (Dynabench's pandas sort leaves
that open). Degenerate cases, where Dynabench would produce NaN or infinity:

* no pair qualifies (one model, or all primary values equal): no exchange rate between a
  metric and the primary one can be measured, so AMRS is None and only the primary metric
  (whose AMRS is 1 by definition) contributes;
* AMRS_m is 0 (the metric does not move when the primary metric does): the metric cannot
  separate models that way, AMRS_m is None and it contributes 0;
* ``max(perf') <= 0``: the threshold uses ``max(|perf'|)`` so that equal values never count.

Ranks use competition ranking (1, 2, 2, 4) on equal dynascores.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from metrics.bootstrap import confidence_interval, paired_bootstrap_pvalue
from metrics.errors import MetricError
from metrics.registry import get
from metrics.spec import Direction

DELTA_CUTOFF = 1e-4
PRIMARY_WEIGHT = 4.0
OTHER_WEIGHT = 1.0


@dataclass(frozen=True)
class LeaderboardMetric:
    """A leaderboard column: which way is better, and Dynabench's offset (x' = d * x + offset)."""

    name: str
    direction: Direction = "higher"
    offset: float = 0.0

    @property
    def utility_direction(self) -> int:
        return 1 if self.direction == "higher" else -1


@dataclass(frozen=True)
class LeaderboardRow:
    """One ranked model; `utilities` are x'/AMRS, each metric in units of the primary one."""

    rank: int
    model: str
    dynascore: float
    metrics: dict[str, float]
    utilities: dict[str, float]
    datasets: dict[str, dict[str, float]]
    info: dict[str, Any] = field(default_factory=dict)
    primary_ci: tuple[float, float] | None = None
    tied: bool = False
    pvalue: float | None = None


@dataclass(frozen=True)
class Leaderboard:
    """Ranked rows, the models left out (with the reason) and the numbers behind the score."""

    primary: str
    rows: list[LeaderboardRow]
    unranked: dict[str, str]
    weights: dict[str, float]
    dataset_weights: dict[str, float]
    amrs: dict[str, float | None]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable data."""
        return asdict(self)


def _metric(item: Any) -> LeaderboardMetric:
    if isinstance(item, LeaderboardMetric):
        metric = item
    elif isinstance(item, str):
        metric = LeaderboardMetric(item, get(item).direction)
    elif isinstance(item, Mapping) and "name" in item:
        extra = set(item) - {"name", "direction", "offset"}
        if extra:
            raise MetricError(str(item["name"]), f"unknown leaderboard field(s) {sorted(extra)}")
        direction = item.get("direction") or get(item["name"]).direction
        metric = LeaderboardMetric(item["name"], direction, float(item.get("offset", 0.0)))
    else:
        raise MetricError(None, f"a leaderboard metric is a name, a mapping or a spec: {item!r}")
    if metric.direction not in ("higher", "lower"):
        raise MetricError(
            metric.name, f"direction must be 'higher' or 'lower', not {metric.direction!r}"
        )
    if not math.isfinite(metric.offset):
        raise MetricError(metric.name, "offset must be a finite number")
    return metric


def leaderboard_columns(
    items: Sequence[str | LeaderboardMetric | Mapping[str, Any]],
) -> list[LeaderboardMetric]:
    """Leaderboard columns from names, specs or name/direction/offset mappings (checked)."""
    return [_metric(item) for item in items]


def default_weights(metric_names: Sequence[str], *, primary: str | None = None) -> dict[str, float]:
    """Dynabench's defaults: 4 for the primary metric (the first unless named), 1 for the rest."""
    primary = primary if primary is not None else metric_names[0]
    return {m: PRIMARY_WEIGHT if m == primary else OTHER_WEIGHT for m in metric_names}


def normalise_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """Weights scaled to sum 1; refuses negative, non-finite or all-zero weights."""
    for name, weight in weights.items():
        if not isinstance(weight, int | float) or not math.isfinite(weight) or weight < 0:
            raise MetricError(name, f"weight must be a non-negative number, got {weight!r}")
    total = float(sum(weights.values()))
    if total <= 0:
        raise MetricError(None, "weights: at least one weight must be positive")
    return {name: float(weight) / total for name, weight in weights.items()}


def _unknown_name(name: str, known: Sequence[str], what: str) -> MetricError:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return MetricError(name, f"not one of the {what}; {hint}known: {', '.join(known)}")


def parse_weights(text: str, *, metrics: Sequence[str] | None = None) -> dict[str, float]:
    """Parse a weights override such as ``"accuracy=4,examples_per_second=1"``."""
    if not isinstance(text, str) or not text.strip():
        raise MetricError("weights", "empty weights override; expected metric=weight[,...]")
    weights: dict[str, float] = {}
    for position, item in enumerate(text.split(","), start=1):
        item = item.strip()
        if not item:
            raise MetricError("weights", f"item {position} is empty (stray comma?) in {text!r}")
        name, sep, raw = (part.strip() for part in item.partition("="))
        if not sep or not name or not raw or "=" in raw:
            raise MetricError("weights", f"item {position} {item!r} is not metric=weight")
        try:
            weight = float(raw)
        except ValueError:
            raise MetricError(name, f"weight {raw!r} is not a number") from None
        if not math.isfinite(weight) or weight < 0:
            raise MetricError(name, f"weight must be a non-negative number, got {raw!r}")
        if name in weights:
            raise MetricError(name, "weight given twice")
        if metrics is not None and name not in metrics:
            raise _unknown_name(name, metrics, "leaderboard's metrics")
        weights[name] = weight
    return weights


def _aggregate(
    row: Mapping[str, Any], metrics: list[LeaderboardMetric], datasets: dict[str, float]
) -> tuple[dict[str, float] | None, str]:
    """Dataset-weighted averages of one model's metrics, or None and why it is left out."""
    scores = row.get("scores") or {}
    totals = dict.fromkeys((m.name for m in metrics), 0.0)
    for dataset, weight in datasets.items():
        per_metric = scores.get(dataset)
        if not isinstance(per_metric, Mapping):
            return None, f"no scores on dataset {dataset!r}"
        for m in metrics:
            value = per_metric.get(m.name)
            if value is None:
                return None, f"no {m.name} on dataset {dataset!r}"
            if isinstance(value, bool) or not isinstance(value, int | float | np.number):
                return None, f"{m.name} on {dataset!r} is not a number: {value!r}"
            if not math.isfinite(value):
                return None, f"{m.name} on {dataset!r} is {value}"
            totals[m.name] += weight * float(value)
    return totals, ""


def _amrs(converted: np.ndarray, order: np.ndarray, primary_col: int) -> list[float | None]:
    """Average marginal rate of substitution of each column against the primary one."""
    ordered = converted[order]
    perf = ordered[:, primary_col]
    deltas = np.diff(ordered, axis=0)
    top = perf.max() if len(perf) else 0.0
    threshold = DELTA_CUTOFF * (top if top > 0 else np.abs(perf).max(initial=0.0))
    qualifying = np.abs(deltas[:, primary_col]) > threshold
    out: list[float | None] = []
    for col in range(converted.shape[1]):
        if col == primary_col:
            out.append(1.0)
            continue
        if not qualifying.any():
            out.append(None)
            continue
        rate = float(
            np.mean(np.abs(deltas[qualifying, col]) / np.abs(deltas[qualifying, primary_col]))
        )
        out.append(rate if rate > 0 else None)
    return out


def _competition_ranks(scores: list[float]) -> list[int]:
    ranks: list[int] = []
    for i, score in enumerate(scores):
        tied_above = i > 0 and math.isclose(score, scores[i - 1], rel_tol=1e-12, abs_tol=1e-12)
        ranks.append(ranks[-1] if tied_above else i + 1)
    return ranks


def _dataset_weights(
    datasets: Sequence[str] | Mapping[str, float] | None, models: Sequence[Mapping[str, Any]]
) -> dict[str, float]:
    if datasets is None:
        names = sorted({d for row in models for d in (row.get("scores") or {})})
        datasets = dict.fromkeys(names, 1.0)
    elif not isinstance(datasets, Mapping):
        datasets = dict.fromkeys(datasets, 1.0)
    if not datasets:
        raise MetricError(None, "leaderboard: no scoring datasets")
    return normalise_weights(dict(datasets))


@dataclass(frozen=True)
class ScoredAverages:
    """Dynascores of a matrix of per-model metric averages, and the order they give."""

    dynascores: np.ndarray
    utilities: np.ndarray
    amrs: dict[str, float | None]
    order: list[int]
    ranks: list[int]


def score_averages(
    raw: np.ndarray,
    *,
    columns: Sequence[LeaderboardMetric],
    weights: Mapping[str, float],
    primary: str,
) -> ScoredAverages:
    """Dynascore of each row of `raw` (one model per row, one column per metric of `columns`,
    each already averaged over the datasets); `weights` are normalised metric weights.

    Models are ordered by Dynascore, then by the primary metric's utility, then by row; ranks
    are competition ranks. This is the numeric heart of `rank_models`, and what a stored board
    applies a reader's weights with.
    """
    names = [m.name for m in columns]
    direction = np.array([m.utility_direction for m in columns], dtype=np.float64)
    offset = np.array([m.offset for m in columns])
    converted = direction * raw + offset
    p = names.index(primary)
    order = np.argsort(raw[:, p], kind="stable")
    amrs = dict(zip(names, _amrs(converted, order, p), strict=True))
    utilities = np.column_stack(
        [
            converted[:, j] / amrs[n] if amrs[n] is not None else np.zeros(len(raw))
            for j, n in enumerate(names)
        ]
    )
    scores = utilities @ np.array([weights[n] for n in names])
    # lexsort's last key is the primary one: -score, then -utility of the primary, then row.
    by_score = [int(i) for i in np.lexsort((np.arange(len(raw)), -converted[:, p], -scores))]
    ranks = _competition_ranks([float(scores[i]) for i in by_score])
    return ScoredAverages(scores, utilities, amrs, by_score, ranks)


def rank_models(
    models: Sequence[Mapping[str, Any]],
    *,
    metrics: Sequence[str | LeaderboardMetric | Mapping[str, Any]],
    datasets: Sequence[str] | Mapping[str, float] | None = None,
    weights: Mapping[str, float] | None = None,
    primary: str | None = None,
) -> Leaderboard:
    """Rank models by Dynascore.

    `models`: one mapping per model, ``{"model": id, "scores": {dataset: {metric: value}}}``,
    optionally ``"primary_ci": (low, high)``; other keys are passed through in ``row.info``.
    `metrics`: names (direction from the registry), LeaderboardMetric or mappings with
    name/direction/offset; the primary metric is the first unless `primary` names another.
    `datasets`: the scoring datasets, a list (equal weights) or {name: weight}; default all
    datasets seen. `weights`: metric weights overriding the defaults (4 primary, 1 others).
    """
    columns = [_metric(m) for m in metrics]
    names = [m.name for m in columns]
    if not columns or len(set(names)) != len(names):
        raise MetricError(None, f"leaderboard: metrics must be distinct and non-empty: {names}")
    primary = primary if primary is not None else names[0]
    if primary not in names:
        raise _unknown_name(primary, names, "leaderboard's metrics")
    raw_weights = default_weights(names, primary=primary)
    for name, weight in (weights or {}).items():
        if name not in raw_weights:
            raise _unknown_name(name, names, "leaderboard's metrics")
        raw_weights[name] = weight
    metric_weights = normalise_weights(raw_weights)
    dataset_weights = _dataset_weights(datasets, models)

    ranked: list[tuple[Mapping[str, Any], dict[str, float]]] = []
    unranked: dict[str, str] = {}
    seen: set[str] = set()  # a set: a board of thousands of models is checked in linear time
    for row in models:
        model = str(row.get("model", ""))
        if not model:
            raise MetricError(None, f"leaderboard: a model row needs a 'model' id: {row!r}")
        if model in seen:
            raise MetricError(None, f"leaderboard: model {model!r} appears twice")
        seen.add(model)
        averages, reason = _aggregate(row, columns, dataset_weights)
        if averages is None:
            unranked[model] = reason
        else:
            ranked.append((row, averages))

    amrs: dict[str, float | None] = dict.fromkeys(names)
    rows: list[LeaderboardRow] = []
    if ranked:
        raw = np.array([[averages[n] for n in names] for _, averages in ranked])
        scored = score_averages(raw, columns=columns, weights=metric_weights, primary=primary)
        amrs, utilities, scores = scored.amrs, scored.utilities, scored.dynascores
        for rank, i in zip(scored.ranks, scored.order, strict=True):
            row, averages = ranked[i]
            ci = row.get("primary_ci")
            rows.append(
                LeaderboardRow(
                    rank=rank,
                    model=str(row["model"]),
                    dynascore=float(scores[i]),
                    metrics=dict(averages),
                    utilities={n: float(utilities[i, j]) for j, n in enumerate(names)},
                    datasets={
                        d: {n: float(row["scores"][d][n]) for n in names} for d in dataset_weights
                    },
                    info={
                        k: v for k, v in row.items() if k not in ("model", "scores", "primary_ci")
                    },
                    primary_ci=(float(ci[0]), float(ci[1])) if ci is not None else None,
                )
            )
    return Leaderboard(primary, rows, unranked, metric_weights, dataset_weights, amrs)


def attach_confidence_intervals(
    board: Leaderboard,
    *,
    predictions: Mapping[str, Any],
    references: Any,
    metric: str | None = None,
    confidence: float = 0.95,
    resamples: int = 1000,
    seed: int | None = 0,
    **options: Any,
) -> Leaderboard:
    """Bootstrap intervals of the primary metric for the rows whose predictions are given."""
    metric = metric or board.primary
    rows = [
        replace(
            row,
            primary_ci=confidence_interval(
                metric,
                predictions[row.model],
                references,
                confidence=confidence,
                resamples=resamples,
                seed=seed,
                **options,
            ),
        )
        if row.model in predictions
        else row
        for row in board.rows
    ]
    return replace(board, rows=rows)


def mark_ties(
    board: Leaderboard,
    *,
    predictions: Mapping[str, Any],
    references: Any,
    metric: str | None = None,
    alpha: float = 0.05,
    resamples: int = 1000,
    seed: int | None = 0,
    **options: Any,
) -> Leaderboard:
    """Mark rows whose primary metric is not significantly different from the row above.

    Each row is compared with the one above it by a paired bootstrap on the same examples
    (`paired_bootstrap_pvalue`); it is `tied` when the p-value is at least `alpha`. Rows
    without predictions (or below one without) keep tied=False and pvalue=None.
    """
    if not 0 < alpha < 1:
        raise MetricError(metric or board.primary, f"alpha must lie in (0, 1), got {alpha}")
    metric = metric or board.primary
    rows = list(board.rows)
    for i in range(1, len(rows)):
        above, this = rows[i - 1], rows[i]
        if above.model not in predictions or this.model not in predictions:
            continue
        pvalue = paired_bootstrap_pvalue(
            metric,
            predictions[above.model],
            predictions[this.model],
            references,
            resamples=resamples,
            seed=seed,
            **options,
        )
        rows[i] = replace(this, tied=pvalue >= alpha, pvalue=pvalue)
    return replace(board, rows=rows)
