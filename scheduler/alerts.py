"""The owner's email about a regression alert, queued with the alert in the same transaction.

Only a fired alert pages: a cleared one is recorded (its row, the run's timeline, the gauge
back at 0) but sends no email, so a series that recovers costs nobody a second message.
One email per alert row, keyed by a deterministic message id like every other email.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from core.models import BenchmarkAlert, Notification, Submission, User
from core.notifications import add_notification, render_email
from metrics.regressions import AlertRule

if TYPE_CHECKING:
    from core.context import Services

METHODS = {
    "both": "a lookback z-score confirmed by a change point over the history",
    "zscore": "a lookback z-score against the previous runs",
    "changepoint": "a change point (E-divisive means) in the history",
}


def alert_message_id(alert: BenchmarkAlert) -> str:
    """The email's id: one per (series, metric, rule, kind, detecting run)."""
    seed = (
        f"alert:{alert.series_id}:{alert.metric}:{alert.rule_key}:{alert.kind}:{alert.detected_id}"
    )
    return hashlib.sha256(seed.encode()).hexdigest()[:32]


def _number(value: float, units: str) -> str:
    return f"{value:.6g} {units}".rstrip()


async def queue_alert_email(
    session: AsyncSession,
    services: Services,
    submission: Submission,
    alert: BenchmarkAlert,
    *,
    rule: AlertRule,
    benchmark: str,
    where: str,
    units: str = "",
) -> Notification | None:
    """Queue the email telling the run's owner that `alert` fired (the caller's transaction);
    the row already queued when called again, None for a cleared alert."""
    if alert.kind != "fired":
        return None
    message_id = alert_message_id(alert)
    existing = await session.scalar(
        sa.select(Notification).where(col(Notification.message_id) == message_id)
    )
    if existing is not None:
        return existing
    owner = await session.get(User, submission.user_id)
    if owner is None:
        return None
    first = await session.get(Submission, alert.submission_id)
    public_url = services.settings.public_url.rstrip("/")
    relative = f"{alert.relative_change:+.1%}" if alert.relative_change is not None else ""
    subject = (
        f"[Weighbridge] regression: {alert.metric} of {benchmark} "
        f"{relative or f'{alert.change:+g}'}".rstrip()
    )
    context = {
        "subject": subject,
        "user_name": owner.name,
        "benchmark": benchmark,
        "where": where,
        "metric": alert.metric,
        "worse": rule.worse,
        "run_id": alert.submission_id,
        "run_name": first.name if first is not None else submission.name,
        "run_at": first.meta.get("tick") if first is not None else None,
        "detected_id": alert.detected_id,
        "baseline": _number(alert.baseline, units),
        "value": _number(alert.value, units),
        "change": f"{alert.change:+.6g} {units}".rstrip(),
        "relative": relative,
        "method_text": METHODS.get(alert.method, alert.method),
        "link": f"{public_url}/submissions/{alert.submission_id}",
        "public_url": public_url,
        "submission_id": submission.id,
    }
    text, html = render_email("alert", context)
    return await add_notification(
        session,
        message_id=message_id,
        submission=submission,
        owner=owner,
        subject=subject,
        text=text,
        html=html,
    )
