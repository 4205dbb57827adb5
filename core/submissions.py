"""Submissions: create (row + first event + build message in one transaction), read, cancel."""

from __future__ import annotations

import re
from datetime import UTC, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from core.envelope import Envelope, Visit
from core.errors import Forbidden, NotFound, RateLimited, WeighbridgeError
from core.kinds import policy_of
from core.messages import BuildMessage, OwnerRef, SubmissionRef, TaskRef, payload_of
from core.models import Event, Run, Score, Submission, Task, User, table_of, utcnow
from core.outbox import Outbox
from core.queue import BUILD_QUEUE
from core.scrub import scrub_text, storage_paths
from core.states import TERMINAL, Status, cancel, record_event
from core.storage import Storage, StoredObject
from core.tasks import task_config

ID = re.compile(r"^[0-9a-f]{32}$")
NOT_COUNTED = (Status.FAILED.value, Status.CANCELLED.value)


def check_id(submission_id: str) -> str:
    if not ID.match(submission_id):
        raise WeighbridgeError(
            f"{submission_id!r} is not a submission id (32 hexadecimal characters)",
            status=422,
            code="invalid_id",
            field="id",
        )
    return submission_id


async def lock_submissions_of(session: AsyncSession, user: User) -> None:
    """Hold the user's row lock until the transaction ends, so that their submissions are
    counted and inserted one at a time (the per-window limit holds under concurrency).

    An UPDATE is the one lock every backend takes the same way: a row lock on Postgres and
    MariaDB, the database's write lock on SQLite (taken before the count, so the count reads
    what the previous holder committed). Make it the transaction's first statement: under
    REPEATABLE READ a snapshot taken by an earlier read would hide the previous holder's row.
    """
    users = table_of(User)
    await session.execute(sa.update(users).where(users.c.id == user.id).values(id=users.c.id))


