"""Benchmarks and inspections accepted as submissions: a descriptor, its scripts, its family.

`submit_benchmark` takes an Anubis-compatible descriptor (validated here, so a bad one is a 422
naming its lines, never a failed build later) and an optional scripts archive, and creates in
the caller's transaction:

- for a plain descriptor, one submission queued for the builder;
- for a descriptor with `[ranges]`, a parent that records the family and one child per
  combination (`parent_id`, its values in `meta.values`), each queued;
- for a scheduled descriptor (a cron `info.scheduling`), a parent that records the schedule;
  the scheduler submits its children at each tick (`submit_children`).

A parent is `done` when created: it stands for the request ("expanded into 6 runs",
"scheduled: 0 3 * * *"); its children carry the work, and `weighbridge status`/`results` show
them as a family. The descriptor is stored once, at the top submission's upload key; the
scripts archive under `scripts/<sha256>/<name>`, content-addressed, so every submission that
sends the same archive shares one object. Children point at both through `meta`.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from core.descriptor import Descriptor, expand_ranges, parse_descriptor
from core.errors import RateLimited, WeighbridgeError
from core.kinds import policy_of
from core.models import Submission, User, new_id, utcnow
from core.outbox import Outbox
from core.states import Status, record_event
from core.storage import Storage, StoredObject
from core.submissions import NOT_COUNTED, PARENT_ROLES, create_submission, lock_submissions_of

# Where an uploaded scripts archive lives once accepted: by content, shared.
SCRIPTS = "scripts"
MAX_DESCRIPTOR_BYTES = 64 * 1024
# The kinds whose runs count against a user's daily run limit, and its window.
RUN_KINDS = ("benchmark", "inspection")
RUN_WINDOW = timedelta(hours=24)


def scripts_key(sha256: str, filename: str) -> str:
    return f"{SCRIPTS}/{sha256}/{filename}"


def benchmark_identity(descriptor: Descriptor) -> str:
    """What makes two runs the same benchmark for its history: task_name, labels, hardware."""
    labels = ",".join(f"{k}={v}" for k, v in sorted(descriptor.info.labels.items()))
    text = f"{descriptor.task_name}|{labels}|{descriptor.hardware.instance_type}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


async def check_run_limit(
    session: AsyncSession, user: User, *, adding: int, limit: int | None
) -> None:
    """Refuse with 429 when `adding` runs would take the user past `limit` benchmark and
    inspection runs in 24 hours (failed and cancelled ones and family or schedule parents do
    not count; admins have no limit). Call it first in the transaction: it takes the user's
    row lock so that two submissions at once are counted one after the other."""
    if limit is None or user.is_admin:
        return
    await lock_submissions_of(session, user)
    now = utcnow()
    role = col(Submission.meta)["role"].as_string()
    counted = int(
        await session.scalar(
            sa.select(sa.func.count()).where(
                col(Submission.user_id) == user.id,
                col(Submission.kind).in_(RUN_KINDS),
                col(Submission.created_at) >= now - RUN_WINDOW,
                col(Submission.status).not_in(NOT_COUNTED),
                sa.or_(role.is_(None), role.not_in(PARENT_ROLES)),
            )
        )
        or 0
    )
    if counted + adding > limit:
        raise RateLimited(
            f"{adding} more run(s) would make {counted + adding} benchmark and inspection "
            f"runs in 24 hours; the limit is {limit} (failed and cancelled ones do not count)",
            field="descriptor",
            headers={"Retry-After": "3600"},
            extra={"limit": limit, "used": counted, "asked": adding},
        )


def _values_label(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


async def submit_benchmark(
    session: AsyncSession,
    storage: Storage,
    outbox: Outbox,
    *,
    user: User,
    kind: str,
    descriptor_text: bytes,
    descriptor_filename: str,
    scripts: StoredObject | None = None,
    scripts_filename: str | None = None,
    name: str | None = None,
    private: bool = False,
    client_id: str | None = None,
    limit: int | None = None,
) -> tuple[Submission, list[Submission]]:
    """The top submission and its children (none for a plain descriptor), in the caller's
    transaction; DescriptorError (a 422 naming each problem's line) for a bad descriptor.

    `scripts` is an archive already in storage (at an incoming key); it is moved to its
    content address here."""
    policy_of(kind)
    descriptor = parse_descriptor(descriptor_text, filename=descriptor_filename)
    families = expand_ranges(descriptor)
    # A schedule's runs are counted tick by tick, as the scheduler submits them.
    await check_run_limit(
        session, user, adding=0 if descriptor.scheduled else max(1, len(families)), limit=limit
    )
    if descriptor.ml.script is not None and scripts is None:
        raise WeighbridgeError(
            f"ml.script names the scripts archive {descriptor.ml.script.script!r}, but none "
            "was sent: submit with --script DIR (the folder it was made from)",
            status=422,
            field="ml.script.script",
        )
    submission_id = new_id()
    stored = await storage.write_bytes(
        f"submissions/{submission_id}/upload/{descriptor_filename}", descriptor_text
    )
    scripts_meta = None
    if scripts is not None:
        filename = scripts_filename or "scripts.tar.gz"
        target = scripts_key(scripts.sha256, filename)
        if scripts.key != target:
            await storage.move(scripts.key, target)
        scripts_meta = {"key": target, "sha256": scripts.sha256, "bytes": scripts.size}
    title = (name or descriptor.task_name or descriptor_filename.rsplit(".", 1)[0])[:200]
    meta: dict[str, Any] = {
        "descriptor": {"key": stored.key, "sha256": stored.sha256, "filename": descriptor_filename},
        "scripts": scripts_meta,
        "identity": benchmark_identity(descriptor),
        "benchmark": descriptor.task_name,
        "instance_type": descriptor.hardware.instance_type,
        # The longest its runs may take (the reaper's deadline while it is evaluated).
        "run_budget_seconds": descriptor.run.count * descriptor.run.timeout,
    }
    if not descriptor.scheduled and not families:
        top = await create_submission(
            session,
            outbox,
            submission_id=submission_id,
            user=user,
            task=None,
            kind=kind,
            name=title,
            private=private,
            upload=stored,
            filename=descriptor_filename,
            client_id=client_id,
            meta=meta,
        )
        return top, []
    parent = Submission(
        id=submission_id,
        kind=kind,
        user_id=user.id,  # type: ignore[arg-type]
        name=title,
        private=private,
        status=Status.DONE.value,
        upload_key=stored.key,
        upload_filename=descriptor_filename,
        upload_bytes=stored.size,
        upload_sha256=stored.sha256,
        client_id=client_id,
        meta={**meta, "role": "schedule" if descriptor.scheduled else "family"},
    )
    session.add(parent)
    await session.flush()
    if descriptor.scheduled:
        record_event(
            session,
            parent,
            "benchmark.scheduled",
            service="api",
            status=parent.status,
            message=(
                f"scheduled: {descriptor.info.scheduling} (UTC); each tick submits "
                f"{max(1, len(families))} run(s) as children of this submission"
            ),
            payload={"cron": descriptor.info.scheduling, "family": families},
        )
        return parent, []
    record_event(
        session,
        parent,
        "benchmark.expanded",
        service="api",
        status=parent.status,
        message=f"expanded into {len(families)} runs over {', '.join(descriptor.ranges)}",
        payload={"family": families},
    )
    children = await submit_children(session, outbox, parent, families)
    return parent, children


async def submit_children(
    session: AsyncSession,
    outbox: Outbox,
    parent: Submission,
    families: list[dict[str, Any]],
    *,
    user: User | None = None,
    extra_meta: dict[str, Any] | None = None,
) -> list[Submission]:
    """One child of `parent` per combination of range values (one child when there are
    none), each queued for the builder; the scheduler calls this at each tick."""
    owner = user or await session.get(User, parent.user_id)
    assert owner is not None
    stored = StoredObject(
        key=parent.upload_key or "",
        size=parent.upload_bytes or 0,
        sha256=parent.upload_sha256 or "",
    )
    base = {k: v for k, v in parent.meta.items() if k not in ("role", "children")}
    children = []
    for values in families or [{}]:
        label = _values_label(values)
        children.append(
            await create_submission(
                session,
                outbox,
                submission_id=new_id(),
                user=owner,
                task=None,
                kind=parent.kind,
                name=f"{parent.name} [{label}]"[:255] if label else parent.name,
                private=parent.private,
                upload=stored,
                filename=parent.upload_filename or "descriptor.toml",
                client_id=parent.client_id,
                parent_id=parent.id,
                meta={**base, "values": values, **(extra_meta or {})},
            )
        )
    return children
