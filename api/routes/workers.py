"""The remote evaluator workers' routes: claim a job of the token's fleet, keep it, report it.

Only a worker token (`wbw_…`) opens these routes, and it opens no other. Reports carry
`X-Weighbridge-Signature` (hex HMAC-SHA256 of the body under the job's secret); a job of
another fleet is a 404, like an unknown one (core.remote_jobs holds the rules).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError

from api.deps import bearer_token, services_of
from core import remote_jobs
from core.errors import WeighbridgeError
from core.worker_tokens import authenticate_worker

router = APIRouter(prefix="/api/v1/worker", tags=["workers"])


class CompleteReport(BaseModel):
    """A worker's report that the dataset ran (its uploads hold the predictions and log)."""

    performance: dict[str, float]
    worker: dict[str, Any] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict)
    # The task metrics, from a worker that holds the dataset's labels (labels = "worker").
    scores: list[dict[str, Any]] | None = None
    # A worker may also report a failure here; it is the same as /fail.
    error: str | None = None


class FailReport(BaseModel):
    """A worker's report that the dataset could not run, and why (shown to the owner)."""

    error: str = Field(min_length=1)
    worker: dict[str, Any] = Field(default_factory=dict)


def _parse(model: type[BaseModel], body: bytes) -> Any:
    try:
        return model.model_validate(json.loads(body or b"{}"))
    except ValueError as exc:
        if isinstance(exc, ValidationError):
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err.get("loc", ())) or None
            raise WeighbridgeError(
                f"{field}: {err.get('msg')}", status=422, code="invalid_request", field=field
            ) from None
        raise WeighbridgeError(f"the body is not JSON: {exc}", status=422) from None


@router.post("/jobs/claim", responses={204: {"description": "no job waiting for this fleet"}})
async def claim_job(request: Request) -> Response:
    """The next job of the token's fleet with its one-time secret, or 204 when none waits."""
    services = services_of(request)
    settings = services.settings
    async with services.db.session() as session:
        token = await authenticate_worker(session, bearer_token(request))
        claimed = await remote_jobs.claim_job(
            session, token, lease_seconds=settings.worker_lease_seconds
        )
    if claimed is None:
        return Response(status_code=204)
    job, secret = claimed
    return JSONResponse(await remote_jobs.job_document(services.storage, settings, job, secret))


@router.post("/jobs/{job_id}/heartbeat")
async def heartbeat(job_id: str, request: Request) -> dict:
    """Keep the lease; 409 when it was lost or the job was cancelled (stop working on it)."""
    services = services_of(request)
    body = await request.body()
    async with services.db.session() as session:
        token = await authenticate_worker(session, bearer_token(request))
        job = await remote_jobs.heartbeat(
            session,
            token,
            job_id,
            body=body,
            signature=request.headers.get(remote_jobs.SIGNATURE_HEADER),
            lease_seconds=services.settings.worker_lease_seconds,
        )
    upload = await remote_jobs.upload_urls(services.storage, services.settings, job)
    return {
        "job_id": job.id,
        "lease_seconds": services.settings.worker_lease_seconds,
        "upload": upload,
    }


@router.post("/jobs/{job_id}/complete")
async def complete_job(job_id: str, request: Request) -> dict:
    """The dataset ran and its predictions, log and result are uploaded."""
    services = services_of(request)
    body = await request.body()
    signature = request.headers.get(remote_jobs.SIGNATURE_HEADER)
    async with services.db.session() as session:
        token = await authenticate_worker(session, bearer_token(request))
        report: CompleteReport = _parse(CompleteReport, body)
        if report.error:
            job = await remote_jobs.fail_job(
                session, token, job_id, body=body, signature=signature, error=report.error
            )
        else:
            job = await remote_jobs.complete_job(
                session,
                token,
                job_id,
                body=body,
                signature=signature,
                report=report.model_dump(mode="json"),
            )
    return {"job_id": job.id, "status": job.status}


@router.post("/jobs/{job_id}/fail")
async def fail_job(job_id: str, request: Request) -> dict:
    """The dataset could not run; the error is the reason the owner reads."""
    services = services_of(request)
    body = await request.body()
    async with services.db.session() as session:
        token = await authenticate_worker(session, bearer_token(request))
        report: FailReport = _parse(FailReport, body)
        job = await remote_jobs.fail_job(
            session,
            token,
            job_id,
            body=body,
            signature=request.headers.get(remote_jobs.SIGNATURE_HEADER),
            error=report.error,
            report={"worker": report.worker},
        )
    return {"job_id": job.id, "status": job.status}
