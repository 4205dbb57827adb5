"""Users and API tokens: a new user's token authenticates, and only its hash is stored."""

from __future__ import annotations

import hashlib

import pytest
import sqlalchemy as sa

from core.accounts import authenticate, create_user, issue_token
from core.db import Database
from core.errors import Conflict, Unauthorized, WeighbridgeError
from core.models import ApiToken


async def test_a_new_users_token_authenticates_them(db: Database) -> None:
    async with db.session() as session:
        user, token = await create_user(session, "ada", email="ada@example.org", is_admin=True)
    async with db.session() as session:
        who = await authenticate(session, token)
    assert (who.id, who.name, who.email, who.is_admin) == (
        user.id,
        "ada",
        "ada@example.org",
        True,
    )
    async with db.session() as session:
        stored = await session.scalar(sa.select(ApiToken).where(ApiToken.user_id == user.id))
    assert stored is not None
    assert stored.last_used_at is not None


async def test_tokens_are_stored_only_hashed(db: Database) -> None:
    async with db.session() as session:
        user, token = await create_user(session, "grace", email="grace@example.org")
        second = await issue_token(session, user, label="laptop")
    assert token != second
    async with db.session() as session:
        rows = (await session.execute(sa.select(ApiToken.__table__))).mappings().all()
    assert len(rows) == 2
    everything = " ".join(str(value) for row in rows for value in row.values())
    for raw in (token, second):
        assert raw not in everything
        assert raw.removeprefix("wb_") not in everything
    assert {row["token_sha256"] for row in rows} == {
        hashlib.sha256(t.encode()).hexdigest() for t in (token, second)
    }
    async with db.session() as session:
        assert (await authenticate(session, second)).id == user.id


@pytest.mark.parametrize("token", [None, "", "wb_not-a-real-token"])
async def test_a_missing_or_wrong_token_is_unauthorized(db: Database, token: str | None) -> None:
    async with db.session() as session:
        _, real = await create_user(session, "linus", email="linus@example.org")
    async with db.session() as session:
        with pytest.raises(Unauthorized) as err:
            await authenticate(session, token)
    assert err.value.status == 401
    assert "token" in err.value.message
    assert real not in err.value.message


async def test_a_taken_name_or_bad_email_is_refused(db: Database) -> None:
    async with db.session() as session:
        await create_user(session, "alan", email="alan@example.org")
    with pytest.raises(Conflict, match="user 'alan' already exists"):
        async with db.session() as session:
            await create_user(session, "alan", email="other@example.org")
    with pytest.raises(WeighbridgeError, match="is not an email address") as err:
        async with db.session() as session:
            await create_user(session, "barbara", email="barbara")
    assert err.value.field == "email"
    with pytest.raises(WeighbridgeError, match="user name") as err:
        async with db.session() as session:
            await create_user(session, "no spaces", email="x@example.org")
    assert err.value.field == "name"
