"""The one state machine for submissions; every transition appends an event."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from core.envelope import Envelope, Visit
from core.errors import Conflict
from core.models import Event, Run, Submission, utcnow
from core.scrub import scrub_text


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


class RunStatus(StrEnum):
    """A run's status (one dataset of a model, or run N of a benchmark)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


RUN_ENDED = frozenset({RunStatus.DONE, RunStatus.FAILED, RunStatus.CANCELLED})

# running -> running: a redelivered message restarts a run its dead worker left running;
# done -> running: a done run whose scores are missing is done again. Cancelled is final.
RUN_ALLOWED: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.QUEUED: frozenset({RunStatus.RUNNING, RunStatus.FAILED, RunStatus.CANCELLED}),
    RunStatus.RUNNING: frozenset(
        {RunStatus.RUNNING, RunStatus.DONE, RunStatus.FAILED, RunStatus.CANCELLED}
    ),
    RunStatus.DONE: frozenset({RunStatus.RUNNING}),
    RunStatus.FAILED: frozenset(),
    RunStatus.CANCELLED: frozenset(),
}
# The runs a cancelled submission ends: those not yet started and those in progress.
RUNS_CANCELLED_WITH_SUBMISSION = tuple(
    s.value for s, allowed in RUN_ALLOWED.items() if RunStatus.CANCELLED in allowed
)


class InvalidTransition(Conflict):
    code = "invalid_transition"


def can_transition(current: str, to: str) -> bool:
    current_s, to_s = Status(current), Status(to)
    if to_s in (Status.FAILED, Status.CANCELLED):
        return current_s not in TERMINAL
    return to_s in ALLOWED[current_s]


def can_move_run(current: str, to: str) -> bool:
    return RunStatus(to) in RUN_ALLOWED[RunStatus(current)]


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
        # Shown on the timeline to anyone who may see the submission: no server paths.
        message=scrub_text(message),
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
    """Move the submission to `to` (checked) and append the event that says so. Cancelling
    and failing go through `cancel` and `fail`, which end the submission's runs in the same
    transaction."""
    to_s = Status(to)
    if to_s is Status.CANCELLED:
        raise ValueError("cancel a submission with core.states.cancel(), which ends its runs too")
    if to_s is Status.FAILED:
        raise ValueError("fail a submission with core.states.fail(), which ends its runs too")
    return _move(
        session,
        submission,
        to_s,
        service=service,
        message=message,
        payload=payload,
        stage=stage,
        error=error,
        log_key=log_key,
        parent=parent,
    )


async def cancel(
    session: AsyncSession,
    submission: Submission,
    *,
    service: str,
    message: str = "",
    parent: Envelope | None = None,
) -> Event:
    """submission -> cancelled, and each of its runs not yet ended (queued or running) ->
    cancelled, in the caller's transaction: a worker still on it sees the state and stops,
    one that gets its message later acknowledges it and leaves everything as it is."""
    # Checked against the row as it is now (locked where the database can), not as read.
    await session.flush()
    await session.refresh(submission, with_for_update=True)
    event = _move(
        session, submission, Status.CANCELLED, service=service, message=message, parent=parent
    )
    await _end_runs(session, submission)
    return event


async def fail(
    session: AsyncSession,
    submission: Submission,
    *,
    service: str,
    stage: str,
    error: str,
    message: str = "",
    log_key: str | None = None,
    payload: dict[str, Any] | None = None,
    parent: Envelope | None = None,
) -> Event:
    """submission -> failed (with its stage, reason and log), and each run not yet ended ->
    cancelled, saying it was not finished because the submission failed: a failed submission
    leaves no run queued or running. A run that failed itself is moved by the caller first."""
    event = _move(
        session,
        submission,
        Status.FAILED,
        service=service,
        message=message,
        payload=payload,
        stage=stage,
        error=error,
        log_key=log_key,
        parent=parent,
    )
    await session.flush()
    await _end_runs(session, submission, error=f"not finished: the submission failed at {stage}")
    return event


async def _end_runs(
    session: AsyncSession, submission: Submission, *, error: str | None = None
) -> None:
    """Each of the submission's runs not yet ended (queued or running) -> cancelled."""
    values: dict[str, Any] = {"status": RunStatus.CANCELLED.value, "finished_at": utcnow()}
    if error is not None:
        values["error"] = scrub_text(error)
    await session.execute(
        sa.update(Run)
        .where(
            col(Run.submission_id) == submission.id,
            col(Run.status).in_(RUNS_CANCELLED_WITH_SUBMISSION),
        )
        .values(**values)
    )


def reopen(
    session: AsyncSession,
    submission: Submission,
    *,
    service: str,
    message: str,
    payload: dict[str, Any] | None = None,
) -> Event:
    """A finished submission (done, failed or cancelled) -> uploaded again, for a re-run: the
    one way out of an end state. The caller has removed its runs and scores and queues its
    build message in the same transaction (core.reruns)."""
    if Status(submission.status) not in TERMINAL:
        raise InvalidTransition(
            f"submission {submission.id} is {submission.status}; only a finished submission "
            "can be run again"
        )
    previous = submission.status
    submission.status = Status.UPLOADED.value
    submission.updated_at = utcnow()
    submission.failed_stage = None
    submission.error = None
    submission.error_log_key = None
    session.add(submission)
    return record_event(
        session,
        submission,
        f"status.{Status.UPLOADED.value}",
        service=service,
        message=message,
        payload={**(payload or {}), "rerun": True, "previous_status": previous},
        status=Status.UPLOADED.value,
    )


def move_run(run: Run, to: RunStatus | str, *, error: str | None = None) -> None:
    """Move one run to `to` (checked): running starts a new attempt, an end is timed."""
    to_s = RunStatus(to)
    if not can_move_run(run.status, to_s):
        raise InvalidTransition(
            f"run {run.name} of submission {run.submission_id} is {run.status}; "
            f"it cannot become {to_s.value}"
        )
    run.status = to_s.value
    if to_s is RunStatus.RUNNING:
        run.attempt += 1
        run.started_at = utcnow()
        run.finished_at = None
    else:
        run.finished_at = utcnow()
    run.error = scrub_text(error) if error else error


def _move(
    session: AsyncSession,
    submission: Submission,
    to_s: Status,
    *,
    service: str,
    message: str = "",
    payload: dict[str, Any] | None = None,
    stage: str | None = None,
    error: str | None = None,
    log_key: str | None = None,
    parent: Envelope | None = None,
) -> Event:
    if not can_transition(submission.status, to_s):
        raise InvalidTransition(
            f"submission {submission.id} is {submission.status}; it cannot become {to_s.value}"
        )
    submission.status = to_s.value
    submission.updated_at = utcnow()
    if to_s is Status.FAILED:
        submission.failed_stage = stage
        submission.error = scrub_text(error or message)
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
