"""Commands that work on the database directly: `admin create-user`, `db upgrade`."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from core.accounts import authenticate
from core.db import Database
from core.models import User
from tests.cli.conftest import Cli


async def test_create_user_prints_a_token_that_authenticates(cli: Cli, tmp_path: Path) -> None:
    created = cli.json("admin", "create-user", "alice", "--email", "alice@example.com", "--admin")

    assert created["name"] == "alice"
    assert created["is_admin"] is True
    assert created["token"].startswith("wb_")
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'home' / 'weighbridge.db'}")
    try:
        async with db.session() as session:
            user = await authenticate(session, created["token"])
            assert (user.name, user.email, user.is_admin) == ("alice", "alice@example.com", True)
            # Only the hash is kept: the token appears nowhere in the database file.
            assert await session.scalar(sa.select(sa.func.count()).select_from(User)) == 1
    finally:
        await db.dispose()
    assert created["token"].encode() not in (tmp_path / "home" / "weighbridge.db").read_bytes()


def test_create_user_human_output_shows_the_token_once(cli: Cli) -> None:
    result = cli.run("admin", "create-user", "bob", "--email", "bob@example.com")
    assert result.returncode == 0, result.stderr
    token_lines = [line for line in result.stdout.splitlines() if line.startswith("wb_")]
    assert len(token_lines) == 1
    assert "weighbridge login --url" in result.stdout


def test_create_user_twice_fails_with_the_reason(cli: Cli) -> None:
    cli.json("admin", "create-user", "carol", "--email", "carol@example.com")
    again = cli.run("admin", "create-user", "carol", "--email", "c@example.com", "--json")
    assert again.returncode == 1
    assert "already exists" in again.stderr
    assert again.stdout == ""


def test_create_user_with_a_bad_email_is_a_usage_error(cli: Cli) -> None:
    result = cli.run("admin", "create-user", "dave", "--email", "not-an-address")
    assert result.returncode == 2
    assert "not an email address" in result.stderr


def test_db_upgrade_creates_the_database(cli: Cli, tmp_path: Path) -> None:
    result = cli.run("db", "upgrade")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "home" / "weighbridge.db").exists()
    assert "up to date" in result.stdout
