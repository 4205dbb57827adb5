"""The consumer loop: retries, dead letters, one bad message never stops it, idempotent handlers."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable

import pytest

from core.db import Database
from core.errors import RetryableError
from core.models import new_id
from core.queue import DbQueue, Delivery
from core.worker import Consumer
from tests.core.factories import make_envelope, make_queue


@contextlib.asynccontextmanager
async def running(consumer: Consumer) -> AsyncIterator[None]:
    """Run the consumer's loop in the background for the length of the block."""
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def wait_until(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out waiting for the consumer")
        await asyncio.sleep(0.02)


def queue_name() -> str:
    return f"work-{new_id()[:8]}"


async def test_a_retryable_error_is_retried_then_dead_lettered_and_reported(db: Database) -> None:
    name = queue_name()
    q = make_queue(db, max_attempts=3, backoff_seconds=0.01)
    envelope = make_envelope()
    await q.send(name, envelope)

    attempts: list[int] = []
    dead: list[tuple[str, str]] = []

    async def handle(delivery: Delivery) -> None:
        attempts.append(delivery.attempts)
        raise RetryableError("the object store is throttling us")

    async def on_dead(delivery: Delivery, error: str) -> None:
        dead.append((delivery.envelope.message_id, error))

    consumer = Consumer(q, [name], handle, name="test", on_dead=on_dead, wait_seconds=0.05)
    async with running(consumer):
        await wait_until(lambda: bool(dead))

    assert attempts == [1, 2, 3]
    assert dead == [(envelope.message_id, "RetryableError: the object store is throttling us")]
    (letter,) = await q.dead_letters(name)
    assert letter.message_id == envelope.message_id
    assert letter.last_error == "RetryableError: the object store is throttling us"
    assert await q.depth(name) == 0


async def test_an_unexpected_exception_does_not_stop_the_loop(db: Database) -> None:
    name = queue_name()
    q = make_queue(db, max_attempts=2, backoff_seconds=0.01)
    bad = make_envelope(payload={"crash": True})
    good = make_envelope(payload={"crash": False})
    await q.send(name, bad)
    await q.send(name, good)

    handled: list[str] = []
    dead: list[tuple[str, str]] = []

    async def handle(delivery: Delivery) -> None:
        if delivery.envelope.payload["crash"]:
            raise KeyError("dataset")
        handled.append(delivery.envelope.message_id)

    async def on_dead(delivery: Delivery, error: str) -> None:
        dead.append((delivery.envelope.message_id, error))

    consumer = Consumer(q, [name], handle, name="test", on_dead=on_dead, wait_seconds=0.05)
    async with running(consumer):
        await wait_until(lambda: bool(handled) and bool(dead))

    assert handled == [good.message_id]
    (dead_id, error) = dead[0]
    assert dead_id == bad.message_id
    # The reason and where it came from, for the person reading the dead letter.
    assert error.startswith("KeyError: 'dataset'")
    assert "test_worker.py" in error
    assert [d.message_id for d in await q.dead_letters(name)] == [bad.message_id]
    assert await q.depth(name) == 0


async def test_a_failing_on_dead_does_not_stop_the_loop(db: Database) -> None:
    name = queue_name()
    q = make_queue(db, max_attempts=1)
    await q.send(name, make_envelope(payload={"crash": True}))
    good = make_envelope(payload={"crash": False})
    await q.send(name, good)
    handled: list[str] = []

    async def handle(delivery: Delivery) -> None:
        if delivery.envelope.payload["crash"]:
            raise RuntimeError("bad bundle")
        handled.append(delivery.envelope.message_id)

    async def on_dead(delivery: Delivery, error: str) -> None:
        raise ConnectionError("database went away")

    consumer = Consumer(q, [name], handle, name="test", on_dead=on_dead, wait_seconds=0.05)
    async with running(consumer):
        await wait_until(lambda: bool(handled))
    assert handled == [good.message_id]
    assert len(await q.dead_letters(name)) == 1


async def test_a_long_handler_keeps_its_lease_alive(db: Database) -> None:
    """A job longer than the lease is not handed to a second worker while it runs."""
    name = queue_name()
    q = make_queue(db)
    await q.send(name, make_envelope())
    starts: list[str] = []

    async def slow(delivery: Delivery) -> None:
        starts.append(delivery.envelope.message_id)
        await asyncio.sleep(3.5)

    # Over twice the lease: the heartbeat (every third of it) keeps it. A lease of 1.5 s, not
    # less: on a loaded CI machine a 0.6 s lease ran out between two late heartbeats.
    first = Consumer(q, [name], slow, name="first", lease_seconds=1.5, wait_seconds=0.05)
    second = Consumer(
        make_queue(db), [name], slow, name="second", lease_seconds=1.5, wait_seconds=0.05
    )
    async with running(first):
        await wait_until(lambda: bool(starts))
        async with running(second):
            await asyncio.sleep(3.6)
    assert len(starts) == 1
    assert await q.depth(name) == 0


class BuildService:
    """An example handler written the way every Weighbridge handler must be: idempotent.

    Completion is recorded per action (the submission) and checked before any work, so a
    redelivered or duplicated message is acknowledged without doing the work again.
    """

    def __init__(self, *, crash_before_ack: bool = False) -> None:
        self.completed: dict[str, str] = {}  # action_id -> message_id that did the work
        self.work_done: Counter[str] = Counter()
        self.deliveries: list[tuple[str, int]] = []
        self.crash_before_ack = crash_before_ack

    async def handle(self, delivery: Delivery) -> None:
        action = delivery.envelope.action_id
        self.deliveries.append((delivery.envelope.message_id, delivery.attempts))
        if action in self.completed:
            return  # already done: ack and skip
        self.work_done[action] += 1
        self.completed[action] = delivery.envelope.message_id
        if self.crash_before_ack:
            # The work is recorded, then the connection drops before the ack.
            self.crash_before_ack = False
            raise ConnectionResetError("lost the connection before the ack")


@pytest.mark.parametrize("crash_before_ack", [False, True], ids=["duplicate", "redelivery"])
async def test_an_idempotent_handler_does_work_once_when_a_message_comes_twice(
    db: Database, crash_before_ack: bool
) -> None:
    name = queue_name()
    q: DbQueue = make_queue(db, backoff_seconds=0.01)
    envelope = make_envelope(type="build")
    await q.send(name, envelope)
    if not crash_before_ack:
        # The same envelope again (e.g. an outbox relay that resent it after a timeout).
        await q.send(name, envelope.model_copy(update={"message_id": new_id()}))
    service = BuildService(crash_before_ack=crash_before_ack)

    consumer = Consumer(q, [name], service.handle, name="builder", wait_seconds=0.05)
    async with running(consumer):
        await wait_until(lambda: len(service.deliveries) == 2)
        await wait_until(lambda: consumer.processed == 2)

    assert service.work_done == Counter({envelope.action_id: 1})
    if crash_before_ack:
        assert service.deliveries == [(envelope.message_id, 1), (envelope.message_id, 2)]
    assert await q.depth(name) == 0
    assert await q.dead_letters(name) == []


async def test_a_worker_dying_on_the_last_attempt_is_reported_to_on_dead(db: Database) -> None:
    """A worker killed while holding the last attempt acks nothing; the sweep dead-letters the
    message and the consumer still tells `on_dead`, so the submission does not hang."""
    name = queue_name()
    q = make_queue(db, max_attempts=1)
    envelope = make_envelope()
    await q.send(name, envelope)
    # The "worker" that dies: it takes the only attempt with a short lease and never acks.
    (taken,) = await q.receive([name], lease_seconds=0.2)
    assert taken.attempts == 1
    await asyncio.sleep(0.3)

    dead: list[tuple[str, str]] = []

    async def handle(delivery: Delivery) -> None:
        raise AssertionError("a message past its attempts must not be handled again")

    async def on_dead(delivery: Delivery, error: str) -> None:
        dead.append((delivery.envelope.message_id, error))

    consumer = Consumer(q, [name], handle, name="test", on_dead=on_dead, wait_seconds=0.05)
    async with running(consumer):
        await wait_until(lambda: len(dead) == 1)
    assert dead[0][0] == envelope.message_id
    assert "lease expired on the last attempt" in dead[0][1]
    (letter,) = await q.dead_letters(name)
    assert letter.message_id == envelope.message_id
