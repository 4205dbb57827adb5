"""Re-running a finished model submission: its evaluation starts again as a new attempt.

The owner (or an admin) asks; the submission goes back to `uploaded` (core.states.reopen, with
an event naming who asked and the attempt), its runs and scores go (so the evaluator does every
dataset again and the leaderboard is rebuilt without the old scores), and its build message
is queued again, all in the caller's transaction (outbox). The builder and the evaluator then
treat it as any new submission; the stored bundle is the same.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from core.boards import mark_leaderboard_stale
from core.errors import Forbidden, NotFound, WeighbridgeError
from core.models import LeaderboardEntry, Run, Score, Submission, Task, User
from core.outbox import Outbox
from core.queue import BUILD_QUEUE
from core.states import TERMINAL, Status, reopen
from core.submissions import build_message, get_submission


def can_rerun(submission: Submission, viewer: User | None) -> bool:
    """Whether `viewer` may re-run `submission` now (the page shows the button only then)."""
    return (
        viewer is not None
        and (viewer.is_admin or viewer.id == submission.user_id)
        and submission.kind == "model"
        and Status(submission.status) in TERMINAL
    )


async def rerun_submission(
    session: AsyncSession, outbox: Outbox, submission_id: str, *, user: User
) -> Submission:
    """Queue a finished model submission's evaluation again, as attempt n + 1."""
    submission = await get_submission(session, submission_id, viewer=user)
    if submission.user_id != user.id and not user.is_admin:
        raise Forbidden("you can re-run only your own submissions", field="id")
    if submission.kind != "model":
        raise WeighbridgeError(
            f"submission {submission.id} is a {submission.kind}: submit its descriptor again "
            "to run it again (only a model's evaluation is re-run in place)",
            status=409,
            code="conflict",
            field="id",
        )
    # Checked against the row as it is now (locked where the database can), not as read.
    await session.flush()
    await session.refresh(submission, with_for_update=True)
    if Status(submission.status) not in TERMINAL:
        raise WeighbridgeError(
            f"submission {submission.id} is still {submission.status}: wait until it is "
            "done or failed, or cancel it, then run it again",
            status=409,
            code="conflict",
            field="id",
        )
    owner = await session.get(User, submission.user_id)
    if owner is None:
        raise NotFound(f"no submission {submission_id}", field="id")
    task = await session.get(Task, submission.task_id) if submission.task_id else None
    attempt = int(submission.meta.get("attempt") or 1) + 1
    for table in (Score, Run, LeaderboardEntry):
        await session.execute(sa.delete(table).where(col(table.submission_id) == submission.id))
    if task is not None and task.id is not None:
        await mark_leaderboard_stale(session, task.id)
    previous = submission.status
    submission.meta = {**submission.meta, "attempt": attempt}
    reopen(
        session,
        submission,
        service="api",
        message=f"run again by {user.name}: attempt {attempt} (it was {previous})",
        payload={"attempt": attempt, "by": user.name},
    )
    await outbox.stage(session, BUILD_QUEUE, build_message(submission, task, owner))
    return submission
