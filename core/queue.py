"""Queues behind one Protocol: the database backend (embedded default) and the URL factory.

Delivery is at least once, oldest-available first (the time a message became visible, then
the order it was sent). A received message is leased: invisible until its lease expires
(a worker may extend it while a long job runs). `ack` removes it; `release` hands it back
without spending an attempt (a worker shutting down); `retry` makes it visible again after a
jittered, capped backoff.

Dead letters are durable and belong to the queue's own consumers, as with SQS: a message
that used its last attempt (failed, or its holder died) moves to the queue's dead-letter
queue `<queue>-dlq`, where it is a message like any other. The consumers of `<queue>` also
receive from `<queue>-dlq` and hand each dead letter to their `on_dead` (which records the
failure, idempotently), then `settle` it: it stays in the dead-letter queue, listed by
`dead_letters` until an operator redrives or deletes it. A crash between the two only means
`on_dead` runs again. Expiry is decided by the database's clock, never a worker's.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlparse

import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from core.db import Database
from core.envelope import Envelope
from core.errors import WeighbridgeError
from core.models import QueueMessage, new_id, table_of

# Valid SQS queue names: letters, digits, '-' and '_', at most 80 characters with a prefix
# (up to 12) and the dead-letter suffix: 64 here (eval_server_id has at most 59).
QUEUE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DLQ_SUFFIX = "-dlq"
# Retry backoff: exponential from the base, capped, with "equal jitter" (half fixed, half
# random) so retries of many messages that failed together do not come back together.
MAX_BACKOFF_SECONDS = 300.0
# How often the consumers try to record a dead letter (their on_dead) before keeping it
# unrecorded, for an operator: a failure must not be lost to a passing fault.
DEAD_LETTER_TRIES = 10


def check_queue_name(name: str) -> str:
    if not QUEUE_NAME.match(name):
        raise ValueError(
            f"queue name {name!r} is not valid: use 1-64 letters, digits, '-' or '_' "
            "(SQS's rule, leaving room for a prefix and the -dlq suffix)"
        )
    return name


def eval_queue(server_id: str) -> str:
    """The logical queue of an evaluator fleet."""
    return check_queue_name(f"eval-{server_id}")


def fleet_of_queue(queue: str) -> str | None:
    """The fleet whose evaluators receive `queue` (an eval queue or its dead letters)."""
    name = queue.removesuffix(DLQ_SUFFIX)
    return name.removeprefix("eval-") if name.startswith("eval-") else None


def dead_letter_queue(queue: str) -> str:
    """Where the messages of `queue` go when they used their last attempt."""
    return queue if queue.endswith(DLQ_SUFFIX) else queue + DLQ_SUFFIX


def is_dead_letter_queue(queue: str) -> bool:
    return queue.endswith(DLQ_SUFFIX)


def backoff(base: float, attempts: int, *, cap: float = MAX_BACKOFF_SECONDS) -> float:
    """Seconds before attempt `attempts + 1`: base·2^(attempts-1), capped, equal jitter."""
    ceiling = min(cap, base * (2 ** max(0, min(attempts - 1, 30))))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


BUILD_QUEUE = "build"


@dataclass
class Delivery:
    """A leased message: what it says, and the receipt needed to ack, extend or retry it.

    From a dead-letter queue, `error` says why the message died (and `attempts` counts the
    tries to record that, not the tries of the work itself)."""

    queue: str
    envelope: Envelope
    receipt: str
    attempts: int
    max_attempts: int
    error: str | None = None

    @property
    def dead(self) -> bool:
        """A dead letter, for the queue's `on_dead`."""
        return is_dead_letter_queue(self.queue)


@dataclass
class DeadLetter:
    queue: str
    message_id: str
    attempts: int
    last_error: str | None
    body: dict
    # Recorded by the queue's consumers (`on_dead` ran); False while it waits for them.
    settled: bool = True
    # `attempts` counts the work's attempts and then the tries to record it.


