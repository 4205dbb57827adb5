"""The one state machine for submissions; every transition appends an event."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from core.envelope import Envelope, Visit
from core.errors import Conflict
from core.models import Event, Submission, utcnow


class Status(StrEnum):
    UPLOADED = "uploaded"
    BUILDING = "building"
    BUILT = "built"
    EVALUATING = "evaluating"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({Status.DONE, Status.FAILED, Status.CANCELLED})

# Self-transitions are allowed for the working states: a redelivered message resumes work.
ALLOWED: dict[Status, frozenset[Status]] = {
    Status.UPLOADED: frozenset({Status.BUILDING}),
    Status.BUILDING: frozenset({Status.BUILDING, Status.BUILT}),
    Status.BUILT: frozenset({Status.EVALUATING}),
    Status.EVALUATING: frozenset({Status.EVALUATING, Status.DONE}),
    Status.DONE: frozenset(),
    Status.FAILED: frozenset(),
    Status.CANCELLED: frozenset(),
}


class InvalidTransition(Conflict):
    code = "invalid_transition"


def can_transition(current: str, to: str) -> bool:
    current_s, to_s = Status(current), Status(to)
    if to_s in (Status.FAILED, Status.CANCELLED):
        return current_s not in TERMINAL
    return to_s in ALLOWED[current_s]


def record_event(
    session: AsyncSession,
    submission: Submission,
    type: str,
    *,
    service: str,
    message: str = "",
    payload: dict[str, Any] | None = None,
    status: str | None = None,
    parent: Envelope | None = None,
) -> Event:
    """Append an event to the submission's timeline (in the caller's transaction)."""
    visited = [*(parent.visited if parent else []), Visit(service=service)]
    envelope = Envelope(
        action_id=submission.id,
        parent_action_id=submission.parent_id,
        client_id=submission.client_id,
        type=type,
        visited=visited,
        payload=payload or {},
    )
    event = Event(
        submission_id=submission.id,
        message_id=envelope.message_id,
        type=type,
        status=status,
        message=message,
        envelope=envelope.model_dump(mode="json"),
        created_at=envelope.created_at,
    )
    session.add(event)
    return event


def transition(
    session: AsyncSession,
    submission: Submission,
    to: Status | str,
    *,
    service: str,
    message: str = "",
    payload: dict[str, Any] | None = None,
    stage: str | None = None,
    error: str | None = None,
    log_key: str | None = None,
    parent: Envelope | None = None,
) -> Event:
    """Move the submission to `to` (checked) and append the event that says so."""
    to_s = Status(to)
    if not can_transition(submission.status, to_s):
        raise InvalidTransition(
            f"submission {submission.id} is {submission.status}; it cannot become {to_s.value}"
        )
    submission.status = to_s.value
    submission.updated_at = utcnow()
    if to_s is Status.FAILED:
        submission.failed_stage = stage
        submission.error = error or message
        submission.error_log_key = log_key
    body = dict(payload or {})
    if stage:
        body.setdefault("stage", stage)
    if error:
        body.setdefault("error", error)
    if log_key:
        body.setdefault("log_key", log_key)
    session.add(submission)
    return record_event(
        session,
        submission,
        f"status.{to_s.value}",
        service=service,
        message=message or error or to_s.value,
        payload=body,
        status=to_s.value,
        parent=parent,
    )
