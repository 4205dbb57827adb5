"""Request-scoped helpers: the services, and the user a bearer token names."""

from __future__ import annotations

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession

from core.accounts import authenticate
from core.context import services_of as services_of  # re-exported for the routes
from core.models import User


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def require_user(session: AsyncSession, request: Request) -> User:
    return await authenticate(session, bearer_token(request))


async def optional_user(session: AsyncSession, request: Request) -> User | None:
    token = bearer_token(request)
    if token is None:
        return None
    return await authenticate(session, token)
