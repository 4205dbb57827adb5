"""The reaper fails what makes no progress past its task's deadline, and nothing else."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from core.accounts import create_user
from core.context import Services
from core.models import Notification, Run, Submission, Task, new_id, utcnow
from core.reaper import QUEUE_WAIT, reap_stuck
from core.tasks import task_config


async def add_submission(services: Services, status: str, *, idle: timedelta) -> str:
    async with services.db.session() as session:
        user, _ = await create_user(session, f"u-{new_id()[:8]}", email="owner@example.org")
        task = await session.scalar(sa.select(Task).where(Task.slug == "toy"))
        assert task is not None
        submission = Submission(
            user_id=user.id,  # type: ignore[arg-type]
            task_id=task.id,
            name="stuck",
            status=status,
            updated_at=utcnow() - idle,
        )
        session.add(submission)
        await session.flush()
        session.add(Run(submission_id=submission.id, name="test", status="running"))
        return submission.id


async def test_a_submission_past_its_deadline_fails_with_a_reason(services: Services) -> None:
    config = services.tasks["toy"]
    limit = 3 * (config.eval.total_timeout_seconds + services.settings.lease_seconds)
    stuck = await add_submission(services, "evaluating", idle=timedelta(seconds=limit + 3600))
    busy = await add_submission(services, "evaluating", idle=timedelta(seconds=limit / 2))
    waiting = await add_submission(services, "built", idle=QUEUE_WAIT - timedelta(hours=1))
    forgotten = await add_submission(services, "built", idle=QUEUE_WAIT + timedelta(hours=1))

    reaped = await reap_stuck(services)

    assert sorted(reaped) == sorted([stuck, forgotten])
    async with services.db.session() as session:
        rows = {s.id: s for s in await session.scalars(sa.select(Submission))}
        runs = {r.submission_id: r for r in await session.scalars(sa.select(Run))}
        mailed = {n.submission_id for n in await session.scalars(sa.select(Notification))}
    assert (rows[stuck].status, rows[stuck].failed_stage) == ("failed", "evaluate")
    assert "no progress for" in (rows[stuck].error or "")
    assert "while evaluating" in (rows[stuck].error or "")
    assert "waiting for an evaluator of its fleet" in (rows[forgotten].error or "")
    assert runs[stuck].status == "cancelled"  # no run left running
    assert rows[busy].status == "evaluating" and rows[waiting].status == "built"
    assert {stuck, forgotten} <= mailed  # the owner hears of it

    # A second pass finds nothing more to do.
    assert await reap_stuck(services) == []


async def test_the_deadline_follows_the_tasks_own_limits(services: Services) -> None:
    async with services.db.session() as session:
        task = await session.scalar(sa.select(Task).where(Task.slug == "toy"))
        assert task is not None
        config = task_config(task)
    build_limit = 3 * (config.build.timeout_seconds + services.settings.lease_seconds)
    young = await add_submission(services, "building", idle=timedelta(seconds=build_limit - 60))
    assert await reap_stuck(services, now=utcnow()) == []
    later = utcnow() + timedelta(minutes=20)
    assert await reap_stuck(services, now=later) == [young]


async def test_a_long_benchmark_is_given_its_runs_budget_not_a_task_s(
    services: Services,
) -> None:
    """A benchmark has no task: while evaluating it may take its runs' whole budget
    (run.count x run.timeout, per attempt), however long; past it, it fails as any other."""
    budget = 50 * 3600  # 50 runs of an hour: longer than a day of queue wait
    limit = 3 * (budget + services.settings.lease_seconds)
    async with services.db.session() as session:
        user, _ = await create_user(session, "bench-owner", email="owner@example.org")
        ids = []
        for idle in (QUEUE_WAIT + timedelta(hours=1), timedelta(seconds=limit + 3600)):
            submission = Submission(
                user_id=user.id,  # type: ignore[arg-type]
                kind="benchmark",
                name="long",
                status="evaluating",
                updated_at=utcnow() - idle,
                meta={"run_budget_seconds": budget},
            )
            session.add(submission)
            await session.flush()
            ids.append(submission.id)
    within, past = ids
    assert await reap_stuck(services) == [past]
    async with services.db.session() as session:
        assert (await session.get(Submission, within)).status == "evaluating"  # type: ignore[union-attr]
