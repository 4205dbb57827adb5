"""A user's API tokens over their life: list, create (named, with an optional expiry), revoke."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from core.accounts import hash_token, issue_token
from core.errors import NotFound, WeighbridgeError
from core.models import ApiToken, User, utcnow

LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.:@-]{0,63}$")
EXPIRY = re.compile(r"^\s*(\d{1,5})\s*([hdw])\s*$")
UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}
MAX_LIFE = timedelta(days=3660)


def parse_expiry(text: str | None) -> timedelta | None:
    """`30d`, `12h` or `8w` as a length of time; None or empty for a token that never expires."""
    if text is None or not text.strip() or text.strip().lower() in ("never", "none"):
        return None
    match = EXPIRY.match(text.lower())
    if match is None:
        raise WeighbridgeError(
            f"expires must be a number and a unit (h, d or w), e.g. 30d, not {text!r}",
            field="expires",
        )
    life = int(match.group(1)) * UNITS[match.group(2)]
    if not timedelta(0) < life <= MAX_LIFE:
        raise WeighbridgeError(
            f"expires must be more than 0 and at most {MAX_LIFE.days} days", field="expires"
        )
    return life


def check_label(name: str) -> str:
    name = name.strip()
    if not LABEL.match(name):
        raise WeighbridgeError(
            "a token's name is 1-64 letters, digits, spaces or _ . : @ - "
            "(starting with a letter or digit)",
            field="name",
        )
    return name


def token_status(token: ApiToken, *, now: datetime | None = None) -> str:
    if token.revoked_at is not None:
        return "revoked"
    if token.expires_at is not None and token.expires_at <= (now or utcnow()):
        return "expired"
    return "active"


def describe_token(token: ApiToken) -> dict[str, Any]:
    def iso(moment: datetime | None) -> str | None:
        return moment.isoformat() if moment is not None else None

    return {
        "id": token.id,
        "name": token.label,
        "created_at": iso(token.created_at),
        "last_used_at": iso(token.last_used_at),
        "expires_at": iso(token.expires_at),
        "revoked_at": iso(token.revoked_at),
        "status": token_status(token),
    }


async def list_tokens(session: AsyncSession, user: User) -> list[ApiToken]:
    """The user's tokens, newest first, revoked and expired ones included."""
    query = (
        sa.select(ApiToken)
        .where(col(ApiToken.user_id) == user.id)
        .order_by(col(ApiToken.created_at).desc(), col(ApiToken.id).desc())
    )
    return list(await session.scalars(query))


async def create_token(
    session: AsyncSession, user: User, *, name: str = "default", expires: str | None = None
) -> tuple[ApiToken, str]:
    """A new token for `user`; the token itself is returned once and only its sha256 kept."""
    label = check_label(name)
    life = parse_expiry(expires)
    token = await issue_token(session, user, label=label)
    row = await session.scalar(
        sa.select(ApiToken).where(col(ApiToken.token_sha256) == hash_token(token))
    )
    assert row is not None
    if life is not None:
        row.expires_at = utcnow() + life
        await session.flush()
    return row, token


async def revoke_token(session: AsyncSession, token_id: int, *, by: User) -> ApiToken:
    """Revoke one token (its owner's, or anyone's for an admin); it is refused from now on."""
    token = await session.get(ApiToken, token_id)
    if token is None or (token.user_id != by.id and not by.is_admin):
        raise NotFound(f"no token {token_id} of yours", field="id")
    if token.revoked_at is not None:
        return token
    token.revoked_at = utcnow()
    await session.flush()
    return token


async def rename_token(session: AsyncSession, token_id: int, *, name: str, by: User) -> ApiToken:
    """Give one of your tokens (anyone's, for an admin) another name."""
    label = check_label(name)
    token = await session.get(ApiToken, token_id)
    if token is None or (token.user_id != by.id and not by.is_admin):
        raise NotFound(f"no token {token_id} of yours", field="id")
    token.label = label
    await session.flush()
    return token
