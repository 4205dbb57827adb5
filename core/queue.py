"""Queues behind one Protocol: the database backend (embedded default) and the URL factory.

Delivery is at least once, oldest-available first (the time a message became visible, then
the order it was sent). A received message is leased: invisible until its lease expires
(a worker may extend it while a long job runs). `ack` removes it; `retry` makes it visible
again after a backoff, or dead-letters it with the error after `max_attempts`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlparse

import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from core.db import Database
from core.envelope import Envelope
from core.errors import WeighbridgeError
from core.models import QueueMessage, new_id, table_of


def eval_queue(server_id: str) -> str:
    """The logical queue of an evaluator fleet."""
    return f"eval.{server_id}"


BUILD_QUEUE = "build"


@dataclass
class Delivery:
    """A leased message: what it says, and the receipt needed to ack, extend or retry it."""

    queue: str
    envelope: Envelope
    receipt: str
    attempts: int
    max_attempts: int


@dataclass
class DeadLetter:
    queue: str
    message_id: str
    attempts: int
    last_error: str | None
    body: dict


class Queue(Protocol):
    async def stage(
        self, session: AsyncSession, queue: str, message: Envelope, *, delay: float = 0.0
    ) -> None:
        """Write the message in the caller's transaction (outbox): sent iff it commits."""

    async def send(self, queue: str, message: Envelope, *, delay: float = 0.0) -> None: ...
    async def receive(
        self,
        queues: Sequence[str],
        *,
        max_messages: int = 1,
        lease_seconds: float | None = None,
        wait_seconds: float = 0.0,
    ) -> list[Delivery]: ...
    async def extend(self, delivery: Delivery, seconds: float) -> bool: ...
    async def ack(self, delivery: Delivery) -> bool: ...
    async def ack_many(self, deliveries: Sequence[Delivery]) -> int: ...
    async def retry(self, delivery: Delivery, *, error: str, delay: float | None = None) -> bool:
        """Make the message visible again after a backoff; True when it was dead-lettered."""

    async def dead_letters(self, queue: str) -> list[DeadLetter]: ...
    async def take_expired(self) -> list[tuple[Delivery, str]]:
        """Messages dead-lettered because the worker holding the last attempt died."""

    async def depth(self, queue: str) -> int: ...
    async def close(self) -> None: ...


