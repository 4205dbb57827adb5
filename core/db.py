"""Async engines and sessions for SQLite, Postgres and MySQL/MariaDB, built from a URL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the one writer; busy_timeout makes writers wait, not fail.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_engine(url: str, *, echo: bool = False, **options: Any) -> AsyncEngine:
    """An engine for the URL; SQLite files get their folder created and WAL switched on."""
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"echo": echo}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 30}
    else:
        kwargs.update(pool_pre_ping=True, pool_size=10, max_overflow=10, pool_recycle=1800)
    if parsed.get_backend_name() == "mysql":
        # Postgres' default. MySQL's REPEATABLE READ keeps locks on every row a locking read
        # scans (acked rows not yet purged included) and takes gap locks, so concurrent queue
        # claims (SELECT ... FOR UPDATE SKIP LOCKED) deadlocked and blocked outbox inserts.
        kwargs["isolation_level"] = "READ COMMITTED"
    kwargs.update(options)
    engine = create_async_engine(url, **kwargs)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


class Database:
    """An engine and its session factory; the boundary (request, message) owns each session."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self.echo = echo
        self.engine = create_engine(url, echo=echo)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._autocommit: AsyncEngine | None = None

    @property
    def autocommit_engine(self) -> AsyncEngine:
        """An engine whose statements each commit on their own, for one-statement hot paths.

        No BEGIN/COMMIT round trips, and its pre-ping is one round trip where a connection
        in a transaction mode pings in three on asyncpg (BEGIN, ping, ROLLBACK).
        """
        if self._autocommit is None:
            parsed = make_url(self.url)
            if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
                # Each connection to :memory: is its own database: share the main engine's.
                self._autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")
            else:
                self._autocommit = create_engine(
                    self.url, echo=self.echo, isolation_level="AUTOCOMMIT"
                )
        return self._autocommit

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session that commits when the block ends normally and rolls back otherwise."""
        async with self.sessions() as session:
            try:
                yield session
                await session.commit()
            except BaseException:
                await session.rollback()
                raise

    async def check(self) -> None:
        """Raise when the database cannot be reached (one round trip)."""
        async with self.autocommit_engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self._autocommit is not None:
            await self._autocommit.dispose()
