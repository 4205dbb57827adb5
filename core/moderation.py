"""An admin's marks on a submission: hidden (off the public boards), flagged (with a reason
shown), baseline (an organiser's reference model); each change is on the timeline."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from core.boards import mark_leaderboard_stale
from core.errors import Forbidden, WeighbridgeError
from core.models import Submission, User
from core.states import record_event
from core.submissions import get_submission

MAX_REASON = 500


def _printable(text: str) -> str:
    return "".join(ch for ch in text if ch.isprintable()).strip()


async def moderate_submission(
    session: AsyncSession,
    submission_id: str,
    *,
    by: User,
    hidden: bool | None = None,
    flagged: bool | None = None,
    flag_reason: str | None = None,
    baseline: bool | None = None,
) -> Submission:
    """Set the marks given (None leaves one as it is); a flag needs a reason."""
    if not by.is_admin:
        raise Forbidden("only an admin may moderate submissions")
    submission = await get_submission(session, submission_id, viewer=by)
    reason = _printable(flag_reason) if flag_reason is not None else None
    if reason is not None and len(reason) > MAX_REASON:
        raise WeighbridgeError(
            f"flag_reason is at most {MAX_REASON} characters", field="flag_reason"
        )
    will_flag = submission.flagged if flagged is None else flagged
    if will_flag and not (reason or (flagged is None and submission.flag_reason)):
        raise WeighbridgeError(
            "a flag needs a reason (flag_reason), shown with the row", field="flag_reason"
        )
    changes: dict[str, Any] = {}
    for name, value in (("hidden", hidden), ("flagged", flagged), ("baseline", baseline)):
        if value is not None and getattr(submission, name) != value:
            setattr(submission, name, value)
            changes[name] = value
    new_reason = (reason or submission.flag_reason) if will_flag else None
    if new_reason != submission.flag_reason:
        submission.flag_reason = new_reason
        changes["flag_reason"] = new_reason
    if changes:
        said = ", ".join(f"{k}={v}" for k, v in changes.items())
        record_event(
            session,
            submission,
            "submission.moderated",
            service="api",
            status=submission.status,
            message=f"moderated by {by.name}: {said}",
            payload={"by": by.name, **changes},
        )
        if submission.task_id is not None:
            await mark_leaderboard_stale(session, submission.task_id)
        await session.flush()
    return submission


def moderation_json(submission: Submission) -> dict[str, Any]:
    return {
        "id": submission.id,
        "hidden": submission.hidden,
        "flagged": submission.flagged,
        "flag_reason": submission.flag_reason,
        "baseline": submission.baseline,
    }
