"""Signed blob links: the storage's presigned URLs where the storage cannot sign them itself.

`GET /api/v1/blobs/<key>?expires=…&method=GET&signature=…` streams the object, `PUT` with a
PUT-signed link stores the request body as it arrives. The link is the grant: no bearer token;
a wrong signature or a link past its time is a 403 (see core.presign).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from api.deps import services_of
from core.errors import Forbidden, NotFound, TooLarge
from core.presign import BLOBS_PATH, secret_key, verify_signature
from core.storage import check_key

router = APIRouter(prefix=BLOBS_PATH, tags=["blobs"])


def _check_link(
    request: Request, key: str, expires: str | None, method: str | None, signature: str | None
) -> None:
    check_key(key)
    if method is not None and method.upper() != request.method:
        raise Forbidden(
            f"this link is for {method.upper()}, not {request.method}",
            code="bad_signature",
            field="method",
        )
    verify_signature(
        secret_key(services_of(request).settings),
        method=request.method,
        key=key,
        expires=expires,
        signature=signature,
    )


@router.get("/{key:path}", response_class=StreamingResponse)
async def read_blob(
    key: str,
    request: Request,
    expires: str | None = None,
    method: str | None = None,
    signature: str | None = None,
) -> StreamingResponse:
    _check_link(request, key, expires, method, signature)
    storage = services_of(request).storage
    try:
        size = await storage.size(key)
    except FileNotFoundError:
        raise NotFound(f"nothing is stored at {key}", field="key") from None
    return StreamingResponse(
        storage.read_stream(key),
        media_type="application/octet-stream",
        headers={"Content-Length": str(size)},
    )


@router.put("/{key:path}")
async def write_blob(
    key: str,
    request: Request,
    expires: str | None = None,
    method: str | None = None,
    signature: str | None = None,
) -> dict:
    _check_link(request, key, expires, method, signature)
    services = services_of(request)
    limit = services.settings.max_upload_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"the body is {declared} bytes; the limit is {limit} bytes", field="body")
    stored = await services.storage.write_stream(key, request.stream(), max_bytes=limit)
    return {"key": stored.key, "size": stored.size, "sha256": stored.sha256}
