"""The site's overview: every task with its leader, number of ranked models and last activity,
and the newest benchmark alerts, as one viewer may see them (the home page reads it)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from core.boards import read_leaderboard
from core.models import BenchmarkAlert, BenchmarkSeries, Submission, Task, User
from core.tasks import describe_task, list_datasets, list_tasks

RECENT_ALERTS = 8


def _visible(viewer: User | None) -> sa.ColumnElement[bool]:
    """SQL: the submission is one `viewer` may know of: not hidden by an admin and public, or
    the viewer's own; an admin sees every one."""
    if viewer is not None and viewer.is_admin:
        return sa.true()
    public = sa.and_(col(Submission.private) == sa.false(), col(Submission.hidden) == sa.false())
    if viewer is None or viewer.id is None:
        return public
    return sa.or_(public, col(Submission.user_id) == viewer.id)


async def read_overview(session: AsyncSession, *, viewer: User | None) -> dict[str, Any]:
    """`{"tasks": [describe_task(...) + {"leader", "models", "last_activity"}], "alerts":
    [{"benchmark", "metric", "kind", "value", "baseline", "change", "relative_change", "at",
    "submission_id"}]}`; `leader` is `{"model", "owner", "submission_id"}` or None."""
    tasks = []
    for task in await list_tasks(session):
        info = describe_task(task, await list_datasets(session, task))
        board = await read_leaderboard(session, task, viewer=viewer, with_datasets=False)
        rows = board["rows"]
        info["leader"] = (
            {k: rows[0][k] for k in ("model", "owner", "submission_id")} if rows else None
        )
        info["models"] = len(rows)
        info["rank_only"] = board["rank_only"]
        info["last_activity"] = await _last_activity(session, task, viewer)
        tasks.append(info)
    return {"tasks": tasks, "alerts": await recent_alerts(session, viewer=viewer)}


async def _last_activity(session: AsyncSession, task: Task, viewer: User | None) -> str | None:
    """When a submission to the task the viewer may see last changed (ISO 8601), or None."""
    at = await session.scalar(
        sa.select(sa.func.max(col(Submission.updated_at))).where(
            col(Submission.task_id) == task.id, _visible(viewer)
        )
    )
    return at.isoformat() if at is not None else None


async def recent_alerts(
    session: AsyncSession, *, viewer: User | None, limit: int = RECENT_ALERTS
) -> list[dict[str, Any]]:
    """The newest benchmark alerts (fired or cleared) on runs the viewer may see, newest first."""
    rows = await session.execute(
        sa.select(BenchmarkAlert, col(BenchmarkSeries.benchmark))
        .join(BenchmarkSeries, col(BenchmarkSeries.id) == col(BenchmarkAlert.series_id))
        .join(Submission, col(Submission.id) == col(BenchmarkAlert.submission_id))
        .where(_visible(viewer))
        .order_by(col(BenchmarkAlert.created_at).desc(), col(BenchmarkAlert.id).desc())
        .limit(limit)
    )
    return [
        {
            "benchmark": benchmark,
            "metric": alert.metric,
            "kind": alert.kind,
            "value": alert.value,
            "baseline": alert.baseline,
            "change": alert.change,
            "relative_change": alert.relative_change,
            "at": alert.created_at.isoformat(),
            "submission_id": alert.submission_id,
        }
        for alert, benchmark in rows
    ]
