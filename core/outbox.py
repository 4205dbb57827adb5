"""The transactional outbox: a message is staged in the caller's transaction, sent iff it commits.

A submission's row and the message that sets its next step going must commit together, or a
crash between the two strands the submission (a row nobody works on) or runs a step for a row
that does not exist. Every sender therefore stages through an `Outbox`, never the transport:

- `QueueTableOutbox`, for the database queue: the queue's own table is the outbox. Staging
  inserts the queue message in the caller's transaction; commit publishes it. Relaying is the
  identity: there is nothing left to do.
- `RelayOutbox`, for every other transport (SQS): staging inserts an `outbox_messages` row in
  the caller's transaction; after commit the relay sends it through the transport and then
  deletes the row. A relay claims the rows it sends (`claimed_until`, by the database's
  clock), so two relays never send one row at once, and the rows of a relay that died are
  sent by the next. Delivery is at least once: a relay that dies between sending and deleting
  leaves the row to be sent again, with the same message id, and consumers already treat a
  message they have seen as done.

`outbox_for(queue_url, ...)` is the one place that chooses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol, cast
from urllib.parse import urlparse

import sqlalchemy as sa
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession

from core.db import Database
from core.envelope import Envelope
from core.models import OutboxMessage, new_id, table_of
from core.queue import Queue, check_queue_name, database_epoch

log = logging.getLogger(__name__)

# How long a relay holds the rows it claimed before another relay may send them.
CLAIM_SECONDS = 30.0
# Rows one relay pass claims at most (it loops until nothing is left).
RELAY_BATCH = 100


class Outbox(Protocol):
    """Where senders put messages: in their own transaction, published once it commits."""

    @property
    def relays(self) -> bool:
        """True when staged messages wait for `relay` (False: commit publishes them)."""

    async def stage(
        self, session: AsyncSession, queue: str, message: Envelope, *, delay: float = 0.0
    ) -> None:
        """Write the message in the caller's transaction: published iff it commits."""

    async def relay(self) -> int:
        """Publish every committed message not yet published; how many were sent."""

    async def wait_for_work(self, seconds: float) -> None:
        """Return when a staged message has committed in this process, or after `seconds`."""

    async def pending(self) -> int:
        """Messages committed and not yet published (for `admin queue`)."""


