"""An API client over the real app (ASGI transport), a user and a token per test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from api.app import create_app
from core.accounts import create_user
from core.context import Services


@pytest.fixture
async def client(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(services)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


async def make_user(services: Services, name: str = "ada", *, admin: bool = False) -> str:
    async with services.db.session() as session:
        _, token = await create_user(session, name, email=f"{name}@example.org", is_admin=admin)
    return token


@pytest.fixture
async def token(services: Services) -> str:
    return await make_user(services)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
