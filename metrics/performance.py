"""Performance metrics from an evaluator's timings: throughput, latency percentiles, peak memory.

Each example is taken to wait for its whole batch, so latency percentiles are over examples
(a batch's latency repeated once per example in it), with numpy's linear interpolation.
Memory is reported in MiB (2**20 bytes) under the name `peak_memory_mb`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from metrics.errors import MetricError

PERFORMANCE_METRICS = (
    "examples_per_second",
    "latency_p50_ms",
    "latency_p90_ms",
    "latency_p99_ms",
    "peak_memory_mb",
)


def summarize_performance(
    batch_latencies: Sequence[float],
    batch_sizes: Sequence[int],
    *,
    wall_time: float,
    peak_memory_bytes: int | float,
) -> dict[str, float]:
    """Throughput (examples / wall time, s), latency p50/p90/p99 (ms) and peak memory (MiB).

    `batch_latencies` are seconds per batch, `batch_sizes` the examples in each batch,
    `wall_time` the seconds the whole run took, `peak_memory_bytes` its peak resident memory.
    """
    latencies = np.asarray(batch_latencies, dtype=np.float64)
    sizes = np.asarray(batch_sizes)
    if latencies.ndim != 1 or sizes.ndim != 1 or len(latencies) != len(sizes):
        raise MetricError(
            "performance",
            f"batch_latencies and batch_sizes differ in length ({latencies.size} latencies, "
            f"{sizes.size} batch sizes)",
        )
    if len(latencies) == 0:
        raise MetricError("performance", "empty input: no batches were timed")
    if not np.isfinite(latencies).all() or (latencies < 0).any():
        raise MetricError("performance", "batch_latencies must be finite, non-negative seconds")
    if sizes.dtype.kind not in "iu" or (sizes < 1).any():
        raise MetricError("performance", "batch_sizes must be positive integers")
    if not np.isfinite(wall_time) or wall_time <= 0:
        raise MetricError("performance", f"wall_time must be positive seconds, got {wall_time!r}")
    if not np.isfinite(peak_memory_bytes) or peak_memory_bytes < 0:
        raise MetricError(
            "performance", f"peak_memory_bytes must be non-negative, got {peak_memory_bytes!r}"
        )
    per_example = np.repeat(latencies, sizes) * 1000.0
    p50, p90, p99 = np.percentile(per_example, [50, 90, 99])
    return {
        "examples_per_second": float(sizes.sum() / wall_time),
        "latency_p50_ms": float(p50),
        "latency_p90_ms": float(p90),
        "latency_p99_ms": float(p99),
        "peak_memory_mb": float(peak_memory_bytes) / 2**20,
    }
