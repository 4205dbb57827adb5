"""Users and API tokens: create, authenticate. Tokens are stored only as sha256."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from core.errors import Conflict, Unauthorized, WeighbridgeError
from core.models import ApiToken, User, utcnow
from core.passwords import hash_password, verify_password

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")
WORKER_TOKEN_PREFIX = "wbw_"  # core.worker_tokens


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def create_user(
    session: AsyncSession, name: str, *, email: str, is_admin: bool = False
) -> tuple[User, str]:
    """Create a user and their first token; the token is returned once and never stored."""
    if not NAME.match(name):
        raise WeighbridgeError(
            "user name must be 1-64 letters, digits, '.', '_' or '-'", field="name"
        )
    if not EMAIL.match(email):
        raise WeighbridgeError(f"{email!r} is not an email address", field="email")
    existing = await session.scalar(sa.select(User).where(col(User.name) == name))
    if existing is not None:
        raise Conflict(f"user {name!r} already exists", field="name")
    user = User(name=name, email=email, is_admin=is_admin)
    session.add(user)
    await session.flush()
    token = await issue_token(session, user)
    return user, token


async def issue_token(session: AsyncSession, user: User, *, label: str = "default") -> str:
    token = "wb_" + secrets.token_urlsafe(32)
    assert user.id is not None
    session.add(ApiToken(user_id=user.id, token_sha256=hash_token(token), label=label))
    await session.flush()
    return token


async def authenticate(session: AsyncSession, token: str | None) -> User:
    """The user a bearer token belongs to, or Unauthorized saying what is wrong."""
    user, _ = await authenticate_token(session, token)
    return user


async def authenticate_token(session: AsyncSession, token: str | None) -> tuple[User, ApiToken]:
    """The user and the token row a bearer token names; a revoked or expired token is refused
    with the date it stopped working."""
    if not token:
        raise Unauthorized(
            "missing API token: send 'Authorization: Bearer <token>' "
            "(get one with `weighbridge admin create-user`)"
        )
    if token.startswith(WORKER_TOKEN_PREFIX):
        # A fleet's worker token (core.worker_tokens) grants that fleet's jobs, nothing else.
        raise Unauthorized(
            "this is an evaluator worker token: it works only on /api/v1/worker/*; "
            "use a user's API token here"
        )
    row = (
        await session.execute(
            sa.select(User, ApiToken)
            .join(ApiToken, col(ApiToken.user_id) == col(User.id))
            .where(col(ApiToken.token_sha256) == hash_token(token))
        )
    ).first()
    if row is None:
        raise Unauthorized("invalid API token: check the token or ask an admin for a new one")
    user, api_token = row
    check_token_usable(api_token)
    api_token.last_used_at = utcnow()
    return user, api_token


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def check_token_usable(api_token: ApiToken, *, now: datetime | None = None) -> None:
    """Refuse (401) a revoked or expired token, saying when it stopped working."""
    if api_token.revoked_at is not None:
        raise Unauthorized(
            f"this token was revoked on {_when(api_token.revoked_at)}: "
            "create a new one (`weighbridge token create`) or ask an admin",
            code="token_revoked",
        )
    if api_token.expires_at is not None and api_token.expires_at <= (now or utcnow()):
        raise Unauthorized(
            f"this token expired on {_when(api_token.expires_at)}: "
            "create a new one (`weighbridge token create`) or ask an admin",
            code="token_expired",
        )


async def set_password(session: AsyncSession, user: User, password: str) -> None:
    """Let `user` sign in to the website with `password` (kept only as a scrypt hash)."""
    user.password_hash = hash_password(password)
    session.add(user)
    await session.flush()


async def authenticate_password(session: AsyncSession, name: str, password: str) -> User:
    """The user whose name and password these are; one message whichever part is wrong."""
    user = await get_user(session, name) if NAME.match(name or "") else None
    ok = verify_password(password or "", user.password_hash if user else None)
    if user is None or not ok:
        raise Unauthorized(
            "wrong user name or password (or no password set: sign in with an API token)",
            code="bad_credentials",
        )
    return user


async def delete_new_user(session: AsyncSession, user: User) -> None:
    """Remove a user created moments ago, with their tokens (they own nothing else yet)."""
    await session.execute(sa.delete(ApiToken).where(col(ApiToken.user_id) == user.id))
    await session.delete(user)
    await session.flush()


async def get_user(session: AsyncSession, name: str) -> User | None:
    return await session.scalar(sa.select(User).where(col(User.name) == name))


async def user_names(session: AsyncSession, ids: Iterable[int]) -> dict[int, str]:
    """The names of the users with these ids (one query, whatever their number)."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    rows = await session.execute(
        sa.select(col(User.id), col(User.name)).where(col(User.id).in_(wanted))
    )
    return {int(user_id or 0): str(name) for user_id, name in rows}


async def count_users(session: AsyncSession) -> int:
    return int(await session.scalar(sa.select(sa.func.count()).select_from(User)) or 0)
