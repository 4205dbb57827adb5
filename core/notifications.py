"""The email outbox: rows queued with the state they announce, delivered by a mailer after.

`queue_submission_email` renders the done/failed email (plain text + HTML, Jinja2 templates
in core/templates/email/) into a `notifications` row in the caller's transaction; one row per
(submission, status), keyed by a deterministic message id. `deliver_pending` leases pending
rows, sends them through a `Mailer` (core/mailers.py: `file://` folder, `smtp://`), marks them sent
only after the send; failures are retried with backoff, then marked failed with the error.
A crash between send and mark resends the same Message-ID, so the copy is recognisable.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from core.errors import WeighbridgeError
from core.kinds import policy_of
from core.mailers import (
    FileMailer,
    Mailer,
    PermanentMailError,
    SmtpMailer,
    build_email,
    mailer_from_url,
)
from core.models import Notification, Submission, Task, User, table_of, utcnow
from core.scrub import scrub_text
from core.settings import Settings
from core.states import Status
from core.storage import Storage
from core.tasks import task_config

if TYPE_CHECKING:
    import jinja2

    from core.context import Services

__all__ = [
    "FileMailer",
    "Mailer",
    "SmtpMailer",
    "build_email",
    "deliver_pending",
    "mailer_from_url",
    "queue_submission_email",
    "run_mailer",
]

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates" / "email"
LOG_TAIL_LINES = 40
LOG_TAIL_BYTES = 64 * 1024
# How long a done email waits for the stored board to rank it before it goes out saying
# "rank pending" (the board is rebuilt within a second or two of the commit).
RANK_WAIT_SECONDS = 30.0
EMAIL_STATUSES = (Status.DONE.value, Status.FAILED.value)


# ---------------------------------------------------------------------------------------------
# Rendering and queueing


def notification_message_id(submission_id: str, status: str, attempt: int = 1) -> str:
    """The deterministic id (and Message-ID seed) of a submission's email for `status`; a
    submission run again (core.reruns) has one email per attempt."""
    seed = f"{submission_id}:{status}" + (f":{attempt}" if attempt > 1 else "")
    return hashlib.sha256(seed.encode()).hexdigest()[:32]


def attempt_of(submission: Submission) -> int:
    return int((submission.meta or {}).get("attempt") or 1)


@functools.cache
def _templates() -> jinja2.Environment:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "html.j2")),
        undefined=jinja2.StrictUndefined,
        trim_blocks=False,
        keep_trailing_newline=True,
    )


def render_email(template: str, context: dict[str, Any]) -> tuple[str, str]:
    """(plain text, HTML) of `template` (done | failed) with `context`."""
    env = _templates()
    text = env.get_template(f"{template}.txt.j2").render(context)
    html = env.get_template(f"{template}.html.j2").render(context)
    # An email may quote a log or an error: no server paths leave in it.
    return scrub_text(re.sub(r"\n{3,}", "\n\n", text)), scrub_text(html)


def _format_value(metric: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    try:
        from metrics.registry import get

        spec = get(metric)
        scale, unit = spec.scale or 1.0, spec.unit or ""
    except Exception:  # an unregistered metric (a task's own) is shown plainly
        scale, unit = 1.0, ""
    shown = value * scale
    if scale != 1.0:
        text = f"{shown:.2f}"
    elif abs(shown) >= 100:
        text = f"{shown:,.1f}"
    else:
        text = f"{shown:.4g}"
    return f"{text} {unit}".rstrip() if unit and unit != "%" else f"{text}{unit}"


def _metric_label(metric: str) -> str:
    try:
        from metrics.registry import get

        return get(metric).pretty_name or metric
    except Exception:
        return metric


async def read_log_tail(
    storage: Storage, key: str | None, *, lines: int = LOG_TAIL_LINES
) -> str | None:
    """The last `lines` lines of a stored log (reading only its last 64 KiB), or None."""
    if not key:
        return None
    try:
        size = await storage.size(key)
        chunks = [
            chunk async for chunk in storage.read_stream(key, offset=max(0, size - LOG_TAIL_BYTES))
        ]
    except (FileNotFoundError, OSError, WeighbridgeError):
        return None
    text = b"".join(chunks).decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def failure_advice(
    stage: str,
    *,
    task: str | None,
    fields: dict[str, str] | None,
    python_version: str = "3.11",
    kind: str = "model",
) -> str:
    """What a person can do about a failure at `stage` of a submission of `kind`."""
    if kind != "model":
        return _run_advice(stage, kind)
    test = f"`weighbridge test DIR --task {task}`" if task else "`weighbridge test DIR --task TASK`"
    answers = (
        ", ".join(f"{name} ({kind})" for name, kind in fields.items()) if fields else "the fields"
    )
    if stage in ("upload", "validate", "validation"):
        return (
            "The bundle was refused before it was built. Check that handler.py is at the top "
            "of the folder or archive, that the archive is a .tar.gz, .zip or .mar, and upload "
            "again."
        )
    if stage == "build":
        return (
            "The model could not be built. Check that handler.py imports cleanly, that every "
            "package it needs is in requirements.txt (with versions that install on Python "
            f"{python_version}), and that the weights file is in the folder. Reproduce it "
            f"locally with {test}, fix it, and upload again."
        )
    if stage.startswith("evaluate"):
        dataset = stage.partition(":")[2]
        where = f" on dataset {dataset}" if dataset else ""
        return (
            f"Your handler failed or answered wrongly{where}. It must return one answer per "
            f"input, each holding {answers}, within the time and memory limits. Run {test} on "
            "the public examples, fix what it reports, and upload again."
        )
    return (
        f"Run {test} to check the model locally, then upload again. If it passes locally, "
        "reply with the submission id so an administrator can look at the log."
    )


def _run_advice(stage: str, kind: str) -> str:
    """A benchmark's or an inspection's failure: its command, its descriptor or its build."""
    if stage == "run" or stage.startswith("run:"):
        return (
            f"The {kind}'s command failed in the run(s) named above (a non-zero exit code, its "
            "time limit `run.timeout`, or the memory limit). Read the end of the log below, "
            "run the same command on your machine, fix it, and submit again; the runs that "
            "succeeded kept their results."
        )
    if stage == "build":
        return (
            f"The {kind}'s environment could not be built. Check its Python and native "
            "packages (each must install on this machine's Python) and submit again."
        )
    return (
        f"Check the {kind}'s descriptor (ml.benchmark_code, data.sources) against the reason "
        "above and submit again. If it looks right, reply with the submission id so an "
        "administrator can look at the log."
    )


async def _done_context(
    session: AsyncSession, submission: Submission, task: Task | None, owner: User
) -> dict[str, Any]:
    from core.boards import board_place
    from core.leaderboard import scores_hidden
    from core.submissions import list_scores

    scores = await list_scores(session, submission.id)
    config = task_config(task) if task is not None else None
    order = [d.name for d in config.datasets] if config else []
    metric_order = [m.name for m in config.metrics] if config else []
    grouped: dict[str, list[Any]] = {}
    for score in scores:
        grouped.setdefault(score.dataset, []).append(score)
    datasets = []
    for name in sorted(grouped, key=lambda d: (order.index(d) if d in order else len(order), d)):
        rows = sorted(
            grouped[name],
            key=lambda s: (
                metric_order.index(s.metric) if s.metric in metric_order else len(metric_order),
                s.metric,
            ),
        )
        datasets.append(
            {
                "name": name,
                "n_examples": next((s.n_examples for s in rows if s.n_examples), None),
                "metrics": [
                    {
                        "name": s.metric,
                        "label": _metric_label(s.metric),
                        "value": _format_value(s.metric, s.value),
                        "raw": s.value,
                        "ci": (
                            f"[{_format_value(s.metric, s.ci_low)}, "
                            f"{_format_value(s.metric, s.ci_high)}]"
                            if s.ci_low is not None and s.ci_high is not None
                            else None
                        ),
                    }
                    for s in rows
                ],
            }
        )
    rank = None
    ranked_reason = None
    rank_pending = False
    if task is not None and policy_of(submission.kind).ranked:
        # The stored board, rebuilt after this submission's transaction commits: until then
        # the email says the rank is pending (and waits a little for it, see RANK_WAIT_SECONDS).
        place = await board_place(session, task, submission.id, viewer=owner)
        rank, ranked_reason, rank_pending = place.rank, place.reason, place.pending
    confidence = f"{round(config.eval.confidence * 100)}%" if config else "95%"
    # A blind phase (a rank-only task): the email tells the rank, never a score.
    hidden = scores_hidden(task, owner)
    return {
        "datasets": [] if hidden else datasets,
        "scores_hidden": hidden,
        "rank": rank,
        "ranked_reason": ranked_reason,
        "rank_pending": rank_pending,
        "confidence": confidence,
    }


async def queue_submission_email(
    session: AsyncSession, storage: Storage, submission: Submission, *, settings: Settings
) -> Notification:
    """Queue the owner's email about a done or failed submission (in the caller's transaction).

    One row per (submission, status): calling it again returns the row already queued. A done
    email whose rank is pending (the board is rebuilt after this transaction) is held for up
    to RANK_WAIT_SECONDS; the rebuild renders it again with the rank and releases it.
    """
    status = submission.status
    if status not in EMAIL_STATUSES:
        raise ValueError(f"no email for a submission that is {status!r} (only done or failed)")
    message_id = notification_message_id(submission.id, status, attempt_of(submission))
    existing = await session.scalar(
        sa.select(Notification).where(col(Notification.message_id) == message_id)
    )
    if existing is not None:
        return existing

    owner, subject, text, html, pending = await _render_submission_email(
        session, storage, submission, settings=settings
    )
    return await add_notification(
        session,
        message_id=message_id,
        submission=submission,
        owner=owner,
        subject=subject,
        text=text,
        html=html,
        available_at=time.time() + RANK_WAIT_SECONDS if pending else 0.0,
    )


async def add_notification(
    session: AsyncSession,
    *,
    message_id: str,
    submission: Submission,
    owner: User,
    subject: str,
    text: str,
    html: str,
    available_at: float = 0.0,
) -> Notification:
    """A rendered email to `owner` about `submission`, queued for the mailer in the caller's
    transaction (every email Weighbridge sends is one of these rows)."""
    notification = Notification(
        message_id=message_id,
        submission_id=submission.id,
        user_id=owner.id,
        to_address=owner.email,
        subject=subject[:255],
        body_text=text,
        body_html=html,
        status="pending",
        available_at=available_at,
    )
    session.add(notification)
    await session.flush()
    return notification


async def refresh_rank_pending_emails(session: AsyncSession, services: Services, task: Task) -> int:
    """Render again the task's done emails not yet picked up by a mailer, now that its board is
    stored, and release them; returns how many were refreshed (the caller's transaction)."""
    table = table_of(Notification)
    waiting = (
        await session.execute(
            sa.select(table.c.id, table.c.message_id, col(Submission.id))
            .join(Submission, col(Submission.id) == table.c.submission_id)
            .where(
                col(Submission.task_id) == task.id,
                col(Submission.status) == Status.DONE.value,
                table.c.status == "pending",
                table.c.attempts == 0,
                table.c.available_at > 0,
            )
        )
    ).all()
    refreshed = 0
    for row_id, message_id, submission_id in waiting:
        submission = await session.get(Submission, submission_id)
        if submission is None:
            continue
        if message_id != notification_message_id(
            submission_id, Status.DONE.value, attempt_of(submission)
        ):
            continue
        _, subject, text, html, pending = await _render_submission_email(
            session, services.storage, submission, settings=services.settings
        )
        if pending:
            continue
        # Only while no mailer holds it (attempts 0): a claimed row is sent as it was.
        result = await session.execute(
            sa.update(table)
            .where(table.c.id == row_id, table.c.status == "pending", table.c.attempts == 0)
            .values(subject=subject[:255], body_text=text, body_html=html, available_at=0.0)
        )
        refreshed += cast(CursorResult[Any], result).rowcount
    return refreshed


async def _render_submission_email(
    session: AsyncSession, storage: Storage, submission: Submission, *, settings: Settings
) -> tuple[User, str, str, str, bool]:
    """(owner, subject, text, html, rank pending) of the email about the submission's status."""
    status = submission.status
    owner = await session.get(User, submission.user_id)
    if owner is None:
        raise ValueError(f"submission {submission.id} has no owner to email")
    task = await session.get(Task, submission.task_id) if submission.task_id else None
    config = task_config(task) if task is not None else None
    public_url = settings.public_url.rstrip("/")
    context: dict[str, Any] = {
        "user_name": owner.name,
        "kind": submission.kind,
        "model_name": submission.name,
        # A benchmark's name is its descriptor's task_name (in its meta), not a task's.
        "task_name": (
            task.name
            if task is not None
            else str(submission.meta.get("benchmark") or submission.kind)
        ),
        # What a score's count counts: a model's examples, a benchmark's measured values.
        "counted": "examples" if submission.kind == "model" else "values",
        "finished": "has been evaluated" if submission.kind == "model" else "has finished",
        "task_slug": task.slug if task is not None else None,
        "submission_id": submission.id,
        "private": submission.private,
        "public_url": public_url,
        "link": f"{public_url}/submissions/{submission.id}",
        "leaderboard_link": f"{public_url}/tasks/{task.slug}" if task is not None else None,
    }
    if status == Status.DONE.value:
        context.update(await _done_context(session, submission, task, owner))
        rank = context["rank"]
        ranked = f" (rank {rank[0]} of {rank[1]})" if rank else ""
        subject = f"[Weighbridge] {submission.name} on {context['task_name']}: done{ranked}"
    else:
        stage = submission.failed_stage or "unknown"
        tail = await read_log_tail(storage, submission.error_log_key)
        context.update(
            {
                "stage": stage,
                "reason": submission.error or "no reason was recorded",
                "advice": failure_advice(
                    stage,
                    task=task.slug if task is not None else None,
                    fields=config.output_fields if config else None,
                    python_version=config.build.python_version if config else "3.11",
                    kind=submission.kind,
                ),
                "log_key": submission.error_log_key,
                "log_tail": tail,
                "log_lines": len(tail.splitlines()) if tail else 0,
            }
        )
        subject = f"[Weighbridge] {submission.name} on {context['task_name']} failed at {stage}"
    context["subject"] = subject
    text, html = render_email(status, context)
    return owner, subject, text, html, bool(context.get("rank_pending"))


# ---------------------------------------------------------------------------------------------
# Delivery


async def _claim(services: Services, *, limit: int, lease_seconds: float) -> list[tuple[int, int]]:
    """Lease up to `limit` due pending rows; returns (id, attempt number) of those won."""
    table = table_of(Notification)
    now = time.time()
    claimed = []
    async with services.db.session() as session:
        due = (
            await session.execute(
                sa.select(table.c.id, table.c.attempts)
                .where(table.c.status == "pending", table.c.available_at <= now)
                .order_by(table.c.id)
                .limit(limit)
            )
        ).all()
    for row_id, attempts in due:
        # Compare-and-set on the attempt count: of two mailers, only one wins each row.
        async with services.db.session() as session:
            result = await session.execute(
                sa.update(table)
                .where(
                    table.c.id == row_id,
                    table.c.status == "pending",
                    table.c.attempts == attempts,
                    table.c.available_at <= now,
                )
                .values(attempts=attempts + 1, available_at=now + lease_seconds)
            )
        if cast(CursorResult[Any], result).rowcount == 1:  # an UPDATE's result
            claimed.append((row_id, attempts + 1))
    return claimed


async def _finish(services: Services, row_id: int, attempt: int, **values: Any) -> None:
    table = table_of(Notification)
    async with services.db.session() as session:
        await session.execute(
            sa.update(table)
            .where(table.c.id == row_id, table.c.attempts == attempt, table.c.status == "pending")
            .values(**values)
        )


async def deliver_pending(
    services: Services,
    mailer: Mailer,
    *,
    limit: int = 50,
    max_attempts: int | None = None,
    backoff_seconds: float | None = None,
    lease_seconds: float | None = None,
) -> int:
    """Send the due pending emails; returns how many were sent.

    A row is leased (invisible to other mailers) while it is sent, marked `sent` only after
    the mailer returns, retried with exponential backoff on an error, and marked `failed`
    with `last_error` after `max_attempts` (or at once when the server refuses it for good).
    """
    settings = services.settings
    max_attempts = max_attempts or max(1, settings.max_attempts)
    backoff = settings.retry_backoff_seconds if backoff_seconds is None else backoff_seconds
    lease = settings.lease_seconds if lease_seconds is None else lease_seconds
    sent = 0
    for row_id, attempt in await _claim(services, limit=limit, lease_seconds=lease):
        async with services.db.session() as session:
            notification = await session.get(Notification, row_id)
        if notification is None:
            continue
        try:
            await mailer.send(build_email(notification, sender=settings.email_from))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[-4000:]
            permanent = isinstance(exc, PermanentMailError)
            if permanent or attempt >= max_attempts:
                log.error("email %s failed for good: %s", notification.message_id, error)
                await _finish(services, row_id, attempt, status="failed", last_error=error)
            else:
                log.warning(
                    "email %s: attempt %d failed: %s", notification.message_id, attempt, error
                )
                delay = backoff * (2 ** (attempt - 1))
                await _finish(
                    services, row_id, attempt, available_at=time.time() + delay, last_error=error
                )
            continue
        await _finish(services, row_id, attempt, status="sent", sent_at=utcnow(), last_error=None)
        sent += 1
    return sent


async def run_mailer(
    services: Services,
    stop: asyncio.Event,
    *,
    mailer: Mailer | None = None,
    poll_seconds: float = 1.0,
) -> None:
    """Deliver pending emails until `stop` is set; an error is logged and the loop goes on."""
    own = mailer is None
    settings = services.settings
    active = (
        mailer
        if mailer is not None
        else mailer_from_url(
            settings.email_url, endpoint_url=settings.aws_endpoint_url, region=settings.aws_region
        )
    )
    try:
        while not stop.is_set():
            sent = 0
            try:
                sent = await deliver_pending(services, active)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("mailer: delivery round failed; trying again")
            if sent:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=poll_seconds)
    finally:
        if own:
            await active.close()
