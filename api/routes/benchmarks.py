"""Benchmarks: an Anubis-compatible descriptor (and its scripts) submitted to run.

`POST /api/v1/benchmarks`, multipart: the field `descriptor` holds the TOML text (fields
`descriptor_filename`, `name`, `private` optional), and the optional file part `file` the
scripts archive of script mode (a .tar.gz/.tgz/.tar or .zip of the scripts folder). The
reply is the top submission, with its children when `[ranges]` expanded it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request

from api.deps import require_user, services_of
from api.serializers import submission_summary
from api.uploads import Upload, check_declared_length, receive_form, safe_filename
from core.benchmarks import MAX_DESCRIPTOR_BYTES, submit_benchmark
from core.errors import WeighbridgeError
from core.incoming import discard_upload, incoming_key
from core.models import new_id
from core.storage import Storage

KeyFor = Callable[[dict[str, str], str], Awaitable[tuple[str, int]]]

router = APIRouter(prefix="/api/v1/benchmarks", tags=["benchmarks"])
TRUE = ("1", "true", "yes", "on")


async def _read_fields(
    request: Request, storage: Storage, key_for: KeyFor
) -> tuple[dict[str, str], Upload | None]:
    """Multipart (with or without the scripts archive), a plain form or JSON: the fields."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        return await receive_form(request, storage, key_for=key_for)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > 4 * MAX_DESCRIPTOR_BYTES:
        raise WeighbridgeError(
            "send a descriptor with scripts as multipart/form-data; a plain form or JSON "
            f"body may hold at most {4 * MAX_DESCRIPTOR_BYTES} bytes",
            status=413,
            field="descriptor",
        )
    if content_type == "application/json":
        try:
            body = await request.json()
        except ValueError:
            raise WeighbridgeError("the body is not valid JSON", field="body") from None
        if not isinstance(body, dict):
            raise WeighbridgeError("the JSON body must be an object of fields", field="body")
        return {k: v if isinstance(v, str) else str(v) for k, v in body.items()}, None
    if content_type == "application/x-www-form-urlencoded":
        form = await request.form()
        return {k: v for k, v in form.items() if isinstance(v, str)}, None
    raise WeighbridgeError(
        "send the descriptor as multipart/form-data (with the scripts archive in 'file'), "
        "a form or JSON",
        status=415,
        code="unsupported_media_type",
    )


@router.post("", status_code=201)
async def create_benchmark(request: Request) -> dict:
    services = services_of(request)
    limit = services.settings.max_upload_bytes
    check_declared_length(request, limit)
    upload_id = new_id()
    async with services.db.session() as session:
        user = await require_user(session, request)

    async def key_for(fields: dict[str, str], filename: str) -> tuple[str, int]:
        return incoming_key(upload_id, filename), limit

    try:
        fields, scripts = await _read_fields(request, services.storage, key_for)
        text = fields.get("descriptor", "")
        if not text.strip():
            raise WeighbridgeError(
                "the form field 'descriptor' is missing or empty: send the descriptor's TOML "
                "text in it (curl: -F 'descriptor=<bench.toml')",
                status=422,
                field="descriptor",
            )
        data = text.encode("utf-8")
        if len(data) > MAX_DESCRIPTOR_BYTES:
            raise WeighbridgeError(
                f"the descriptor is {len(data)} bytes; the limit is {MAX_DESCRIPTOR_BYTES}",
                status=413,
                field="descriptor",
            )
        kind = fields.get("kind", "benchmark").strip() or "benchmark"
        if kind not in ("benchmark", "inspection"):
            raise WeighbridgeError(
                "kind must be benchmark or inspection here (models are uploaded to "
                "/api/v1/submissions)",
                field="kind",
            )
        private = fields.get("private", "").strip().lower() in TRUE
        # A fresh transaction whose first statement is the user's row lock (the run limit).
        async with services.db.session() as session:
            top, children = await submit_benchmark(
                session,
                services.storage,
                services.outbox,
                user=user,
                kind=kind,
                descriptor_text=data,
                descriptor_filename=safe_filename(
                    fields.get("descriptor_filename") or "descriptor.toml"
                ),
                scripts=scripts.stored if scripts else None,
                scripts_filename=scripts.filename if scripts else None,
                name=(fields.get("name") or "").strip() or None,
                private=private,
                client_id=request.headers.get("x-client-id"),
                limit=services.settings.benchmark_runs_per_day,
            )
    except BaseException:
        await discard_upload(services.db, services.storage, upload_id)
        raise
    summary = submission_summary(top, task=None, owner=user.name)
    summary["children"] = [
        {**submission_summary(c, task=None, owner=user.name), "values": c.meta.get("values", {})}
        for c in children
    ]
    summary["role"] = top.meta.get("role")
    return summary
