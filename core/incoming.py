"""Uploads in flight: the temporary key a bundle arrives at, its move to the public key with
the submission's creation, and the sweep that removes what failed uploads and crashes leave.

Order of writes: the bundle streams to `incoming/<id>/<file>`; one transaction locks the
user's submissions, checks the limit, inserts the row, its event and the build message; the
bundle moves to `submissions/<id>/upload/<file>`; the transaction commits. A refused or broken
upload is removed at once (`discard_upload`); a process killed in between leaves either a
temporary or a public bundle without a row, and the sweeper removes both after a day. No
order leaves a committed submission without its bundle.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from core.db import Database
from core.models import Submission, Task, User, utcnow
from core.outbox import Outbox
from core.storage import ObjectInfo, Storage, StoredObject
from core.submissions import create_submission
from core.worker import run_every

if TYPE_CHECKING:
    from core.context import Services

log = logging.getLogger(__name__)

INCOMING = "incoming"
SUBMISSIONS = "submissions"
# Older than this, a temporary is no upload in progress (a stream writing it keeps it young),
# and a bundle without a submission is no submission being created.
SWEEP_AGE = timedelta(days=1)
SWEEP_INTERVAL_SECONDS = 3600.0


def incoming_key(submission_id: str, filename: str) -> str:
    return f"{INCOMING}/{submission_id}/{filename}"


def upload_key(submission_id: str, filename: str) -> str:
    """The bundle's public key (a storage-layout contract)."""
    return f"{SUBMISSIONS}/{submission_id}/upload/{filename}"


async def accept_upload(
    session: AsyncSession,
    storage: Storage,
    outbox: Outbox,
    *,
    upload: StoredObject,
    submission_id: str,
    user: User,
    task: Task,
    kind: str,
    name: str,
    private: bool,
    filename: str,
    client_id: str | None = None,
) -> Submission:
    """Create the submission of a bundle stored at its incoming key and move the bundle to its
    public key, in the caller's fresh transaction; the bundle is in place before the commit."""
    public = replace(upload, key=upload_key(submission_id, filename))
    submission = await create_submission(
        session,
        outbox,
        submission_id=submission_id,
        user=user,
        task=task,
        kind=kind,
        name=name,
        private=private,
        upload=public,
        filename=filename,
        client_id=client_id,
    )
    await session.flush()  # a refusal by the database comes before the bundle moves
    await storage.move(upload.key, public.key)
    return submission


async def discard_upload(db: Database, storage: Storage, submission_id: str) -> None:
    """Remove what an upload that did not become a submission stored.

    The public bundle goes only when the submission is known not to exist (a commit that
    failed may still have committed); what cannot be decided now is left to the sweeper.
    """
    try:
        await storage.delete_prefix(f"{INCOMING}/{submission_id}")
        async with db.session() as session:
            exists = await session.get(Submission, submission_id) is not None
        if not exists:
            await storage.delete_prefix(f"{SUBMISSIONS}/{submission_id}")
    except Exception:
        log.warning("could not remove upload %s; the sweeper will", submission_id, exc_info=True)


def _stale_groups(objects: Iterable[ObjectInfo], cutoff: datetime) -> list[str]:
    """The `<top>/<name>` prefixes whose newest object is older than the cutoff."""
    newest: dict[str, datetime] = {}
    for obj in objects:
        group = "/".join(obj.key.split("/")[:2])
        newest[group] = max(obj.modified, newest.get(group, obj.modified))
    return sorted(group for group, modified in newest.items() if modified < cutoff)


async def sweep_storage(
    db: Database, storage: Storage, *, now: datetime | None = None, max_age: timedelta = SWEEP_AGE
) -> list[str]:
    """Delete temporaries older than `max_age`, and `submissions/<id>/` folders older than it
    whose submission does not exist; returns the prefixes deleted."""
    cutoff = (now or utcnow()) - max_age
    removed = _stale_groups(await storage.list_info(INCOMING), cutoff)
    candidates = _stale_groups(await storage.list_info(SUBMISSIONS), cutoff)
    ids = {group.split("/", 1)[1]: group for group in candidates}
    existing: set[str] = set()
    names = sorted(ids)
    async with db.session() as session:
        for start in range(0, len(names), 500):
            batch = names[start : start + 500]
            existing.update(
                await session.scalars(
                    sa.select(col(Submission.id)).where(col(Submission.id).in_(batch))
                )
            )
    removed += [group for sid, group in ids.items() if sid not in existing]
    for group in removed:
        await storage.delete_prefix(group)
    return removed


async def run_sweeper(
    services: Services, stop: asyncio.Event, *, interval: float = SWEEP_INTERVAL_SECONDS
) -> None:
    """Sweep when the API starts, then every `interval` seconds until `stop` is set."""

    async def sweep() -> None:
        removed = await sweep_storage(services.db, services.storage)
        if removed:
            log.info("swept %d leftovers from storage: %s", len(removed), ", ".join(removed))

    await run_every(interval, stop, sweep, what="sweeping storage")