class DbQueue:
    """The queue as a table: SKIP LOCKED claims on Postgres/MySQL, a guarded update on SQLite."""

    def __init__(
        self,
        database: Database,
        *,
        lease_seconds: float = 60.0,
        max_attempts: int = 3,
        backoff_seconds: float = 2.0,
        poll_seconds: float = 0.2,
    ) -> None:
        self.db = database
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.poll_seconds = poll_seconds
        self._last_sweep = 0.0
        self._expired: list[tuple[Delivery, str]] = []

    def _values(self, queue: str, message: Envelope, delay: float) -> dict[str, Any]:
        now = time.time()
        return {
            "queue": queue,
            "message_id": message.message_id,
            "body": message.model_dump(mode="json"),
            "attempts": 0,
            "max_attempts": self.max_attempts,
            "available_at": now + max(0.0, delay),
            "lease_token": None,
            "dead": False,
            "last_error": None,
            "created_at": now,
        }

    @asynccontextmanager
    async def _statement(self) -> AsyncIterator[AsyncConnection]:
        """A connection for one statement that commits on its own (the hot path: fewer trips)."""
        async with self.db.autocommit_engine.connect() as conn:
            yield conn

    async def stage(
        self, session: AsyncSession, queue: str, message: Envelope, *, delay: float = 0.0
    ) -> None:
        session.add(QueueMessage(**self._values(queue, message, delay)))

    async def send(self, queue: str, message: Envelope, *, delay: float = 0.0) -> None:
        async with self._statement() as conn:
            await conn.execute(
                sa.insert(table_of(QueueMessage)), [self._values(queue, message, delay)]
            )

    async def send_many(self, queue: str, messages: Sequence[Envelope]) -> None:
        """Send all or none, in one transaction (Core executemany: no ORM objects)."""
        if not messages:
            return
        async with self.db.engine.begin() as conn:
            await conn.execute(
                sa.insert(table_of(QueueMessage)), [self._values(queue, m, 0.0) for m in messages]
            )

    async def receive(
        self,
        queues: Sequence[str],
        *,
        max_messages: int = 1,
        lease_seconds: float | None = None,
        wait_seconds: float = 0.0,
    ) -> list[Delivery]:
        deadline = time.monotonic() + wait_seconds
        lease = self.lease_seconds if lease_seconds is None else lease_seconds
        while True:
            if time.monotonic() - self._last_sweep > 1.0:
                await self._sweep_expired(list(queues))
            deliveries = await self._claim(list(queues), max_messages, lease)
            if deliveries or time.monotonic() >= deadline:
                return deliveries
            await asyncio.sleep(min(self.poll_seconds, max(0.0, deadline - time.monotonic())))

    async def _claim(self, queues: list[str], limit: int, lease: float) -> list[Delivery]:
        qm = table_of(QueueMessage)
        now = time.time()
        token = new_id()
        # Oldest-available first, in the claim index's own order (queue, dead, available_at,
        # id): the scan stops after `limit` rows. Ordering by id alone made every claim sort
        # all ready rows (SQLite, MySQL) or walk past every leased one (Postgres).
        ready = (
            sa.select(qm.c.id)
            .where(
                qm.c.queue == queues[0] if len(queues) == 1 else qm.c.queue.in_(queues),
                qm.c.dead == sa.false(),
                qm.c.available_at <= now,
                qm.c.attempts < qm.c.max_attempts,
            )
            .order_by(qm.c.available_at, qm.c.id)
            .limit(limit)
        )
        claim = {"available_at": now + lease, "attempts": qm.c.attempts + 1, "lease_token": token}
        returned = (qm.c.id, qm.c.queue, qm.c.body, qm.c.attempts, qm.c.max_attempts)
        if self.db.dialect == "mysql":
            async with self.db.session() as session:
                # MySQL cannot UPDATE ... WHERE id IN (SELECT ... LIMIT) nor RETURNING.
                ids = list(
                    (await session.execute(ready.with_for_update(skip_locked=True))).scalars()
                )
                if not ids:
                    return []
                await session.execute(sa.update(qm).where(qm.c.id.in_(ids)).values(**claim))
                rows = (
                    await session.execute(
                        sa.select(*returned).where(qm.c.id.in_(ids)).order_by(qm.c.id)
                    )
                ).all()
        else:
            # One statement: SKIP LOCKED on Postgres; on SQLite the single writer serialises
            # claims, and the guard on available_at makes a concurrent claim lose cleanly.
            sub = ready.with_for_update(skip_locked=True).scalar_subquery()
            stmt = (
                sa.update(qm)
                .where(qm.c.id.in_(sub), qm.c.available_at <= now)
                .values(**claim)
                .returning(*returned)
            )
            async with self._statement() as conn:
                rows = (await conn.execute(stmt)).all()
        deliveries, invalid = [], []
        for row in sorted(rows, key=lambda r: r.id):
            try:
                envelope = Envelope.model_validate(row.body)
            except ValidationError as exc:
                invalid.append((row.id, f"invalid message body, not an event envelope: {exc}"))
                continue
            deliveries.append(
                Delivery(
                    queue=row.queue,
                    envelope=envelope,
                    receipt=f"{row.id}:{token}",
                    attempts=row.attempts,
                    max_attempts=row.max_attempts,
                )
            )
        if invalid:
            # A malformed message can never succeed: dead-letter it at once, keep the worker going.
            async with self.db.session() as session:
                for row_id, error in invalid:
                    await session.execute(
                        sa.update(qm)
                        .where(qm.c.id == row_id, qm.c.lease_token == token)
                        .values(dead=True, lease_token=None, last_error=error[:8000])
                    )
        return deliveries

    async def _sweep_expired(self, queues: list[str]) -> None:
        """Dead-letter messages whose last allowed lease ran out (the worker died each time)."""
        self._last_sweep = time.monotonic()
        qm = table_of(QueueMessage)
        now = time.time()
        expired = (
            qm.c.queue.in_(queues),
            qm.c.dead == sa.false(),
            qm.c.attempts >= qm.c.max_attempts,
            qm.c.available_at <= now,
        )
        async with self.db.session() as session:
            # Find the rows with a plain (non-locking) read, then update them by primary key with
            # the conditions checked again. A scanning UPDATE (or a locking read) waits on
            # MySQL/MariaDB for every row an open transaction holds, e.g. an outbox insert not
            # yet committed, which stalled every consumer for the lock timeout; its gap locks
            # also deadlocked with concurrent claims.
            ids = list((await session.execute(sa.select(qm.c.id).where(*expired))).scalars())
            if not ids:
                return
            # The sweep's own token marks the rows this sweep (not a concurrent one) killed.
            token = new_id()
            await session.execute(
                sa.update(qm)
                .where(qm.c.id.in_(ids), *expired)
                .values(
                    dead=True,
                    lease_token=token,
                    # Say why it died now; keep an earlier attempt's error after it, if any.
                    last_error=sa.literal(
                        "the lease expired on the last attempt (the worker stopped without an ack)"
                    )
                    + sa.func.coalesce(
                        sa.literal("; the attempt before failed with: ") + qm.c.last_error, ""
                    ),
                )
            )
            swept = (
                await session.execute(
                    sa.select(
                        qm.c.id,
                        qm.c.queue,
                        qm.c.body,
                        qm.c.attempts,
                        qm.c.max_attempts,
                        qm.c.last_error,
                    ).where(qm.c.lease_token == token, qm.c.id.in_(ids))
                )
            ).all()
        for row in swept:
            try:
                envelope = Envelope.model_validate(row.body)
            except ValidationError:
                continue
            delivery = Delivery(
                queue=row.queue,
                envelope=envelope,
                receipt=f"{row.id}:{token}",
                attempts=row.attempts,
                max_attempts=row.max_attempts,
            )
            self._expired.append((delivery, row.last_error or "the lease expired"))

    async def take_expired(self) -> list[tuple[Delivery, str]]:
        """Messages this queue dead-lettered because their last lease ran out, with the error.

        The consumer hands them to its `on_dead` so the work they stood for is recorded as
        failed instead of staying in progress for ever.
        """
        expired, self._expired = self._expired, []
        return expired

    @staticmethod
    def _parse(receipt: str) -> tuple[int, str]:
        row_id, token = receipt.split(":", 1)
        return int(row_id), token

    async def extend(self, delivery: Delivery, seconds: float) -> bool:
        row_id, token = self._parse(delivery.receipt)
        qm = table_of(QueueMessage)
        async with self._statement() as conn:
            result = await conn.execute(
                sa.update(qm)
                .where(qm.c.id == row_id, qm.c.lease_token == token)
                .values(available_at=time.time() + seconds)
            )
        return result.rowcount == 1

    async def ack(self, delivery: Delivery) -> bool:
        return await self.ack_many([delivery]) == 1

    async def ack_many(self, deliveries: Sequence[Delivery]) -> int:
        if not deliveries:
            return 0
        qm = table_of(QueueMessage)
        # Grouped by lease token: a batch from one receive is one `token = ? AND id IN (...)`.
        by_token: dict[str, list[int]] = {}
        for d in deliveries:
            row_id, token = self._parse(d.receipt)
            by_token.setdefault(token, []).append(row_id)
        held = [sa.and_(qm.c.lease_token == t, qm.c.id.in_(ids)) for t, ids in by_token.items()]
        async with self._statement() as conn:
            result = await conn.execute(sa.delete(qm).where(sa.or_(*held)))
        return result.rowcount

    async def retry(self, delivery: Delivery, *, error: str, delay: float | None = None) -> bool:
        row_id, token = self._parse(delivery.receipt)
        qm = table_of(QueueMessage)
        dead = delivery.attempts >= delivery.max_attempts
        if delay is None:
            delay = self.backoff_seconds * (2 ** max(0, delivery.attempts - 1))
        values: dict = {"last_error": error[-8000:], "lease_token": None}
        if dead:
            values["dead"] = True
        else:
            values["available_at"] = time.time() + delay
        async with self._statement() as conn:
            await conn.execute(
                sa.update(qm).where(qm.c.id == row_id, qm.c.lease_token == token).values(**values)
            )
        return dead

    async def dead_letters(self, queue: str) -> list[DeadLetter]:
        qm = table_of(QueueMessage)
        async with self.db.session() as session:
            rows = (
                await session.execute(
                    sa.select(qm)
                    .where(qm.c.queue == queue, qm.c.dead == sa.true())
                    .order_by(qm.c.id)
                )
            ).all()
        return [
            DeadLetter(
                queue=r.queue,
                message_id=r.message_id,
                attempts=r.attempts,
                last_error=r.last_error,
                body=r.body,
            )
            for r in rows
        ]

    async def depth(self, queue: str) -> int:
        qm = table_of(QueueMessage)
        async with self.db.session() as session:
            return int(
                (
                    await session.execute(
                        sa.select(sa.func.count()).where(
                            qm.c.queue == queue, qm.c.dead == sa.false()
                        )
                    )
                ).scalar_one()
            )

    async def close(self) -> None:
        return None


def queue_from_url(url: str, *, database: Database, **options: float | int) -> Queue:
    """The backend for a URL: `db://` (tables in the database) or `sqs://?prefix=...`."""
    scheme = urlparse(url).scheme
    if scheme == "db":
        return DbQueue(database, **options)  # type: ignore[arg-type]
    if scheme == "sqs":
        raise WeighbridgeError(
            "the SQS queue backend is not part of this build yet; use db://",
            field="WEIGHBRIDGE_QUEUE_URL",
        )
    raise WeighbridgeError(
        f"unknown queue URL scheme {scheme!r}; use db:// or sqs://?prefix=...",
        field="WEIGHBRIDGE_QUEUE_URL",
    )