class QueueTableOutbox:
    """The database queue's table is its own outbox: commit publishes, relay has nothing to do."""

    relays = False

    def __init__(self, queue: Queue) -> None:
        # The database queue (possibly wrapped): staging goes through its `insert_in`.
        self.queue = queue

    async def stage(
        self, session: AsyncSession, queue: str, message: Envelope, *, delay: float = 0.0
    ) -> None:
        await self.queue.insert_in(session, queue, message, delay=delay)  # type: ignore[attr-defined]

    async def relay(self) -> int:
        return 0

    async def wait_for_work(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def pending(self) -> int:
        return 0


class RelayOutbox:
    """Staged rows in `outbox_messages`, sent through `transport` by the relay after commit."""

    relays = True

    def __init__(
        self,
        database: Database,
        transport: Queue,
        *,
        claim_seconds: float = CLAIM_SECONDS,
        batch: int = RELAY_BATCH,
    ) -> None:
        self.db = database
        self.transport = transport
        self.claim_seconds = claim_seconds
        self.batch = batch
        # Set after a transaction that staged a message commits in this process: the relay
        # loop sends it at once instead of at its next turn.
        self._committed = asyncio.Event()

    def _now(self) -> Any:
        return database_epoch(self.db.dialect)

    async def stage(
        self, session: AsyncSession, queue: str, message: Envelope, *, delay: float = 0.0
    ) -> None:
        now = self._now()
        await session.execute(
            sa.insert(table_of(OutboxMessage)).values(
                queue=check_queue_name(queue),
                message_id=message.message_id,
                body=message.model_dump(mode="json"),
                available_at=now + max(0.0, delay),
                claim_token=None,
                claimed_until=0.0,
                created_at=now,
            )
        )
        loop = asyncio.get_running_loop()
        sa.event.listen(
            session.sync_session,
            "after_commit",
            lambda _session: loop.call_soon_threadsafe(self._committed.set),
            once=True,
        )

    async def wait_for_work(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._committed.wait(), timeout=seconds)
        self._committed.clear()

    async def relay(self) -> int:
        sent = 0
        while True:
            claimed = await self._claim()
            if not claimed:
                return sent
            for row_id, token, queue, body, wait in claimed:
                message = Envelope.model_validate(body)
                # The transport's own delay keeps the visibility the sender asked for.
                await self.transport.send(queue, message, delay=max(0.0, wait))
                await self._delete(row_id, token)
                sent += 1
            # Go on until a pass claims nothing: a short pass may only mean that another relay
            # took part of it, not that the table is empty.

    async def _claim(self) -> list[tuple[int, str, str, dict[str, Any], float]]:
        """Claim up to `batch` unclaimed (or abandoned) rows, oldest first, for this relay.

        Each row is claimed by its own guarded update, so two relays racing for a row agree
        on one winner on every backend (MySQL allows no subquery on the updated table)."""
        om = table_of(OutboxMessage)
        now = self._now()
        # A transport that cannot delay a message as long as asked (SQS: 15 minutes) gets it
        # only once it is due within that delay; until then the row waits here.
        longest = getattr(self.transport, "max_delay", None)
        due = () if longest is None else (om.c.available_at <= now + float(longest),)
        async with self.db.session() as session:
            candidates = (
                await session.execute(
                    sa.select(om.c.id)
                    .where(om.c.claimed_until < now, *due)
                    .order_by(om.c.id)
                    .limit(self.batch)
                )
            ).scalars()
            ids = list(candidates)
        claimed: list[tuple[int, str, str, dict[str, Any], float]] = []
        for row_id in ids:
            token = new_id()
            async with self.db.session() as session:
                won = cast(
                    CursorResult[Any],
                    await session.execute(
                        sa.update(om)
                        .where(om.c.id == row_id, om.c.claimed_until < now)
                        .values(claim_token=token, claimed_until=now + self.claim_seconds)
                    ),
                )
                if won.rowcount != 1:
                    continue
                row = (
                    await session.execute(
                        sa.select(om.c.queue, om.c.body, om.c.available_at - now).where(
                            om.c.id == row_id
                        )
                    )
                ).one()
            claimed.append((row_id, token, row[0], row[1], float(row[2])))
        return claimed

    async def _delete(self, row_id: int, token: str) -> None:
        om = table_of(OutboxMessage)
        async with self.db.session() as session:
            await session.execute(sa.delete(om).where(om.c.id == row_id, om.c.claim_token == token))

    async def pending(self) -> int:
        """Rows staged and not yet relayed (for `admin queue` and the tests)."""
        om = table_of(OutboxMessage)
        async with self.db.session() as session:
            return int(
                (await session.execute(sa.select(sa.func.count()).select_from(om))).scalar_one()
            )


# The one registry: a queue URL's scheme names the outbox that goes with its transport.
OUTBOXES: dict[str, Callable[[Database, Queue], Outbox]] = {
    "db": lambda database, queue: QueueTableOutbox(queue),
}


def outbox_for(queue_url: str, *, database: Database, queue: Queue) -> Outbox:
    """The outbox for the transport `queue_url` names: the queue table itself for `db://`, a
    relayed `outbox_messages` table for any transport outside the database."""
    make = OUTBOXES.get(urlparse(queue_url).scheme)
    if make is not None:
        return make(database, queue)
    return RelayOutbox(database, queue)


async def relay_forever(outbox: Outbox, stop: asyncio.Event, *, every: float = 1.0) -> None:
    """Publish what this process (at once) and others (at the next turn) staged, until `stop`.

    A process that died after committing and before relaying leaves its rows here for the
    next relay of any process: nothing staged is lost."""
    if not outbox.relays:
        return
    while not stop.is_set():
        started = time.monotonic()
        try:
            sent = await outbox.relay()
            if sent:
                log.debug("relayed %d message(s) in %.3f s", sent, time.monotonic() - started)
        except Exception:
            log.exception("relaying staged messages failed; trying again in %g s", every)
        await outbox.wait_for_work(every)
