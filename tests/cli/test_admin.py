"""Commands that work on the database directly: `admin create-user`, `db upgrade`."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from core.accounts import authenticate
from core.db import Database
from core.models import User
from tests.cli.conftest import Cli, Server, clean_env, free_port


@pytest.fixture
def cli(cli: Cli) -> Cli:
    """A user's shell where the server's database exists (as `weighbridge up` leaves it)."""
    assert cli.run("db", "upgrade").returncode == 0
    return cli


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


def test_create_user_says_where_it_acted(cli: Cli, tmp_path: Path) -> None:
    result = cli.run("admin", "create-user", "erin", "--email", "erin@example.com")
    assert result.returncode == 0, result.stderr
    assert str(tmp_path / "home") in result.stdout
    assert "weighbridge.db" in result.stdout
    # Nothing answers at the public URL: the user is told the token was not tried.
    assert "no Weighbridge server answered" in result.stderr + result.stdout


def test_create_user_refuses_a_home_without_a_database(tmp_path: Path) -> None:
    """Run from the wrong folder, it must not make a second database a server never reads."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = clean_env(elsewhere, WEIGHBRIDGE_PUBLIC_URL=f"http://127.0.0.1:{free_port()}")
    env.pop("WEIGHBRIDGE_HOME")  # the default: ./.weighbridge of the current folder
    stray = Cli(env=env, cwd=elsewhere)
    result = stray.run("admin", "create-user", "frank", "--email", "frank@example.com")
    assert result.returncode == 1
    assert "there is no Weighbridge database" in result.stderr
    assert str(elsewhere / ".weighbridge") in result.stderr
    assert not (elsewhere / ".weighbridge" / "weighbridge.db").exists()


def test_create_user_refuses_when_the_server_uses_another_database(
    server: Server, tmp_path: Path
) -> None:
    other = Cli(env=clean_env(tmp_path, WEIGHBRIDGE_URL=server.url), cwd=tmp_path)
    assert other.run("db", "upgrade").returncode == 0
    result = other.run("admin", "create-user", "grace", "--email", "grace@example.com")
    assert result.returncode == 1
    assert f"the server at {server.url} does not use this database" in result.stderr
    assert "token" not in result.stdout
    # Nothing was kept in the database the server does not read.
    again = other.run("admin", "create-user", "grace", "--email", "grace@example.com", "--json")
    assert "already exists" not in again.stderr


def test_create_user_on_the_servers_database_is_checked(server: Server) -> None:
    created = server.cli.json("admin", "create-user", "heidi", "--email", "heidi@example.com")
    assert created["server_checked"] is True
    assert created["url"] == server.url
    token = server.cli.run(
        "admin", "create-user", "ivan", "--email", "ivan@example.com", "--token-only"
    )
    assert token.returncode == 0, token.stderr
    assert token.stdout.strip().startswith("wb_") and len(token.stdout.strip().split()) == 1


async def test_admin_queue_shows_depths_and_dead_letters_and_redrives_one(
    cli: Cli, tmp_path: Path
) -> None:
    from core.queue import DbQueue
    from tests.core.factories import make_envelope

    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'home' / 'weighbridge.db'}")
    q = DbQueue(db, max_attempts=1)
    try:
        waiting, dying = make_envelope(1), make_envelope(2)
        await q.send("eval-default", waiting)
        await q.send("build", dying)
        (taken,) = await q.receive(["build"])
        assert await q.retry(taken, error="RuntimeError: the disk is full\ntraceback...")
    finally:
        await db.dispose()

    report = cli.json("admin", "queue")
    by_queue = {row["queue"]: row for row in report["queues"]}
    assert by_queue["eval-default"]["waiting"] == 1
    assert by_queue["build"]["dead_letters"] == 1
    assert by_queue["build"]["dead_letters_unrecorded"] == 1  # no builder ran to record it
    (letter,) = report["dead_letters"]
    assert letter["message_id"] == dying.message_id
    assert letter["error"].startswith("RuntimeError: the disk is full")

    human = cli.run("admin", "queue")
    assert human.returncode == 0, human.stderr
    assert "dead letters" in human.stdout and "not yet" in human.stdout

    redriven = cli.json("admin", "queue", "--redrive", dying.message_id)
    assert redriven["redriven"] == {"message_id": dying.message_id, "queue": "build"}
    by_queue = {row["queue"]: row for row in redriven["queues"]}
    assert (by_queue["build"]["waiting"], by_queue["build"]["dead_letters"]) == (1, 0)

    unknown = cli.run("admin", "queue", "--redrive", "f" * 32)
    assert unknown.returncode == 1 and "no dead letter" in unknown.stderr
