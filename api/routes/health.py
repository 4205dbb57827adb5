"""Liveness and identity: /healthz and /api/v1/ping."""

from __future__ import annotations

from fastapi import APIRouter, Request

from api.deps import optional_user, services_of
from core.errors import WeighbridgeError
from core.version import __version__

router = APIRouter()


@router.get("/healthz", tags=["health"])
async def healthz(request: Request) -> dict:
    services = services_of(request)
    try:
        await services.db.check()
    except Exception as exc:
        raise WeighbridgeError(
            f"database unreachable: {type(exc).__name__}", status=503, code="unavailable"
        ) from None
    return {"status": "ok", "version": __version__, "database": "ok"}


@router.get("/api/v1/ping", tags=["health"])
async def ping(request: Request) -> dict:
    async with services_of(request).db.session() as session:
        user = await optional_user(session, request)
    return {
        "version": __version__,
        "user": {"name": user.name, "email": user.email, "is_admin": user.is_admin}
        if user
        else None,
    }
