"""Fleet worker tokens: create, list, revoke, authenticate. Stored only as sha256.

A worker token (`wbw_…`) grants one fleet's remote jobs and nothing else: the worker routes
accept only these tokens, and every other route refuses them (core.accounts.authenticate).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from core.accounts import WORKER_TOKEN_PREFIX, hash_token
from core.errors import NotFound, Unauthorized, WeighbridgeError
from core.models import WorkerToken, utcnow

TOKEN_PREFIX = WORKER_TOKEN_PREFIX
LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


def is_worker_token(token: str | None) -> bool:
    return bool(token) and str(token).startswith(TOKEN_PREFIX)


async def create_worker_token(
    session: AsyncSession,
    *,
    fleet: str,
    fleets: Iterable[str],
    label: str = "worker",
    created_by: int | None = None,
) -> tuple[WorkerToken, str]:
    """A new token for `fleet`, which must be one of `fleets` (the fleets the server serves);
    the token is returned once and never stored."""
    served = sorted(set(fleets))
    if fleet not in served:
        raise WeighbridgeError(
            f"fleet {fleet!r} is not served here (fleets: {', '.join(served)}); use one of "
            "them, or add a task config whose eval.eval_server_id names it",
            field="fleet",
        )
    if not LABEL.match(label):
        raise WeighbridgeError(
            "the label must be 1-64 letters, digits, '.', '_', '@' or '-'", field="label"
        )
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = WorkerToken(
        fleet=fleet, label=label, token_sha256=hash_token(token), created_by=created_by
    )
    session.add(row)
    await session.flush()
    return row, token


async def list_worker_tokens(session: AsyncSession) -> list[WorkerToken]:
    result = await session.execute(sa.select(WorkerToken).order_by(col(WorkerToken.id)))
    return list(result.scalars())


async def revoke_worker_token(session: AsyncSession, token_id: int) -> WorkerToken:
    """Revoke at once: the next request with it is refused. Revoking twice is harmless."""
    row = await session.get(WorkerToken, token_id)
    if row is None:
        raise NotFound(
            f"no worker token {token_id} (`weighbridge admin worker-token list` shows them)",
            field="id",
        )
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.add(row)
        await session.flush()
    return row


async def authenticate_worker(session: AsyncSession, token: str | None) -> WorkerToken:
    """The worker token a bearer token is, or Unauthorized saying what is wrong."""
    if not token:
        raise Unauthorized(
            "missing worker token: send 'Authorization: Bearer wbw_…' "
            "(an admin makes one with `weighbridge admin worker-token create --fleet F`)"
        )
    if not is_worker_token(token):
        raise Unauthorized("the worker routes take a worker token (wbw_…), not a user's API token")
    row = await session.scalar(
        sa.select(WorkerToken).where(col(WorkerToken.token_sha256) == hash_token(token))
    )
    if row is None:
        raise Unauthorized("invalid worker token: check it or ask an admin for a new one")
    if row.revoked_at is not None:
        raise Unauthorized("this worker token was revoked: ask an admin for a new one")
    row.last_used_at = utcnow()
    session.add(row)
    return row
