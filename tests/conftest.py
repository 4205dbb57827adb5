"""Shared fixtures: one database per backend (SQLite always; Postgres and MariaDB when reachable).

Select backends with WEIGHBRIDGE_TEST_BACKENDS=sqlite,postgres,mariadb (default: all three).
Postgres and MariaDB tests are skipped with the reason when the server cannot be reached.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from core.context import Services, start_services
from core.db import Database
from core.migrate import upgrade_database
from core.models import SQLModel
from core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"
PG_HOST = os.environ.get("WEIGHBRIDGE_TEST_PG", "postgresql+asyncpg://postgres@127.0.0.1:5432")
MY_HOST = os.environ.get("WEIGHBRIDGE_TEST_MYSQL", "mysql+aiomysql://root@127.0.0.1:3306")
ALL_BACKENDS = ("sqlite", "postgres", "mariadb")


def selected_backends() -> list[str]:
    wanted = os.environ.get("WEIGHBRIDGE_TEST_BACKENDS", ",".join(ALL_BACKENDS))
    return [b for b in (w.strip() for w in wanted.split(",")) if b in ALL_BACKENDS]


def _reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


async def _admin(url: str, statements: list[str]) -> None:
    engine = sa.ext.asyncio.create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            for statement in statements:
                await conn.execute(sa.text(statement))
    finally:
        await engine.dispose()


def _create_server_database(backend: str) -> tuple[str, str]:
    """A fresh database on the server; returns (url, admin url)."""
    name = f"wb_test_{uuid.uuid4().hex[:10]}"
    if backend == "postgres":
        if not _reachable(5432):
            pytest.skip("Postgres is not reachable on 127.0.0.1:5432 (start it to run these)")
        admin = f"{PG_HOST}/postgres"
        asyncio.run(_admin(admin, [f'CREATE DATABASE "{name}"']))
        return f"{PG_HOST}/{name}", admin
    if not _reachable(3306):
        pytest.skip("MariaDB/MySQL is not reachable on 127.0.0.1:3306 (start it to run these)")
    admin = f"{MY_HOST}/mysql"
    asyncio.run(_admin(admin, [f"CREATE DATABASE `{name}`"]))
    return f"{MY_HOST}/{name}", admin


def _drop_server_database(backend: str, url: str, admin: str) -> None:
    """Drop a database `_create_server_database` made (Postgres: closing its connections)."""
    name = url.rsplit("/", 1)[1]
    quote = '"' if backend == "postgres" else "`"
    extra = " WITH (FORCE)" if backend == "postgres" else ""
    asyncio.run(_admin(admin, [f"DROP DATABASE IF EXISTS {quote}{name}{quote}{extra}"]))


@pytest.fixture(scope="session", params=selected_backends())
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated, empty database of each selected backend, shared by the session."""
    backend = request.param
    if backend == "sqlite":
        path = tmp_path_factory.mktemp("sqlite") / "weighbridge.db"
        url = f"sqlite+aiosqlite:///{path}"
        admin = None
    else:
        url, admin = _create_server_database(backend)

    async def migrate() -> None:
        db = Database(url)
        await upgrade_database(db)
        await db.dispose()

    asyncio.run(migrate())
    yield url
    if admin is not None:
        _drop_server_database(backend, url, admin)


async def clean_database(db: Database) -> None:
    """Delete every row (children first) so each test starts from an empty schema."""
    async with db.session() as session:
        for table in reversed(SQLModel.metadata.sorted_tables):
            await session.execute(table.delete())


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    await clean_database(database)
    yield database
    await database.dispose()


def make_settings(tmp_path: Path, database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "home": tmp_path / "home",
        "database_url": database_url,
        "task_configs": FIXTURES / "task_configs",
        "lease_seconds": 5.0,
        "retry_backoff_seconds": 0.1,
        "poll_seconds": 0.05,
        "_env_file": None,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path, database_url)


@pytest.fixture
async def services(settings: Settings, db: Database) -> AsyncIterator[Services]:
    started = await start_services(settings, migrate=False)
    yield started
    await started.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """Run the installed `weighbridge` command as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        ["weighbridge", *args], capture_output=True, text=True, env=full_env, timeout=timeout
    )


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """moto's server over HTTP on 127.0.0.1 (S3, SQS, ECR, SageMaker, SES), for the session;
    tests that use it make their own buckets and queues, so they never share state."""
    server_module = pytest.importorskip("moto.server", reason="moto[server] is not installed")
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    # moto's HTTP server logs every request at INFO: thousands of lines in a failure's report.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = free_port()
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
