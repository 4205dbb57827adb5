"""Remote jobs: one dataset of one submission, handed to a fleet's remote worker over the API.

The server side (evaluator.remote_runner) creates a job and waits; a worker holding a token
of the job's fleet claims it (a fresh per-claim secret, a lease), keeps the lease by
heartbeat, and completes or fails it with reports signed by that secret
(`X-Weighbridge-Signature: hex(HMAC-SHA256(secret, body))`). A lease that runs out sends the
job back to the queue; after MAX_ATTEMPTS claims it fails with the reason. A job of another
fleet, or an unknown id, is the same 404 to a worker.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from core.errors import Conflict, Forbidden, NotFound
from core.models import RemoteJob, WorkerToken, new_id
from core.presign import Method, presigned_url, secret_key
from core.report_signatures import SIGNATURE_HEADER, signature_matches
from core.settings import Settings
from core.storage import Storage

MAX_ATTEMPTS = 3
QUEUED, CLAIMED, DONE, FAILED, CANCELLED = "queued", "claimed", "done", "failed", "cancelled"
ENDED = (DONE, FAILED, CANCELLED)
ERROR_CHARS = 4000


def lost_lease_reason(attempts: int) -> str:
    return (
        f"the remote worker stopped reporting (no heartbeat within its lease) {attempts} "
        f"times; the job was given up after {MAX_ATTEMPTS} attempts: check that the fleet's "
        "workers are running and can reach the API"
    )


async def create_job(
    session: AsyncSession,
    *,
    fleet: str,
    submission_id: str,
    dataset: str,
    spec: dict[str, Any],
    job_id: str | None = None,
) -> RemoteJob:
    """A queued job; an unfinished job for the same dataset (an earlier delivery's) is
    cancelled, so that only one is ever worked on."""
    now = time.time()
    await session.execute(
        sa.update(RemoteJob)
        .where(
            col(RemoteJob.submission_id) == submission_id,
            col(RemoteJob.dataset) == dataset,
            col(RemoteJob.status).in_((QUEUED, CLAIMED)),
        )
        .values(status=CANCELLED, secret=None, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    job = RemoteJob(
        id=job_id or new_id(),
        fleet=fleet,
        submission_id=submission_id,
        dataset=dataset,
        status=QUEUED,
        spec=spec,
        created_at=now,
        updated_at=now,
    )
    session.add(job)
    await session.flush()
    return job


async def get_job(session: AsyncSession, job_id: str) -> RemoteJob | None:
    job = await session.get(RemoteJob, job_id, populate_existing=True)
    return job


async def expire_leases(
    session: AsyncSession, *, fleet: str | None = None, job_id: str | None = None
) -> int:
    """Jobs whose lease ran out go back to queued, or fail after MAX_ATTEMPTS; how many moved."""
    now = time.time()
    query = sa.select(RemoteJob).where(
        col(RemoteJob.status) == CLAIMED, col(RemoteJob.lease_until) < now
    )
    if fleet is not None:
        query = query.where(col(RemoteJob.fleet) == fleet)
    if job_id is not None:
        query = query.where(col(RemoteJob.id) == job_id)
    moved = 0
    for job in (await session.execute(query)).scalars().all():
        given_up = job.attempts >= MAX_ATTEMPTS
        values: dict[str, Any] = {
            "status": FAILED if given_up else QUEUED,
            "secret": None,
            "token_id": None if not given_up else job.token_id,
            "updated_at": now,
        }
        if given_up:
            values["error"] = lost_lease_reason(job.attempts)
        result = await session.execute(
            sa.update(RemoteJob)
            .where(
                col(RemoteJob.id) == job.id,
                col(RemoteJob.status) == CLAIMED,
                col(RemoteJob.lease_until) == job.lease_until,
            )
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        moved += result.rowcount or 0  # type: ignore[attr-defined]
    return moved


async def claim_job(
    session: AsyncSession, token: WorkerToken, *, lease_seconds: float
) -> tuple[RemoteJob, str] | None:
    """The oldest queued job of the token's fleet, now held by this worker, with its fresh
    secret (shown this once); None when there is none. Safe against racing workers: a claim
    is an update that only one of them can win."""
    await expire_leases(session, fleet=token.fleet)
    candidates = (
        (
            await session.execute(
                sa.select(RemoteJob)
                .where(col(RemoteJob.fleet) == token.fleet, col(RemoteJob.status) == QUEUED)
                .order_by(col(RemoteJob.created_at))
                .limit(5)
            )
        )
        .scalars()
        .all()
    )
    for job in candidates:
        secret = secrets.token_hex(32)
        now = time.time()
        result = await session.execute(
            sa.update(RemoteJob)
            .where(
                col(RemoteJob.id) == job.id,
                col(RemoteJob.status) == QUEUED,
                col(RemoteJob.attempts) == job.attempts,
            )
            .values(
                status=CLAIMED,
                attempts=job.attempts + 1,
                secret=secret,
                token_id=token.id,
                lease_until=now + lease_seconds,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            await session.refresh(job)
            return job, secret
    return None


async def _reported_job(
    session: AsyncSession, token: WorkerToken, job_id: str, body: bytes, signature: str | None
) -> RemoteJob:
    """The job a signed report is about, still held by the reporting worker; else 404 (not
    this fleet's, or unknown), 403 (signature wrong or missing) or 409 (lease lost, ended)."""
    job = await session.get(RemoteJob, job_id, populate_existing=True, with_for_update=True)
    if job is None or job.fleet != token.fleet:
        raise NotFound(f"no job {job_id} for this worker's fleet", field="job_id")
    if job.secret is None or job.status != CLAIMED or job.token_id != token.id:
        raise Conflict(
            f"job {job_id} is {job.status}"
            + (" by another worker" if job.status == CLAIMED else "")
            + ": it is no longer this worker's; stop working on it",
            code="lease_lost",
        )
    if not signature_matches(job.secret, body, signature):
        raise Forbidden(
            f"the report's {SIGNATURE_HEADER} does not match: sign the exact body with the "
            "job's secret (hex HMAC-SHA256)",
            code="bad_signature",
            field=SIGNATURE_HEADER,
        )
    if job.lease_until < time.time():
        # Put back in the queue by the next claim or by the server side's next look.
        raise Conflict(
            f"job {job_id}: this worker's lease ran out; stop working on it",
            code="lease_lost",
        )
    return job


async def heartbeat(
    session: AsyncSession,
    token: WorkerToken,
    job_id: str,
    *,
    body: bytes,
    signature: str | None,
    lease_seconds: float,
) -> RemoteJob:
    """Extend the worker's lease on the job."""
    job = await _reported_job(session, token, job_id, body, signature)
    now = time.time()
    job.lease_until = now + lease_seconds
    job.updated_at = now
    session.add(job)
    await session.flush()
    return job


async def complete_job(
    session: AsyncSession,
    token: WorkerToken,
    job_id: str,
    *,
    body: bytes,
    signature: str | None,
    report: dict[str, Any],
) -> RemoteJob:
    """The worker finished: its report is kept for the server side, which reads the
    predictions it uploaded and scores them."""
    job = await _reported_job(session, token, job_id, body, signature)
    job.status = DONE
    job.result = report
    job.secret = None
    job.updated_at = time.time()
    session.add(job)
    await session.flush()
    return job


async def fail_job(
    session: AsyncSession,
    token: WorkerToken,
    job_id: str,
    *,
    body: bytes,
    signature: str | None,
    error: str,
    report: dict[str, Any] | None = None,
) -> RemoteJob:
    """The worker could not run the job (the model failed): the reason goes to the owner."""
    job = await _reported_job(session, token, job_id, body, signature)
    job.status = FAILED
    job.error = error[:ERROR_CHARS] or "the remote worker reported a failure without a reason"
    job.result = report
    job.secret = None
    job.updated_at = time.time()
    session.add(job)
    await session.flush()
    return job


async def cancel_job(session: AsyncSession, job_id: str) -> None:
    """The server side stopped waiting (the submission was cancelled): the worker's next
    heartbeat gets 409 and it stops."""
    await session.execute(
        sa.update(RemoteJob)
        .where(col(RemoteJob.id) == job_id, col(RemoteJob.status).in_((QUEUED, CLAIMED)))
        .values(status=CANCELLED, secret=None, updated_at=time.time())
        .execution_options(synchronize_session=False)
    )


UPLOADS = {"predictions": "predictions.jsonl", "log": "log", "result": "result.json"}


def upload_keys(job: RemoteJob) -> dict[str, str]:
    """Where the worker holding the job's current claim uploads: its own prefix per claim
    (`remote/<job>/<attempt>/`), so that a worker that lost the job can never overwrite what
    the one holding it now uploads; the server side moves the results in place."""
    return {name: f"remote/{job.id}/{job.attempts}/{file}" for name, file in UPLOADS.items()}


async def upload_urls(storage: Storage, settings: Settings, job: RemoteJob) -> dict[str, str]:
    """Presigned PUTs for this claim's own upload keys (predictions, log, result.json) only."""
    keys = upload_keys(job)
    return {
        f"{name}_url": await _link(storage, settings, keys[name], method="PUT") for name in UPLOADS
    }


async def job_document(
    storage: Storage, settings: Settings, job: RemoteJob, secret: str
) -> dict[str, Any]:
    """What a worker gets on claim: the task's settings, presigned links to the model archive,
    its requirements.txt when it has one (the worker builds that environment itself) and the
    dataset's inputs (labels are never in it), and links to upload its results."""
    spec = job.spec
    model = dict(spec["model"])
    dataset = dict(spec["dataset"])
    requirements = model.pop("requirements", None)
    if requirements:
        requirements = dict(requirements)
        key = requirements.pop("key")
        model["requirements"] = {
            "url": await _link(storage, settings, key, method="GET"),
            **requirements,
        }
    return {
        "job_id": job.id,
        "fleet": job.fleet,
        "secret": secret,
        "attempt": job.attempts,
        "lease_seconds": settings.worker_lease_seconds,
        "submission_id": job.submission_id,
        "task": spec["task"],
        "model": {
            "archive_url": await _link(storage, settings, model.pop("mar_key"), method="GET"),
            **model,
        },
        "dataset": {
            "inputs_url": await _link(storage, settings, dataset.pop("inputs_key"), method="GET"),
            **dataset,
        },
        "upload": await upload_urls(storage, settings, job),
    }


async def _link(storage: Storage, settings: Settings, key: str, *, method: Method) -> str:
    return await presigned_url(
        storage,
        key,
        method=method,
        seconds=settings.worker_url_seconds,
        public_url=settings.public_url,
        secret=secret_key(settings),
    )
