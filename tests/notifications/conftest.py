"""Factories for the email tests: an owner, a scored done submission, a failed one with a log."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from core.accounts import create_user
from core.models import Score, Submission, Task, User, new_id
from core.storage import Storage


async def make_owner(session: AsyncSession, name: str = "ada") -> User:
    user, _ = await create_user(session, name, email=f"{name}@example.org")
    return user


async def task_row(session: AsyncSession, slug: str) -> Task:
    task = await session.scalar(sa.select(Task).where(Task.slug == slug))
    assert task is not None, f"task {slug} is not synced"
    return task


async def make_scored_submission(
    session: AsyncSession,
    owner: User,
    task: Task,
    scores: dict[str, dict[str, float | tuple[float, float, float]]],
    **overrides: Any,
) -> Submission:
    """A done submission with `scores[dataset][metric]` = value or (value, ci_low, ci_high)."""
    values: dict[str, Any] = {
        "user_id": owner.id,
        "task_id": task.id,
        "name": "parity-net",
        "status": "done",
    }
    values.update(overrides)
    submission = Submission(**values)
    session.add(submission)
    await session.flush()
    for dataset, metrics in scores.items():
        for metric, value in metrics.items():
            v, lo, hi = value if isinstance(value, tuple) else (value, None, None)
            session.add(
                Score(
                    submission_id=submission.id,
                    dataset=dataset,
                    metric=metric,
                    value=v,
                    ci_low=lo,
                    ci_high=hi,
                    n_examples=100,
                )
            )
    await session.flush()
    return submission


async def make_failed_submission(
    session: AsyncSession,
    storage: Storage,
    owner: User,
    task: Task,
    *,
    stage: str = "build",
    reason: str = "handler.py: ModuleNotFoundError: No module named 'transformers'",
    log_lines: int = 100,
) -> Submission:
    submission_id = new_id()
    log_key = f"submissions/{submission_id}/build/log"
    await storage.write_bytes(
        log_key, "".join(f"log line {i}\n" for i in range(log_lines)).encode()
    )
    submission = Submission(
        id=submission_id,
        user_id=owner.id,  # type: ignore[arg-type]
        task_id=task.id,
        name="broken-net",
        status="failed",
        failed_stage=stage,
        error=reason,
        error_log_key=log_key,
    )
    session.add(submission)
    await session.flush()
    return submission
