"""The Outbox contract, passed by every implementation on every database backend.

`relay` stands for any transport outside the database (SQS): the relayed outbox here sends
through a database queue, which plays the transport, so the contract is checked end to end.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from core.db import Database
from core.envelope import Envelope
from core.models import OutboxMessage, new_id, table_of
from core.outbox import Outbox, QueueTableOutbox, RelayOutbox, outbox_for, relay_forever
from core.queue import DbQueue
from tests.core.factories import make_envelope, make_queue

OUTBOXES: dict[str, Callable[[Database, DbQueue], Outbox]] = {
    "queue-table": lambda db, queue: QueueTableOutbox(queue),
    "relay": lambda db, queue: RelayOutbox(db, queue, claim_seconds=1.0, batch=7),
}


@pytest.fixture(params=sorted(OUTBOXES))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def unique_queue() -> str:
    return f"outbox-{new_id()[:8]}"


class Boom(Exception):
    pass


async def drain(queue: DbQueue, name: str) -> list[Envelope]:
    got: list[Envelope] = []
    while deliveries := await queue.receive([name], max_messages=10):
        got += [d.envelope for d in deliveries]
        await queue.ack_many(deliveries)
    return got


async def test_a_staged_message_is_published_iff_its_transaction_commits(
    db: Database, kind: str
) -> None:
    name, queue = unique_queue(), make_queue(db)
    outbox = OUTBOXES[kind](db, queue)
    rolled_back, committed = make_envelope(1), make_envelope(2)

    with pytest.raises(Boom):
        async with db.session() as session:
            await outbox.stage(session, name, rolled_back)
            await session.flush()
            raise Boom
    await outbox.relay()
    assert await queue.receive([name]) == []
    assert await outbox.pending() == 0

    async with db.session() as session:
        await outbox.stage(session, name, committed)
        await session.flush()
        if db.dialect != "sqlite":
            # Nothing is visible, even to a relay, before the commit. (SQLite has one writer:
            # a relay's claim would wait for this transaction, so no check there.)
            assert await RelayOutbox(db, queue).relay() == 0
            assert await make_queue(db).receive([name]) == []
    await outbox.relay()
    assert await drain(queue, name) == [committed]
    # Published once: relaying again sends nothing more.
    await outbox.relay()
    assert await drain(queue, name) == []
    assert await outbox.pending() == 0


async def test_a_delay_asked_for_when_staging_is_kept(db: Database, kind: str) -> None:
    name, queue = unique_queue(), make_queue(db)
    outbox = OUTBOXES[kind](db, queue)
    message = make_envelope(1)
    async with db.session() as session:
        await outbox.stage(session, name, message, delay=1.5)
    staged_at = time.monotonic()
    await outbox.relay()
    assert await queue.receive([name]) == []
    (delivery,) = await queue.receive([name], wait_seconds=5.0)
    assert delivery.envelope == message
    assert time.monotonic() - staged_at >= 1.2


async def test_two_relays_publish_each_of_many_messages_exactly_once(
    db: Database, kind: str
) -> None:
    name, queue = unique_queue(), make_queue(db)
    staged = [make_envelope(i) for i in range(60)]
    async with db.session() as session:
        for message in staged:
            await OUTBOXES[kind](db, queue).stage(session, name, message)
    await asyncio.gather(*(OUTBOXES[kind](db, make_queue(db)).relay() for _ in range(2)))
    got = await drain(queue, name)
    assert [m for m, n in Counter(e.message_id for e in got).items() if n > 1] == []
    assert {e.message_id for e in got} == {m.message_id for m in staged}


async def test_outbox_for_picks_the_queue_table_for_db_and_a_relay_otherwise(db: Database) -> None:
    queue = make_queue(db)
    assert not outbox_for("db://", database=db, queue=queue).relays
    assert outbox_for("sqs://?prefix=wb-", database=db, queue=queue).relays


class FailingTransport:
    """A transport whose sends fail `failures` times, then go to the real queue."""

    def __init__(self, inner: DbQueue, failures: int) -> None:
        self.inner, self.failures, self.sent = inner, failures, 0

    async def send(self, queue: str, message: Envelope, *, delay: float = 0.0) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("the transport is down")
        self.sent += 1
        await self.inner.send(queue, message, delay=delay)


async def test_a_transport_that_fails_keeps_the_message_for_the_next_relay(db: Database) -> None:
    name, queue = unique_queue(), make_queue(db)
    transport = FailingTransport(queue, failures=1)
    outbox = RelayOutbox(db, transport, claim_seconds=0.3)  # type: ignore[arg-type]
    message = make_envelope(1)
    async with db.session() as session:
        await outbox.stage(session, name, message)
    with pytest.raises(ConnectionError):
        await outbox.relay()
    assert await outbox.pending() == 1
    await asyncio.sleep(0.5)  # the failed relay's claim runs out
    assert await outbox.relay() == 1
    assert [e.message_id for e in await drain(queue, name)] == [message.message_id]
    assert await outbox.pending() == 0


class RecordingTransport:
    """Records every message id it is asked to send, then sends it to the real queue."""

    def __init__(self, inner: DbQueue) -> None:
        self.inner, self.sent = inner, []  # type: ignore[var-annotated]

    async def send(self, queue: str, message: Envelope, *, delay: float = 0.0) -> None:
        self.sent.append(message.message_id)
        await self.inner.send(queue, message, delay=delay)


async def test_a_relay_that_died_after_sending_sends_again_as_the_same_message(
    db: Database,
) -> None:
    """At least once: the row of a relay that sent and died before deleting is sent again, as
    the same message id, so consumers (and the database queue itself) recognise it."""
    name, queue = unique_queue(), make_queue(db)
    transport = RecordingTransport(queue)
    outbox = RelayOutbox(db, transport, claim_seconds=0.3)  # type: ignore[arg-type]
    message = make_envelope(1)
    async with db.session() as session:
        await outbox.stage(session, name, message)
    ((row_id, _token, queue_name, body, wait),) = await outbox._claim()
    await transport.send(queue_name, Envelope.model_validate(body), delay=wait)  # then it died
    assert await outbox.relay() == 0  # its claim still holds
    await asyncio.sleep(0.5)
    assert await outbox.relay() == 1
    assert transport.sent == [message.message_id] * 2
    # The database queue holds one message per id: the second send changed nothing.
    assert [e.message_id for e in await drain(queue, name)] == [message.message_id]
    om = table_of(OutboxMessage)
    async with db.session() as session:
        left = (await session.execute(sa.select(om.c.id).where(om.c.id == row_id))).all()
    assert left == []


async def test_the_relay_loop_publishes_a_commit_at_once_and_stops_when_asked(
    db: Database,
) -> None:
    name, queue = unique_queue(), make_queue(db)
    outbox = RelayOutbox(db, queue)
    stop = asyncio.Event()
    # A long turn: only the commit's wake-up can explain a prompt delivery.
    loop = asyncio.create_task(relay_forever(outbox, stop, every=30.0))
    await asyncio.sleep(0.1)
    message = make_envelope(1)
    async with db.session() as session:
        await outbox.stage(session, name, message)
    (delivery,) = await queue.receive([name], wait_seconds=5.0)
    assert delivery.envelope == message
    stop.set()
    await outbox.relay()  # nothing left; the loop sees `stop` at its next wake-up
    outbox._committed.set()
    await asyncio.wait_for(loop, timeout=5.0)