class Queue(Protocol):
    """A queue transport. Senders inside a transaction stage through `core.outbox.Outbox`
    (sent iff the transaction commits); `send` is for messages that belong to no transaction."""

    async def send(self, queue: str, message: Envelope, *, delay: float = 0.0) -> None: ...
    async def receive(
        self,
        queues: Sequence[str],
        *,
        max_messages: int = 1,
        lease_seconds: float | None = None,
        wait_seconds: float = 0.0,
    ) -> list[Delivery]: ...
    async def extend(self, delivery: Delivery, seconds: float) -> bool:
        """Keep holding the message `seconds` longer; False when the lease was lost."""

    async def ack(self, delivery: Delivery) -> bool: ...
    async def ack_many(self, deliveries: Sequence[Delivery]) -> int: ...
    async def release(self, delivery: Delivery) -> bool:
        """Hand the message back at once, the attempt not counted (a worker shutting down)."""

    async def retry(self, delivery: Delivery, *, error: str, delay: float | None = None) -> bool:
        """Make the message visible again after a backoff; True when, its attempts used, it
        went to the dead-letter queue instead."""

    async def settle(self, delivery: Delivery, *, error: str | None = None) -> bool:
        """Keep a dead letter, recorded, in its dead-letter queue (after `on_dead` ran)."""

    async def dead_letter(self, delivery: Delivery, *, error: str) -> bool:
        """Move the message to its dead-letter queue now, its attempts unspent: retrying
        could not help (a message no receiver can read)."""

    async def dead_letters(self, queue: str) -> list[DeadLetter]: ...
    async def redrive(self, queue: str, message_id: str) -> bool:
        """Send a dead letter of `queue` back to it with fresh attempts."""

    async def depth(self, queue: str) -> int: ...
    async def in_flight(self, queue: str) -> int:
        """Messages of `queue` leased to a worker right now."""

    async def queues(self) -> list[str]:
        """Every queue (dead-letter queues included) that holds a message."""

    async def counts(self) -> list[tuple[str, bool, int]]:
        """(queue, dead, how many) for every queue that holds messages (Prometheus)."""

    async def close(self) -> None: ...


