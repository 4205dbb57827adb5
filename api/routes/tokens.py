"""The caller's API tokens: list, create (named, optionally expiring), revoke."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from api.deps import require_user, services_of
from api.params import TokenId
from core.api_tokens import (
    create_token,
    describe_token,
    list_tokens,
    rename_token,
    revoke_token,
)

router = APIRouter(prefix="/api/v1/tokens", tags=["tokens"])


class NewToken(BaseModel):
    name: str = Field(default="default", description="A name to tell the token by.")
    expires: str | None = Field(
        default=None, description="How long it lasts, e.g. 30d, 12h, 8w; none: no expiry."
    )


@router.get("")
async def read_tokens(request: Request) -> dict:
    """Your tokens (never the tokens themselves): name, created, last use, expiry, revoked."""
    async with services_of(request).db.session() as session:
        user = await require_user(session, request)
        return {"tokens": [describe_token(t) for t in await list_tokens(session, user)]}


@router.post("", status_code=201)
async def add_token(body: NewToken, request: Request) -> dict:
    """A new token; `token` is shown in this answer only (the server keeps its sha256)."""
    async with services_of(request).db.session() as session:
        user = await require_user(session, request)
        row, token = await create_token(session, user, name=body.name, expires=body.expires)
        return {**describe_token(row), "token": token}


class TokenName(BaseModel):
    name: str = Field(description="The token's new name.")


@router.patch("/{token_id}")
async def name_token(token_id: TokenId, body: TokenName, request: Request) -> dict:
    """Rename a token of yours (an admin: anyone's)."""
    async with services_of(request).db.session() as session:
        user = await require_user(session, request)
        return describe_token(await rename_token(session, token_id, name=body.name, by=user))


@router.delete("/{token_id}")
async def delete_token(token_id: TokenId, request: Request) -> dict:
    """Revoke a token of yours (an admin: anyone's); it is refused from now on."""
    async with services_of(request).db.session() as session:
        user = await require_user(session, request)
        return describe_token(await revoke_token(session, token_id, by=user))
