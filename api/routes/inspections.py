"""Amun-compatible inspections: an InspectionSpecification posted as JSON, run `batch_size`
times as a benchmark, read back in Amun's shapes.

Mounted twice (api/app.py): at `/api/v1/inspections`, and at Amun's own `/api/v1/inspect` so
that an Amun client works by changing only its host. Answers keep Amun's field names
(`inspection_id`, `parameters`, `status.build`...); errors are Weighbridge's
`{"error": {"code", "message", "field"}}`. Inspections are private to their owner: another
user's id is a 404, as an unknown one is.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from api.deps import optional_user, require_user, services_of
from api.params import MAX_QUERY_INT, Item
from core import inspection_results as results
from core import submissions as subs
from core.errors import TooLarge, WeighbridgeError
from core.incoming import discard_upload, incoming_key
from core.inspections import (
    MAX_REQUEST_BYTES,
    PAGE_LIMIT,
    SCRIPTS_FILENAME,
    get_inspection,
    list_inspections,
    parameters_of,
    parse_specification,
    specification_key,
    submit_inspection,
)
from core.models import Submission, new_id

router = APIRouter(tags=["inspections"])


async def _read_json(request: Request) -> Any:
    """The JSON body, read up to MAX_REQUEST_BYTES."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_REQUEST_BYTES:
        raise TooLarge(
            f"an inspection request may hold at most {MAX_REQUEST_BYTES} bytes", field="body"
        )
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_REQUEST_BYTES:
            raise TooLarge(
                f"an inspection request may hold at most {MAX_REQUEST_BYTES} bytes", field="body"
            )
    try:
        return json.loads(body)
    except ValueError as exc:
        raise WeighbridgeError(
            f"the body is not valid JSON ({exc}); send the inspection request as a JSON object",
            status=422,
            field="body",
        ) from None


def _parameters(submission: Submission, **more: Any) -> dict[str, Any]:
    return {"inspection_id": submission.id, **more}


async def _viewed(request: Request, inspection_id: str) -> Submission:
    async with services_of(request).db.session() as session:
        viewer = await optional_user(session, request)
        return await get_inspection(session, inspection_id, viewer=viewer)


@router.post("", status_code=202)
async def create_inspection(request: Request) -> dict:
    services = services_of(request)
    async with services.db.session() as session:
        await require_user(session, request)
    spec = parse_specification(await _read_json(request))
    upload_id = new_id()
    async with services.db.session() as session:
        user = await require_user(session, request)
    try:
        # A fresh transaction whose first statement is the user's row lock (the run limit).
        async with services.db.session() as session:
            submission = await submit_inspection(
                session,
                services.storage,
                services.outbox,
                user=user,
                spec=spec,
                scripts_key=incoming_key(upload_id, SCRIPTS_FILENAME),
                memory_limit_mb=services.settings.benchmark_memory_mb,
                client_id=request.headers.get("x-client-id"),
                limit=services.settings.benchmark_runs_per_day,
            )
    except BaseException:
        await discard_upload(services.db, services.storage, upload_id)
        raise
    return {
        "inspection_id": submission.id,
        "parameters": parameters_of(spec),
        "status": submission.status,
    }


@router.get("")
async def read_inspections(
    request: Request,
    # Bounded so that (page - 1) x limit stays within every database's integer.
    page: Annotated[int, Query(ge=1, le=MAX_QUERY_INT // PAGE_LIMIT)] = 1,
    limit: Annotated[int, Query(ge=1, le=PAGE_LIMIT)] = PAGE_LIMIT,
) -> dict:
    async with services_of(request).db.session() as session:
        user = await require_user(session, request)
        rows = await list_inspections(session, viewer=user, page=page, limit=limit)
    return {
        "inspections": [s.id for s in rows],
        "details": [
            {
                "inspection_id": s.id,
                "identifier": (s.meta.get("inspection") or {}).get("identifier"),
                "status": s.status,
                "created": s.created_at.isoformat(),
            }
            for s in rows
        ],
        "parameters": {"page": page, "limit": limit},
    }


@router.get("/{inspection_id}/status")
async def read_status(inspection_id: str, request: Request) -> dict:
    services = services_of(request)
    async with services.db.session() as session:
        viewer = await optional_user(session, request)
        submission = await get_inspection(session, inspection_id, viewer=viewer)
        events = await subs.list_events(session, submission.id)
        runs = await subs.list_runs(session, submission.id)
    status = await results.inspection_status(services.storage, submission, events, runs)
    return {"status": status, "parameters": _parameters(submission)}


@router.get("/{inspection_id}/specification")
async def read_specification(inspection_id: str, request: Request) -> dict:
    services = services_of(request)
    submission = await _viewed(request, inspection_id)
    specification = await results.read_json(services.storage, specification_key(submission.id))
    return {
        "specification": specification,
        "created": submission.created_at.isoformat(),
        "parameters": _parameters(submission),
    }


@router.get("/{inspection_id}/build/log")
async def read_build_log(inspection_id: str, request: Request) -> dict:
    services = services_of(request)
    submission = await _viewed(request, inspection_id)
    log = await results.read_build_log(services.storage, submission)
    return {"log": log, "parameters": _parameters(submission)}


@router.get("/{inspection_id}/job/batch-size")
async def read_batch_size(inspection_id: str, request: Request) -> dict:
    submission = await _viewed(request, inspection_id)
    return {"batch_size": results.batch_size_of(submission), "parameters": _parameters(submission)}


@router.get("/{inspection_id}/job/{item}/result")
async def read_result(inspection_id: str, item: Item, request: Request) -> dict:
    services = services_of(request)
    submission = await _viewed(request, inspection_id)
    result = await results.read_result(services.storage, submission, item)
    return {"result": result, "parameters": _parameters(submission, item=item)}


@router.get("/{inspection_id}/job/{item}/log")
async def read_job_log(inspection_id: str, item: Item, request: Request) -> dict:
    services = services_of(request)
    submission = await _viewed(request, inspection_id)
    log = await results.read_run_log(services.storage, submission, item)
    return {"log": log, "parameters": _parameters(submission, item=item)}
