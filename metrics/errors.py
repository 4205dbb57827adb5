"""The one error the metric library raises for bad input: it names the metric and the problem."""

from __future__ import annotations


class MetricError(ValueError):
    """Bad input to a metric; `metric` is its registered name (None outside the registry)."""

    def __init__(self, metric: str | None, problem: str) -> None:
        self.metric = metric
        self.problem = problem
        super().__init__(f"{metric}: {problem}" if metric else problem)

    def named(self, metric: str) -> MetricError:
        """The same problem, attributed to `metric` (used where the registry knows the name)."""
        return MetricError(metric, self.problem)
