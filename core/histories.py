"""Reading benchmark histories: the series and alerts of a benchmark, and the alert gauges.

The scheduler role writes them (scheduler.histories); the API (`GET /api/v1/benchmarks/
history`, `weighbridge history`) and Prometheus (`/metrics`) read them here. A benchmark is
named by its descriptor's task_name; several identities (other labels or hardware) and range
values may share that name, and each is its own series.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from core.errors import NotFound, WeighbridgeError
from core.models import (
    BenchmarkAlert,
    BenchmarkAlertState,
    BenchmarkPoint,
    BenchmarkSeries,
    Submission,
    User,
    table_of,
)

MAX_POINTS = 5000  # newest points per metric and series in one answer
SEVERITY = {"ok": 0, "pending": 1, "alerting": 2}


def _visible(viewer: User | None) -> sa.ColumnElement[bool]:
    """SQL: the submission is public, or the viewer's, or the viewer is an admin."""
    if viewer is not None and viewer.is_admin:
        return sa.true()
    if viewer is None:
        return col(Submission.private).is_(False)
    return sa.or_(col(Submission.private).is_(False), col(Submission.user_id) == viewer.id)


async def read_history(
    session: AsyncSession,
    benchmark: str,
    *,
    metric: str | None = None,
    viewer: User | None = None,
) -> dict[str, Any]:
    """Every series of the benchmark named `benchmark` as `viewer` sees it.

    `{"benchmark", "metric", "series": [{"identity", "variant", "instance_type", "labels",
    "metrics": [{"metric", "units", "status", "points": [{"run", "submission_id", "name",
    "at", "value", "ci_low", "ci_high"}]}], "alerts": [{"kind", "metric", "method",
    "submission_id", "detected_id", "baseline", "value", "change", "relative_change",
    "at"}]}]}`; runs are numbered from 1 in time order. 404 when no series has the name.
    """
    if not benchmark.strip():
        raise WeighbridgeError("benchmark must name a benchmark (its task_name)", field="benchmark")
    series_rows = list(
        await session.scalars(
            sa.select(BenchmarkSeries)
            .where(col(BenchmarkSeries.benchmark) == benchmark)
            .order_by(
                col(BenchmarkSeries.instance_type),
                col(BenchmarkSeries.identity),
                col(BenchmarkSeries.variant),
            )
        )
    )
    if not series_rows:
        raise NotFound(
            f"no history for benchmark {benchmark!r}: no done run of a descriptor with "
            "info.labels.task_name = that name has been recorded",
            field="benchmark",
        )
    answer: dict[str, Any] = {"benchmark": benchmark, "metric": metric, "series": []}
    for series in series_rows:
        metrics = await _series_metrics(session, series, metric=metric, viewer=viewer)
        alerts = await _series_alerts(session, series, metric=metric, viewer=viewer)
        if not metrics and not alerts:
            continue
        answer["series"].append(
            {
                "identity": series.identity,
                "variant": series.variant,
                "instance_type": series.instance_type,
                "labels": series.labels,
                "metrics": metrics,
                "alerts": alerts,
            }
        )
    if metric is not None and not answer["series"]:
        raise NotFound(f"benchmark {benchmark!r} has no metric {metric!r}", field="metric")
    return answer


async def _series_metrics(
    session: AsyncSession, series: BenchmarkSeries, *, metric: str | None, viewer: User | None
) -> list[dict[str, Any]]:
    points = table_of(BenchmarkPoint).c
    query = (
        sa.select(
            points.metric,
            points.submission_id,
            points.run_at,
            points.value,
            points.ci_low,
            points.ci_high,
            points.units,
            col(Submission.name),
        )
        .join(Submission, col(Submission.id) == points.submission_id)
        .where(points.series_id == series.id, _visible(viewer))
        .order_by(points.metric, points.run_at, points.id)
    )
    if metric is not None:
        query = query.where(points.metric == metric)
    by_metric: dict[str, list[Any]] = {}
    for row in await session.execute(query):
        by_metric.setdefault(row.metric, []).append(row)
    states = table_of(BenchmarkAlertState).c
    status_rows = await session.execute(
        sa.select(states.metric, states.status).where(states.series_id == series.id)
    )
    status: dict[str, str] = {}
    for name, value in status_rows:
        # One metric may have several rules: the worst state speaks for it.
        if SEVERITY.get(value, 0) >= SEVERITY.get(status.get(name, ""), -1):
            status[name] = value
    return [
        {
            "metric": name,
            "units": rows[-1].units,
            "status": status.get(name),
            "points": [
                {
                    "run": i,
                    "submission_id": r.submission_id,
                    "name": r.name,
                    "at": r.run_at.isoformat(),
                    "value": r.value,
                    "ci_low": r.ci_low,
                    "ci_high": r.ci_high,
                }
                for i, r in enumerate(rows, start=1)
            ][-MAX_POINTS:],
        }
        for name, rows in by_metric.items()
    ]


async def _series_alerts(
    session: AsyncSession, series: BenchmarkSeries, *, metric: str | None, viewer: User | None
) -> list[dict[str, Any]]:
    query = (
        sa.select(BenchmarkAlert)
        .join(Submission, col(Submission.id) == col(BenchmarkAlert.submission_id))
        .where(col(BenchmarkAlert.series_id) == series.id, _visible(viewer))
        .order_by(col(BenchmarkAlert.created_at), col(BenchmarkAlert.id))
    )
    if metric is not None:
        query = query.where(col(BenchmarkAlert.metric) == metric)
    return [
        {
            "kind": a.kind,
            "metric": a.metric,
            "method": a.method,
            "submission_id": a.submission_id,
            "detected_id": a.detected_id,
            "baseline": a.baseline,
            "value": a.value,
            "change": a.change,
            "relative_change": a.relative_change,
            "at": a.created_at.isoformat(),
        }
        for a in await session.scalars(query)
    ]


async def alert_gauges(session: AsyncSession) -> list[dict[str, Any]]:
    """Per series and metric: the benchmark, whether an alert is open (1/0) and the latest
    value with its units (Prometheus' weighbridge_benchmark_alert and _value)."""
    series = table_of(BenchmarkSeries).c
    states = table_of(BenchmarkAlertState).c
    points = table_of(BenchmarkPoint).c
    latest = (
        sa.select(points.series_id, points.metric, sa.func.max(points.run_at).label("run_at"))
        .group_by(points.series_id, points.metric)
        .subquery()
    )
    rows = await session.execute(
        sa.select(
            series.id,
            series.benchmark,
            series.identity,
            series.variant,
            points.metric,
            points.value,
            points.units,
        )
        .join(latest, latest.c.series_id == series.id)
        .join(
            table_of(BenchmarkPoint),
            sa.and_(
                points.series_id == latest.c.series_id,
                points.metric == latest.c.metric,
                points.run_at == latest.c.run_at,
            ),
        )
        .order_by(series.id, points.metric, points.id)
    )
    found: dict[tuple[int, str], dict[str, Any]] = {}
    for row in rows:
        found[(row.id, row.metric)] = {
            "benchmark": row.benchmark,
            "identity": row.identity,
            "variant": row.variant,
            "metric": row.metric,
            "units": row.units,
            "value": row.value,
            "alerting": 0,
        }
    alerting = await session.execute(
        sa.select(states.series_id, states.metric).where(states.status == "alerting")
    )
    for series_id, metric in alerting:
        if (series_id, metric) in found:
            found[(series_id, metric)]["alerting"] = 1
    return list(found.values())