def human_duration(seconds: float) -> str:
    """`2 d 3 h 4 min`, `23 h 58 min`, `5 min`, or `less than a minute`."""
    minutes = int(seconds // 60)
    if minutes < 1:
        return "less than a minute"
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    parts = [f"{n} {unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "min")) if n]
    return " ".join(parts)


async def check_submission_limit(session: AsyncSession, user: User, task: Task) -> None:
    """Refuse with 429 when the user has used the task's submissions for the window.

    Failed and cancelled submissions do not count (users rightly complain when they do).
    Holds under concurrency only after `lock_submissions_of` in the same transaction.
    """
    limits = task_config(task).limits
    now = utcnow()
    since = now - timedelta(hours=limits.window_hours)
    counted = list(
        await session.scalars(
            sa.select(col(Submission.created_at))
            .where(
                col(Submission.user_id) == user.id,
                col(Submission.task_id) == task.id,
                col(Submission.created_at) >= since,
                col(Submission.status).not_in(NOT_COUNTED),
            )
            .order_by(col(Submission.created_at))
        )
    )
    if len(counted) >= limits.submissions_per_window:
        # The slot that frees first is the oldest of those that fill the window.
        opens = counted[len(counted) - limits.submissions_per_window] + timedelta(
            hours=limits.window_hours
        )
        wait = max(0.0, (opens - now).total_seconds())
        retry_after = max(1, int(wait) + 1)
        raise RateLimited(
            f"you have used {len(counted)} of {limits.submissions_per_window} submissions "
            f"to {task.slug!r} in {limits.window_hours:g} hours; the next slot opens in "
            f"{human_duration(wait)}, at {opens.astimezone(UTC):%Y-%m-%d %H:%M} UTC "
            "(failed and cancelled ones do not count)",
            field="task",
            headers={"Retry-After": str(retry_after)},
            extra={
                "limit": limits.submissions_per_window,
                "window_hours": limits.window_hours,
                "next_slot_at": opens.isoformat(),
                "retry_after_seconds": retry_after,
            },
        )


def build_message(submission: Submission, task: Task | None, owner: User) -> Envelope:
    """The fat `build` message: everything the builder needs, no lookups required."""
    message = BuildMessage(
        submission=SubmissionRef(
            id=submission.id,
            kind=submission.kind,
            name=submission.name,
            upload_key=submission.upload_key,
            upload_filename=submission.upload_filename,
            upload_sha256=submission.upload_sha256,
            upload_bytes=submission.upload_bytes,
            meta=submission.meta,
        ),
        task=TaskRef(slug=task.slug, config=task.config) if task else None,
        owner=OwnerRef(id=owner.id, name=owner.name, email=owner.email),
    )
    return Envelope(
        action_id=submission.id,
        parent_action_id=submission.parent_id,
        client_id=submission.client_id,
        type=BuildMessage.TYPE,
        visited=[Visit(service="api")],
        payload=payload_of(message),
    )


async def create_submission(
    session: AsyncSession,
    outbox: Outbox,
    *,
    submission_id: str,
    user: User,
    task: Task | None,
    kind: str,
    name: str,
    private: bool,
    upload: StoredObject,
    filename: str,
    client_id: str | None = None,
    parent_id: str | None = None,
    meta: dict[str, Any] | None = None,
) -> Submission:
    """Row, first event and the build message, all in the caller's transaction (outbox).

    The user's submissions are locked first (see `lock_submissions_of`), so call it before
    anything else reads in a fresh transaction.
    """
    policy_of(kind)  # refuses a kind this service does not have, naming the ones it has
    if task is not None:
        await lock_submissions_of(session, user)
        await check_submission_limit(session, user, task)
    submission = Submission(
        id=submission_id,
        kind=kind,
        task_id=task.id if task else None,
        user_id=user.id,  # type: ignore[arg-type]
        name=name,
        private=private,
        status=Status.UPLOADED.value,
        upload_key=upload.key,
        upload_filename=filename,
        upload_bytes=upload.size,
        upload_sha256=upload.sha256,
        client_id=client_id,
        parent_id=parent_id,
        meta=meta or {},
    )
    session.add(submission)
    await session.flush()
    record_event(
        session,
        submission,
        "status.uploaded",
        service="api",
        status=Status.UPLOADED.value,
        message=f"received {filename} ({upload.size} bytes, sha256 {upload.sha256[:12]}…)",
        payload={"upload_key": upload.key, "bytes": upload.size, "sha256": upload.sha256},
    )
    await outbox.stage(session, BUILD_QUEUE, build_message(submission, task, user))
    return submission


def can_view(submission: Submission, viewer: User | None) -> bool:
    if not submission.private:
        return True
    return viewer is not None and (viewer.is_admin or viewer.id == submission.user_id)


async def get_submission(
    session: AsyncSession, submission_id: str, *, viewer: User | None
) -> Submission:
    """The submission, or 404 when it does not exist or is private to someone else."""
    check_id(submission_id)
    submission = await session.get(Submission, submission_id)
    if submission is None or not can_view(submission, viewer):
        raise NotFound(f"no submission {submission_id}", field="id")
    return submission


async def list_submissions(
    session: AsyncSession,
    *,
    viewer: User,
    task: Task | None = None,
    mine: bool = True,
    status: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[Submission]:
    query = sa.select(Submission).order_by(col(Submission.created_at).desc(), col(Submission.id))
    if mine:
        query = query.where(col(Submission.user_id) == viewer.id)
    elif not viewer.is_admin:
        query = query.where(
            sa.or_(col(Submission.private) == sa.false(), col(Submission.user_id) == viewer.id)
        )
    if task is not None:
        query = query.where(col(Submission.task_id) == task.id)
    if status:
        query = query.where(col(Submission.status) == status)
    return list(await session.scalars(query.limit(limit).offset(offset)))


async def list_events(session: AsyncSession, submission_id: str) -> list[Event]:
    return list(
        await session.scalars(
            sa.select(Event)
            .where(col(Event.submission_id) == submission_id)
            .order_by(col(Event.id))
        )
    )


async def list_runs(session: AsyncSession, submission_id: str) -> list[Run]:
    return list(
        await session.scalars(
            sa.select(Run).where(col(Run.submission_id) == submission_id).order_by(col(Run.id))
        )
    )


async def list_children(session: AsyncSession, parent: Submission) -> list[Submission]:
    """A family's or a schedule's runs, oldest first (private ones follow their parent)."""
    return list(
        await session.scalars(
            sa.select(Submission)
            .where(col(Submission.parent_id) == parent.id)
            .order_by(col(Submission.created_at), col(Submission.id))
        )
    )


# The dataset name of a benchmark's summary over every value of every run.
ALL_RUNS = "all"


async def family_rows(session: AsyncSession, parent: Submission) -> list[dict[str, Any]]:
    """One row per child: its id, status, range values and each metric over all its runs."""
    children = await list_children(session, parent)
    if not children:
        return []
    values: dict[str, dict[str, float]] = {c.id: {} for c in children}
    for score in await session.scalars(
        sa.select(Score).where(
            col(Score.submission_id).in_(list(values)), col(Score.dataset) == ALL_RUNS
        )
    ):
        values[score.submission_id][score.metric] = score.value
    return [
        {
            "id": c.id,
            "name": c.name,
            "status": c.status,
            "values": c.meta.get("values", {}),
            "tick": c.meta.get("tick"),
            "created_at": c.created_at.isoformat(),
            "metrics": values[c.id],
        }
        for c in children
    ]


async def list_scores(session: AsyncSession, submission_id: str) -> list[Score]:
    return list(
        await session.scalars(
            sa.select(Score)
            .where(col(Score.submission_id) == submission_id)
            .order_by(col(Score.dataset), col(Score.id))
        )
    )


async def cancel_submission(session: AsyncSession, submission_id: str, *, user: User) -> Submission:
    """Cancel the user's own unfinished submission; workers see the state and stop."""
    submission = await get_submission(session, submission_id, viewer=user)
    if submission.user_id != user.id and not user.is_admin:
        raise Forbidden("you can cancel only your own submissions", field="id")
    if submission.meta.get("role") in PARENT_ROLES:
        await _cancel_family(session, submission, user=user)
        return submission
    if Status(submission.status) in TERMINAL:
        raise WeighbridgeError(
            f"submission {submission.id} is already {submission.status}; nothing to cancel",
            status=409,
            code="conflict",
            field="id",
        )
    await cancel(session, submission, service="api", message=f"cancelled by {user.name}")
    return submission


# A parent stands for its children: a range family, a schedule, or a schedule stopped.
PARENT_ROLES = ("family", "schedule", "stopped-schedule")


async def _cancel_family(session: AsyncSession, parent: Submission, *, user: User) -> None:
    """Cancel a family's or a schedule's unfinished children; a schedule also stops (its row
    goes, and its role says so, so that no scheduler takes it on again)."""
    from core.models import Schedule

    children = [
        c
        for c in await session.scalars(
            sa.select(Submission).where(col(Submission.parent_id) == parent.id).with_for_update()
        )
        if Status(c.status) not in TERMINAL
    ]
    for child in children:
        await cancel(
            session, child, service="api", message=f"cancelled by {user.name} (with its parent)"
        )
    stopped = parent.meta.get("role") == "schedule"
    if stopped:
        await session.execute(sa.delete(Schedule).where(col(Schedule.submission_id) == parent.id))
        parent.meta = {**parent.meta, "role": "stopped-schedule"}
    if not children and not stopped:
        raise WeighbridgeError(
            f"submission {parent.id} has no unfinished runs and no schedule; nothing to cancel",
            status=409,
            code="conflict",
            field="id",
        )
    record_event(
        session,
        parent,
        "benchmark.cancelled",
        service="api",
        status=parent.status,
        message=(
            f"cancelled by {user.name}: {len(children)} unfinished run(s) cancelled"
            + ("; the schedule is stopped" if stopped else "")
        ),
        payload={"children": [c.id for c in children], "schedule_stopped": stopped},
    )


async def read_logs(storage: Storage, submission_id: str) -> str:
    """The build log then each run's log, each under a heading, as one text."""
    prefix = f"submissions/{submission_id}"
    keys = [k for k in await storage.list(prefix) if k.endswith("/log")]
    keys.sort(key=lambda k: (not k.startswith(f"{prefix}/build/"), k))
    parts = []
    for key in keys:
        section = key[len(prefix) + 1 : -len("/log")]
        body = (await storage.read_bytes(key)).decode("utf-8", errors="replace")
        parts.append(f"== {section} ==\n{body}" + ("" if body.endswith("\n") else "\n"))
    # The logs leave for a user here: no server paths in them (core.scrub).
    return scrub_text("".join(parts), paths=storage_paths(storage))


async def purge_submission(
    session: AsyncSession, storage: Storage, submission_id: str, *, user: User
) -> dict[str, Any]:
    """Delete a submission of the user's, its children, their rows and their stored files.

    An unfinished one is cancelled first (in the same transaction), so a worker holding its
    message finds it gone and acknowledges without working; nothing of it is left behind.
    """
    from core.models import Notification

    submission = await get_submission(session, submission_id, viewer=user)
    if submission.user_id != user.id and not user.is_admin:
        raise Forbidden("you can purge only your own submissions", field="id")
    family = [
        submission.id,
        *await session.scalars(
            sa.select(col(Submission.id)).where(col(Submission.parent_id) == submission.id)
        ),
    ]
    from core.boards import mark_leaderboard_stale
    from core.models import (
        BenchmarkAlert,
        BenchmarkPoint,
        BenchmarkRun,
        LeaderboardEntry,
        Schedule,
        ScheduleTick,
    )

    # A scheduled parent's schedule and ticks go with it, so the scheduler stops; so do the
    # family's places in the benchmark histories.
    for table in (
        Score,
        Run,
        Event,
        Notification,
        LeaderboardEntry,
        BenchmarkPoint,
        BenchmarkAlert,
        BenchmarkRun,
        ScheduleTick,
        Schedule,
    ):
        await session.execute(sa.delete(table).where(col(table.submission_id).in_(family)))
    if submission.task_id is not None:
        await mark_leaderboard_stale(session, submission.task_id)
    await session.execute(sa.delete(Submission).where(col(Submission.id).in_(family)))
    files = 0
    for sid in family:
        files += await storage.delete_prefix(f"submissions/{sid}")
    return {"id": submission.id, "purged": family, "files_deleted": files}


# A live sample older than this is a run whose evaluator stopped telling: not exported.
LIVE_FRESH_SECONDS = 30.0


async def live_runs(session: AsyncSession, *, now: float) -> list[dict[str, Any]]:
    """Benchmark and inspection runs in progress with their newest CPU/memory sample (the
    evaluator stores it on the run's row every few seconds), for /metrics."""
    rows = await session.execute(
        sa.select(Run, col(Submission.kind))
        .join(Submission, col(Submission.id) == col(Run.submission_id))
        .where(col(Run.status) == "running", col(Submission.kind) != "model")
    )
    live = []
    for run, kind in rows:
        sample = (run.summary or {}).get("live")
        if not isinstance(sample, dict) or now - float(sample.get("at", 0)) > LIVE_FRESH_SECONDS:
            continue
        live.append({"submission_id": run.submission_id, "kind": kind, "run": run.name, **sample})
    return live


async def count_submissions(session: AsyncSession) -> list[tuple[str, str, int]]:
    """(kind, status, how many) for every kind and status present (Prometheus)."""
    rows = await session.execute(
        sa.select(col(Submission.kind), col(Submission.status), sa.func.count()).group_by(
            col(Submission.kind), col(Submission.status)
        )
    )
    return [(kind, status, int(count)) for kind, status, count in rows]
