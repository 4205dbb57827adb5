"""Metric specs (what the registry knows about a metric) and the bootstrap's view of a metric."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from metrics.errors import MetricError

Direction = Literal["higher", "lower"]


@dataclass(frozen=True)
class Resampleable:
    """A metric as a function of how often each category of example is drawn.

    `codes[i]` is the category of example i. `evaluate(counts, categories)` receives a (B, U)
    array: how many times each of the U categories listed in `categories` (possibly repeated)
    was drawn in each of B resamples, and returns the B metric values. The bootstrap draws
    these counts (multinomially, or by resampling example indices) without touching the inputs.
    """

    codes: np.ndarray
    evaluate: Callable[[np.ndarray, np.ndarray], np.ndarray]


def add_columns(counts: np.ndarray, categories: np.ndarray, width: int) -> np.ndarray:
    """(B, width) sums of the columns of `counts` into the columns named by `categories`."""
    out = np.zeros((counts.shape[0], width), dtype=np.float64)
    if len(np.unique(categories)) == len(categories):
        out[:, categories] = counts
        return out
    order = np.argsort(categories, kind="stable")
    sorted_cats = categories[order]
    starts = np.flatnonzero(np.r_[True, sorted_cats[1:] != sorted_cats[:-1]])
    out[:, sorted_cats[starts]] = np.add.reduceat(counts[:, order], starts, axis=1)
    return out


def mean_resampleable(
    values: np.ndarray, *, finish: Callable[[np.ndarray], np.ndarray] | None = None
) -> Resampleable:
    """The mean of per-example values (then `finish`, e.g. a square root)."""
    uniques, inverse = np.unique(values, return_inverse=True)
    n = len(values)

    def evaluate(counts: np.ndarray, categories: np.ndarray) -> np.ndarray:
        means = counts.astype(np.float64) @ uniques[categories] / n
        return finish(means) if finish else means

    return Resampleable(inverse.ravel(), evaluate)


def table_resampleable(
    rows: np.ndarray, finish: Callable[[np.ndarray], np.ndarray]
) -> Resampleable:
    """A function (`finish`, on (B, d) sums) of the column sums of per-example rows (n, d)."""
    uniques, inverse = np.unique(rows, axis=0, return_inverse=True)

    def evaluate(counts: np.ndarray, categories: np.ndarray) -> np.ndarray:
        return finish(counts.astype(np.float64) @ uniques[categories])

    return Resampleable(inverse.ravel(), evaluate)


@dataclass(frozen=True)
class MetricSpec:
    """One registered metric: how to show it, which way is better, and how to compute it.

    Values of fraction metrics (accuracy, F1, exact match, ...) lie in [0, 1]; `scale`
    (100 for those) and `unit` ("%") say how to display them. `options` lists the keyword
    options the metric accepts with their defaults; `fixed` pins options for convenience
    names (``macro_f1`` is ``f1`` with ``average="macro"``). `family` is one of
    classification, regression, qa, generation, transcription, performance, delta; only the
    first five are computed from predictions and references by `metrics.compute`.
    """

    name: str
    pretty_name: str
    unit: str
    direction: Direction
    range: tuple[float | None, float | None]
    family: str
    description: str
    value_type: Literal["float", "dict"] = "float"
    scale: float = 1.0
    options: Mapping[str, Any] = field(default_factory=dict)
    fixed: Mapping[str, Any] = field(default_factory=dict)
    function: Callable[..., Any] | None = field(default=None, repr=False)
    detail: Callable[..., tuple[Any, dict[str, Any]]] | None = field(default=None, repr=False)
    per_example: Callable[..., np.ndarray] | None = field(default=None, repr=False)
    resampleable: Callable[..., Resampleable] | None = field(default=None, repr=False)

    @property
    def utility_direction(self) -> int:
        """+1 when higher is better, -1 when lower is better (Dynabench's utility_direction)."""
        return 1 if self.direction == "higher" else -1

    @property
    def computable(self) -> bool:
        """Whether `metrics.compute` can compute it from predictions and references."""
        return self.function is not None

    def apply(self, predictions: Any, references: Any, **options: Any) -> Any:
        """The metric's value on these inputs (options already resolved)."""
        if self.function is None:
            raise MetricError(self.name, "cannot be computed from predictions and references")
        return self.function(predictions, references, **options)

    def resolve_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults, then `options`, then the pinned ones; unknown or conflicting ones refused."""
        unknown = sorted(set(options) - set(self.options) - set(self.fixed))
        if unknown:
            accepted = ", ".join(sorted(self.options)) or "none"
            raise MetricError(
                self.name, f"unknown option(s) {', '.join(unknown)}; accepted options: {accepted}"
            )
        for key, pinned in self.fixed.items():
            if key in options and options[key] != pinned:
                raise MetricError(
                    self.name,
                    f"option {key}={options[key]!r} conflicts with this metric's fixed "
                    f"{key}={pinned!r}; use the general metric with {key}=... instead",
                )
        return {**self.options, **options, **self.fixed}

    def describe(self) -> dict[str, Any]:
        """The display metadata as plain data (for the API, the web and task validation)."""
        return {
            "name": self.name,
            "pretty_name": self.pretty_name,
            "unit": self.unit,
            "scale": self.scale,
            "direction": self.direction,
            "utility_direction": self.utility_direction,
            "range": list(self.range),
            "value_type": self.value_type,
            "family": self.family,
            "description": self.description,
            "options": dict(self.options),
            "fixed": dict(self.fixed),
            "computable": self.computable,
            "bootstrap": self.value_type == "float" and self.computable,
        }


@dataclass(frozen=True)
class MetricResult:
    """A computed value with what produced it (e.g. sacrebleu's signature in `extras`)."""

    name: str
    value: Any
    options: dict[str, Any]
    extras: dict[str, Any] = field(default_factory=dict)
