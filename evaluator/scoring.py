"""Task metrics with bootstrap confidence intervals, computed in a process pool.

`score_metric` runs in a pool worker: it imports the metric library there, never returns an
exception object (a metric's own exception types need not survive pickling), and reports a
metric problem as `{"error": ...}` for the caller to turn into a readable failure.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import math
import multiprocessing
import os
import signal
import sys
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from functools import partial
from typing import Any

from core.taskconfig import MetricConfig

PERFORMANCE_UNITS = {
    "examples_per_second": "examples/s",
    "latency_p50_ms": "ms",
    "latency_p90_ms": "ms",
    "latency_p99_ms": "ms",
    "peak_memory_mb": "MiB",
}


def pool_size() -> int:
    """How many scoring processes an evaluator starts: one per core, at most four."""
    return max(1, min(4, os.cpu_count() or 1))


def make_pool(max_workers: int | None = None) -> ProcessPoolExecutor:
    """A pool of spawned processes (no fork of an event loop with open connections)."""
    workers = max_workers or pool_size()
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=die_with_parent,
        initargs=(os.getpid(),),
    )


def die_with_parent(parent_pid: int) -> None:
    """Pool workers hold both ends of their queues, so they never see the evaluator die:
    ask Linux to kill them with it (a killed evaluator must not leave workers behind)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:
        os._exit(0)


def _metric_functions() -> tuple[Any, Any]:
    from metrics.bootstrap import confidence_interval
    from metrics.registry import compute

    return compute, confidence_interval


def score_metric(
    name: str,
    options: dict[str, Any],
    predictions: list[Any],
    references: list[Any],
    *,
    confidence: float,
    resamples: int,
    seed: int = 0,
) -> dict[str, Any]:
    """One metric's value and confidence interval (runs in a pool worker)."""
    try:
        compute, interval = _metric_functions()
        value = compute(name, predictions, references, **options)
    except Exception as exc:
        return {"metric": name, "error": f"{type(exc).__name__}: {exc}"}
    if isinstance(value, bool) or not isinstance(value, int | float):
        # e.g. a confusion matrix: kept in result.json, not a leaderboard number.
        return {"metric": name, "value": None, "detail": value}
    value = float(value)
    if not math.isfinite(value):
        return {"metric": name, "error": f"the metric is {value} on these predictions"}
    result: dict[str, Any] = {"metric": name, "value": value, "ci_low": None, "ci_high": None}
    if resamples > 0:
        try:
            low, high = interval(
                name,
                predictions,
                references,
                confidence=confidence,
                resamples=resamples,
                seed=seed,
                **options,
            )
            if math.isfinite(low) and math.isfinite(high):
                result.update(ci_low=float(low), ci_high=float(high))
        except Exception as exc:
            result["ci_error"] = f"{type(exc).__name__}: {exc}"
    return result


async def score_metrics(
    pool: Executor,
    metrics: Sequence[MetricConfig],
    predictions: list[Any],
    references: list[Any],
    *,
    confidence: float,
    resamples: int,
) -> list[dict[str, Any]]:
    """Every task metric, one pool job each, without blocking the event loop."""
    loop = asyncio.get_running_loop()
    jobs = [
        loop.run_in_executor(
            pool,
            partial(
                score_metric,
                m.name,
                dict(m.options),
                predictions,
                references,
                confidence=confidence,
                resamples=resamples,
            ),
        )
        for m in metrics
    ]
    return list(await asyncio.gather(*jobs))


# -- robustness and fairness (Dynaboard's deltas) ------------------------------------------


def delta_per_group(
    primary: str,
    options: dict[str, Any],
    perturbed: list[Any],
    original: list[Any],
    groups: list[int],
) -> Any:
    """Per original example that has perturbed copies: the primary metric of its copies'
    predictions against its own prediction (`metrics.delta_metric` is the mean of these)."""
    import numpy as np

    from metrics.registry import computable

    spec = computable(primary)
    resolved = spec.resolve_options(options)
    index = np.asarray(groups, dtype=np.int64)
    targets = [original[i] for i in index]
    _seen, inverse = np.unique(index, return_inverse=True)
    inverse = inverse.ravel()
    sizes = np.bincount(inverse)
    if spec.per_example is not None:
        values = np.asarray(spec.per_example(perturbed, targets, **resolved), dtype=np.float64)
        return np.bincount(inverse, weights=values) / sizes
    function = spec.function
    assert function is not None  # computable() refused metrics without one
    order = np.argsort(inverse, kind="stable")
    members = np.split(order, np.cumsum(sizes)[:-1])
    return np.array(
        [function([perturbed[j] for j in m], [targets[j] for j in m], **resolved) for m in members],
        dtype=np.float64,
    )


def mean_interval(
    values: Any, *, confidence: float, resamples: int, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (resampling them, seeded).

    Resamples are drawn as multinomial counts over the distinct values: the same
    distribution as drawing indices, at a cost that grows with the distinct values only.
    """
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    uniques, inverse = np.unique(values, return_inverse=True)
    weights = np.bincount(inverse.ravel()) / n
    rng = np.random.default_rng(seed)
    chunk = max(1, (1 << 22) // len(uniques))
    means = []
    done = 0
    while done < resamples:
        size = min(chunk, resamples - done)
        means.append(rng.multinomial(n, weights, size=size) @ uniques / n)
        done += size
    tail = (1 - confidence) / 2
    low, high = np.quantile(np.concatenate(means), [tail, 1 - tail])
    return float(low), float(high)


def delta_score(
    metric: str,
    primary: str,
    options: dict[str, Any],
    perturbed: list[Any],
    original: list[Any],
    groups: list[int],
    *,
    confidence: float,
    resamples: int,
    seed: int = 0,
) -> dict[str, Any]:
    """`metric` (robustness or fairness): `metrics.delta_metric` of the primary metric, with a
    bootstrap interval over the original examples (runs in a pool worker; errors as data)."""
    try:
        import metrics

        value = float(metrics.delta_metric(primary, perturbed, original, groups=groups, **options))
    except Exception as exc:
        return {"metric": metric, "error": f"{type(exc).__name__}: {exc}"}
    if not math.isfinite(value):
        return {"metric": metric, "error": f"the delta is {value} on these predictions"}
    result: dict[str, Any] = {
        "metric": metric,
        "value": value,
        "ci_low": None,
        "ci_high": None,
        "n_groups": len(set(groups)),
    }
    if resamples > 0:
        try:
            per_group = delta_per_group(primary, options, perturbed, original, groups)
            if not math.isclose(float(per_group.mean()), value, rel_tol=1e-9, abs_tol=1e-12):
                raise ValueError(
                    f"per-original values average {float(per_group.mean())}, not {value}"
                )
            low, high = mean_interval(
                per_group, confidence=confidence, resamples=resamples, seed=seed
            )
            result.update(ci_low=low, ci_high=high)
        except Exception as exc:
            result["ci_error"] = f"{type(exc).__name__}: {exc}"
    return result


async def score_delta(
    pool: Executor,
    metric: str,
    primary: MetricConfig,
    perturbed: list[Any],
    original: list[Any],
    groups: list[int],
    *,
    confidence: float,
    resamples: int,
) -> dict[str, Any]:
    """`delta_score` in the pool, without blocking the event loop."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        pool,
        partial(
            delta_score,
            metric,
            primary.name,
            dict(primary.options),
            perturbed,
            original,
            groups,
            confidence=confidence,
            resamples=resamples,
        ),
    )
