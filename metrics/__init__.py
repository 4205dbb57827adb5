"""Weighbridge's metric library: pure functions, no dependency on the rest of the project.

    import metrics
    metrics.compute("macro_f1", predictions, references)                # -> float
    metrics.compute_detailed("bleu", hyps, refs).extras["signature"]      # sacrebleu signature
    metrics.confidence_interval("accuracy", predictions, references)      # -> (low, high)
    metrics.get("ter").direction                                          # "lower"
    metrics.summarise([12.5, 12.4, 12.9])                                 # median, range, CI
    metrics.evaluate_alerts(series, rule, state)                          # -> (state, events)

Fraction metrics (accuracy, F1, exact match, ...) are in [0, 1]; sacrebleu metrics on its
0-100 scale. Every input problem raises MetricError (a ValueError) naming the metric.
"""

from metrics.bootstrap import bootstrap_distribution, confidence_interval, paired_bootstrap_pvalue
from metrics.changepoints import ChangePoint, find_change_points
from metrics.errors import MetricError
from metrics.leaderboard import (
    Leaderboard,
    LeaderboardMetric,
    LeaderboardRow,
    attach_confidence_intervals,
    default_weights,
    mark_ties,
    normalise_weights,
    parse_weights,
    rank_models,
)
from metrics.performance import PERFORMANCE_METRICS, summarize_performance
from metrics.registry import compute, compute_detailed, get, is_registered, names, register
from metrics.regressions import (
    AlertEvent,
    AlertRule,
    AlertState,
    ZScoreVerdict,
    evaluate_alerts,
    lookback_zscore,
)
from metrics.robustness import delta_metric
from metrics.series import SeriesSummary, summarise
from metrics.spec import MetricResult, MetricSpec

__all__ = [
    "PERFORMANCE_METRICS",
    "AlertEvent",
    "AlertRule",
    "AlertState",
    "ChangePoint",
    "Leaderboard",
    "LeaderboardMetric",
    "LeaderboardRow",
    "MetricError",
    "MetricResult",
    "MetricSpec",
    "SeriesSummary",
    "ZScoreVerdict",
    "attach_confidence_intervals",
    "bootstrap_distribution",
    "compute",
    "compute_detailed",
    "confidence_interval",
    "default_weights",
    "delta_metric",
    "evaluate_alerts",
    "find_change_points",
    "get",
    "is_registered",
    "lookback_zscore",
    "mark_ties",
    "names",
    "normalise_weights",
    "paired_bootstrap_pvalue",
    "parse_weights",
    "rank_models",
    "register",
    "summarise",
    "summarize_performance",
]
