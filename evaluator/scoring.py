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
from typing import Any

from core.taskconfig import MetricConfig

PERFORMANCE_UNITS = {
    "examples_per_second": "examples/s",
    "latency_p50_ms": "ms",
    "latency_p90_ms": "ms",
    "latency_p99_ms": "ms",
    "peak_memory_mb": "MiB",
}


def make_pool(max_workers: int | None = None) -> ProcessPoolExecutor:
    """A pool of spawned processes (no fork of an event loop with open connections)."""
    workers = max_workers or max(1, min(4, os.cpu_count() or 1))
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
    import metrics

    compute = getattr(metrics, "compute", None)
    interval = getattr(metrics, "confidence_interval", None)
    if compute is None:  # the package's exports are still being written
        from metrics.registry import compute
    if interval is None:
        from metrics.bootstrap import confidence_interval as interval
    return compute, interval


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
            _call,
            m.name,
            dict(m.options),
            predictions,
            references,
            confidence,
            resamples,
        )
        for m in metrics
    ]
    return list(await asyncio.gather(*jobs))


def _call(
    name: str,
    options: dict[str, Any],
    predictions: list[Any],
    references: list[Any],
    confidence: float,
    resamples: int,
) -> dict[str, Any]:
    return score_metric(
        name, options, predictions, references, confidence=confidence, resamples=resamples
    )