class DbQueue:
    """The queue as a table: SKIP LOCKED claims on Postgres/MySQL, a guarded update on SQLite.

    Times (`available_at`, `created_at`) are epoch seconds from the database's own clock, so
    workers whose clocks disagree still agree on when a lease runs out.
    """

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
        # When each set of queues was last swept (consumers of other queues share this object).
        self._last_sweep: dict[tuple[str, ...], float] = {}

    def _now(self) -> Any:
        """The database's clock, as epoch seconds (a SQL expression)."""
        return database_epoch(self.db.dialect)

    def _values(self, queue: str, message: Envelope, delay: float) -> dict[str, Any]:
        now = self._now()
        return {
            "queue": check_queue_name(queue),
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

    async def insert_in(
        self, session: AsyncSession, queue: str, message: Envelope, *, delay: float = 0.0
    ) -> None:
        """Insert the message in the caller's transaction: the table is its own outbox
        (`core.outbox.QueueTableOutbox`), published when that transaction commits."""
        # Core insert in the caller's transaction: the SQL clock expressions need no ORM object.
        await session.execute(
            sa.insert(table_of(QueueMessage)).values(**self._values(queue, message, delay))
        )

    async def send(self, queue: str, message: Envelope, *, delay: float = 0.0) -> None:
        """Send once per message id: sending a message the table still holds (a relay that
        died before it could delete its outbox row sends it again) changes nothing."""
        qm = table_of(QueueMessage)
        try:
            async with self._statement() as conn:
                await conn.execute(sa.insert(qm).values(**self._values(queue, message, delay)))
        except IntegrityError:
            async with self._statement() as conn:
                held = await conn.execute(
                    sa.select(qm.c.id).where(qm.c.message_id == message.message_id)
                )
                if held.first() is None:
                    raise

    async def send_many(self, queue: str, messages: Sequence[Envelope]) -> None:
        """Send all or none, in one transaction."""
        if not messages:
            return
        qm = table_of(QueueMessage)
        async with self.db.engine.begin() as conn:
            now = float((await conn.execute(sa.select(self._now()))).scalar_one())
            rows = []
            for m in messages:
                values = self._values(queue, m, 0.0)
                values["available_at"] = values["created_at"] = now
                rows.append(values)
            await conn.execute(sa.insert(qm), rows)

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
        swept = tuple(sorted(queues))
        while True:
            if time.monotonic() - self._last_sweep.get(swept, 0.0) > 1.0:
                self._last_sweep[swept] = time.monotonic()
                await self._sweep_expired(list(queues))
            deliveries = await self._claim(list(queues), max_messages, lease)
            if deliveries or time.monotonic() >= deadline:
                return deliveries
            await asyncio.sleep(min(self.poll_seconds, max(0.0, deadline - time.monotonic())))

    async def _claim(self, queues: list[str], limit: int, lease: float) -> list[Delivery]:
        qm = table_of(QueueMessage)
        now = self._now()
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
        returned = (
            qm.c.id,
            qm.c.queue,
            qm.c.body,
            qm.c.attempts,
            qm.c.max_attempts,
            qm.c.last_error,
        )
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
            dead = is_dead_letter_queue(row.queue)
            deliveries.append(
                Delivery(
                    queue=row.queue,
                    envelope=envelope,
                    receipt=f"{row.id}:{token}",
                    # A dead letter keeps the count of its work's attempts; the tries to record
                    # it come on top (its limit was raised by DEAD_LETTER_TRIES when it died).
                    attempts=row.max_attempts - DEAD_LETTER_TRIES if dead else row.attempts,
                    max_attempts=row.max_attempts,
                    error=row.last_error if dead else None,
                )
            )
        if invalid:
            # A malformed message can never succeed, nor tell whom it failed: it is kept as a
            # settled dead letter at once, and the worker goes on.
            async with self.db.session() as session:
                for row_id, error in invalid:
                    await session.execute(
                        sa.update(qm)
                        .where(qm.c.id == row_id, qm.c.lease_token == token)
                        .values(
                            queue=_dlq_of(qm.c.queue),
                            dead=True,
                            lease_token=None,
                            last_error=error[:8000],
                        )
                    )
        return deliveries

    async def _sweep_expired(self, queues: list[str]) -> None:
        """Move messages whose last allowed lease ran out (the worker died each time) to
        their dead-letter queue, where this queue's consumers record them."""
        qm = table_of(QueueMessage)
        now = self._now()
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
            why = sa.literal(
                "the lease expired on the last attempt (the worker stopped without an ack)"
            ) + sa.func.coalesce(
                sa.literal("; the attempt before failed with: ") + qm.c.last_error, ""
            )
            # A dead letter whose recording kept dying is kept as it is (settled); any other
            # message moves to its dead-letter queue to be recorded.
            await session.execute(
                sa.update(qm)
                .where(qm.c.id.in_(ids), *expired, _in_dlq(qm.c.queue))
                .values(dead=True, lease_token=None, last_error=why)
            )
            await session.execute(
                sa.update(qm)
                .where(qm.c.id.in_(ids), *expired, sa.not_(_in_dlq(qm.c.queue)))
                .values(
                    queue=_dlq_of(qm.c.queue),
                    max_attempts=qm.c.attempts + DEAD_LETTER_TRIES,
                    available_at=now,
                    lease_token=None,
                    last_error=why,
                )
            )

    @staticmethod
    def _parse(receipt: str) -> tuple[int, str]:
        row_id, token = receipt.split(":", 1)
        return int(row_id), token

    async def _update_held(self, delivery: Delivery, *where: Any, **values: Any) -> bool:
        """Update the row only while this delivery still holds it; True when it did."""
        row_id, token = self._parse(delivery.receipt)
        qm = table_of(QueueMessage)
        async with self._statement() as conn:
            result = await conn.execute(
                sa.update(qm)
                .where(qm.c.id == row_id, qm.c.lease_token == token, *where)
                .values(**values)
            )
        return result.rowcount == 1

    async def extend(self, delivery: Delivery, seconds: float) -> bool:
        return await self._update_held(delivery, available_at=self._now() + seconds)

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

    async def release(self, delivery: Delivery) -> bool:
        qm = table_of(QueueMessage)
        return await self._update_held(
            delivery,
            available_at=self._now(),
            attempts=sa.case((qm.c.attempts > 0, qm.c.attempts - 1), else_=0),
            lease_token=None,
        )

    async def retry(self, delivery: Delivery, *, error: str, delay: float | None = None) -> bool:
        qm = table_of(QueueMessage)
        # The row's own count decides whether attempts are left, never this worker's copy.
        last = qm.c.attempts >= qm.c.max_attempts
        if delay is None:
            delay = backoff(self.backoff_seconds, delivery.attempts)
        if await self._update_held(
            delivery,
            sa.not_(last),
            available_at=self._now() + delay,
            last_error=error[-8000:],
            lease_token=None,
        ):
            return False
        if is_dead_letter_queue(delivery.queue):
            # Recording the dead letter failed every time: keep it, with both stories.
            return await self._update_held(
                delivery,
                last,
                dead=True,
                lease_token=None,
                last_error=sa.func.coalesce(qm.c.last_error, "")
                + sa.literal(f"; recording it failed: {error[-4000:]}"),
            )
        return await self._update_held(
            delivery,
            last,
            queue=_dlq_of(qm.c.queue),
            max_attempts=qm.c.attempts + DEAD_LETTER_TRIES,
            available_at=self._now(),
            lease_token=None,
            last_error=error[-8000:],
        )

    async def settle(self, delivery: Delivery, *, error: str | None = None) -> bool:
        values: dict[str, Any] = {"dead": True, "lease_token": None}
        if error is not None:
            values["last_error"] = error[-8000:]
        return await self._update_held(delivery, **values)

    async def dead_letter(self, delivery: Delivery, *, error: str) -> bool:
        if is_dead_letter_queue(delivery.queue):
            return await self.settle(delivery, error=error)
        qm = table_of(QueueMessage)
        return await self._update_held(
            delivery,
            queue=_dlq_of(qm.c.queue),
            max_attempts=qm.c.attempts + DEAD_LETTER_TRIES,
            available_at=self._now(),
            lease_token=None,
            last_error=error[-8000:],
        )

    async def dead_letters(self, queue: str) -> list[DeadLetter]:
        qm = table_of(QueueMessage)
        async with self.db.session() as session:
            rows = (
                await session.execute(
                    sa.select(qm).where(qm.c.queue == dead_letter_queue(queue)).order_by(qm.c.id)
                )
            ).all()
        return [
            DeadLetter(
                queue=queue,
                message_id=r.message_id,
                attempts=r.attempts,
                last_error=r.last_error,
                body=r.body,
                settled=bool(r.dead),
            )
            for r in rows
        ]

    async def redrive(self, queue: str, message_id: str) -> bool:
        qm = table_of(QueueMessage)
        async with self._statement() as conn:
            result = await conn.execute(
                sa.update(qm)
                .where(qm.c.queue == dead_letter_queue(queue), qm.c.message_id == message_id)
                .values(
                    queue=queue,
                    dead=False,
                    attempts=0,
                    max_attempts=self.max_attempts,
                    available_at=self._now(),
                    lease_token=None,
                )
            )
        return result.rowcount == 1

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

    async def in_flight(self, queue: str) -> int:
        qm = table_of(QueueMessage)
        async with self.db.session() as session:
            return int(
                (
                    await session.execute(
                        sa.select(sa.func.count()).where(
                            qm.c.queue == queue,
                            qm.c.dead == sa.false(),
                            qm.c.lease_token.is_not(None),
                            qm.c.available_at > self._now(),
                        )
                    )
                ).scalar_one()
            )

    async def queues(self) -> list[str]:
        """Every queue (dead-letter queues included) that holds a message."""
        qm = table_of(QueueMessage)
        async with self.db.session() as session:
            return sorted((await session.execute(sa.select(qm.c.queue).distinct())).scalars())

    async def counts(self) -> list[tuple[str, bool, int]]:
        async with self.db.session() as session:
            return await count_messages(session)

    async def close(self) -> None:
        return None


async def count_messages(session: AsyncSession) -> list[tuple[str, bool, int]]:
    """(queue, dead, how many) for every queue of the queue table; `dead` rows are the
    recorded dead letters (kept in the table by either transport)."""
    qm = table_of(QueueMessage)
    rows = await session.execute(
        sa.select(qm.c.queue, qm.c.dead, sa.func.count()).group_by(qm.c.queue, qm.c.dead)
    )
    return [(queue, bool(dead), int(count)) for queue, dead, count in rows]


def _in_dlq(column: Any) -> Any:
    return column.like(f"%{DLQ_SUFFIX}")


def _dlq_of(column: Any) -> Any:
    """`<queue>-dlq` computed in SQL (a dead-letter queue stays itself)."""
    return sa.case((_in_dlq(column), column), else_=column + DLQ_SUFFIX)


def database_epoch(dialect: str) -> Any:
    """Now, as epoch seconds with sub-second precision, by the database's clock."""
    if dialect == "postgresql":
        # clock_timestamp, not now(): a long transaction must not see time stand still.
        return sa.extract("epoch", sa.func.clock_timestamp())
    if dialect == "mysql":
        return sa.cast(sa.func.unix_timestamp(sa.func.now(6)), sa.Double())
    return sa.literal_column("((julianday('now') - 2440587.5) * 86400.0)", sa.Double())


def queue_from_url(
    url: str,
    *,
    database: Database,
    endpoint_url: str | None = None,
    region: str = "us-east-1",
    **options: float | int,
) -> Queue:
    """The backend for a URL: `db://` (tables in the database) or `sqs://?prefix=...` (SQS at
    `endpoint_url`, or AWS's own, in `region`)."""
    scheme = urlparse(url).scheme
    if scheme == "db":
        return DbQueue(database, **options)  # type: ignore[arg-type]
    if scheme == "sqs":
        from core.sqsqueue import sqs_queue_from_url

        return sqs_queue_from_url(
            url, database=database, endpoint_url=endpoint_url, region=region, **options
        )
    raise WeighbridgeError(
        f"unknown queue URL scheme {scheme!r}; use db:// or sqs://?prefix=...",
        field="WEIGHBRIDGE_QUEUE_URL",
    )
