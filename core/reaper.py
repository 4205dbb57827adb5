"""The reaper: a submission that makes no progress past its task's deadline fails, with a
reason, instead of staying `building` or `evaluating` for ever.

The queue already turns a message whose holder died into a dead letter and a failure; the
reaper covers what no message stands for any more (a lost or purged message, a fleet that
never comes, a bug) from the other side: the submission's own clock. Deadlines come from the
task: a build may take `build.timeout_seconds` per attempt, an evaluation
`eval.total_timeout_seconds` per attempt, each attempt a lease more; waiting in a queue for a
worker is given a day. A worker that finishes later finds the submission failed and leaves it.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlmodel import col

from core.models import Submission, Task, utcnow
from core.notifications import queue_submission_email
from core.states import Status, fail
from core.tasks import task_config
from core.worker import run_every

if TYPE_CHECKING:
    from core.context import Services

log = logging.getLogger(__name__)

REAP_INTERVAL_SECONDS = 300.0
# How long a submission may wait in a queue for a builder or an evaluator of its fleet.
QUEUE_WAIT = timedelta(days=1)
# Slack on top of the task's own limits: a lease to notice a dead worker, and some spare.
SLACK = timedelta(minutes=10)
STAGES = {
    Status.UPLOADED: ("build", "waiting for a builder"),
    Status.BUILDING: ("build", "building"),
    Status.BUILT: ("evaluate", "waiting for an evaluator of its fleet"),
    Status.EVALUATING: ("evaluate", "evaluating"),
}


def deadline_after(
    submission: Submission, task: Task | None, *, attempts: int, lease: float
) -> timedelta:
    """How long `submission` may stay in its present state."""
    status = Status(submission.status)
    if status in (Status.UPLOADED, Status.BUILT):
        return QUEUE_WAIT
    if task is None:
        # A benchmark or inspection: its runs may take run.count * run.timeout (kept in its
        # meta at submit); its build (packages, data) is given a queue wait.
        budget = submission.meta.get("run_budget_seconds")
        if status is Status.EVALUATING and isinstance(budget, int | float) and budget > 0:
            return timedelta(seconds=attempts * (float(budget) + lease)) + SLACK
        return QUEUE_WAIT
    config = task_config(task)
    per_attempt = (
        config.build.timeout_seconds
        if status is Status.BUILDING
        else config.eval.total_timeout_seconds
    )
    return timedelta(seconds=attempts * (per_attempt + lease)) + SLACK


async def reap_stuck(services: Services, *, now: datetime | None = None) -> list[str]:
    """Fail every unfinished submission past its deadline; returns their ids."""
    now = now or utcnow()
    settings = services.settings
    earliest = now - min(QUEUE_WAIT, SLACK)  # nothing younger can be past any deadline
    async with services.db.session() as session:
        candidates = list(
            await session.scalars(
                sa.select(col(Submission.id)).where(
                    col(Submission.status).in_([s.value for s in STAGES]),
                    col(Submission.updated_at) < earliest,
                )
            )
        )
    reaped = []
    for submission_id in candidates:
        async with services.db.session() as session:
            submission = await session.get(Submission, submission_id, with_for_update=True)
            if submission is None or Status(submission.status) not in STAGES:
                continue  # it moved on meanwhile
            task = await session.get(Task, submission.task_id) if submission.task_id else None
            allowed = deadline_after(
                submission, task, attempts=settings.max_attempts, lease=settings.lease_seconds
            )
            if submission.updated_at + allowed > now:
                continue
            stage, doing = STAGES[Status(submission.status)]
            await fail(
                session,
                submission,
                service="reaper",
                stage=stage,
                error=(
                    f"no progress for {_duration(now - submission.updated_at)} while "
                    f"{doing} (the limit is {_duration(allowed)}); the worker may have been "
                    "lost. Upload it again, or ask an operator to look at "
                    "`weighbridge admin queue`"
                ),
            )
            await queue_submission_email(session, services.storage, submission, settings=settings)
            reaped.append(submission_id)
    return reaped


def _duration(span: timedelta) -> str:
    minutes = int(span.total_seconds() // 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min"


async def run_reaper(
    services: Services, stop: asyncio.Event, *, interval: float = REAP_INTERVAL_SECONDS
) -> None:
    """Reap every `interval` seconds until `stop` is set (one per deployment)."""

    async def reap() -> None:
        reaped = await reap_stuck(services)
        if reaped:
            log.warning("failed %d stuck submission(s): %s", len(reaped), ", ".join(reaped))

    await run_every(interval, stop, reap, what="reaping stuck submissions")
