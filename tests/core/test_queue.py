"""The database queue on every backend: exactly-once with acks, leases, retries, dead letters."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import time
from collections import Counter

import pytest
import sqlalchemy as sa

from core.db import Database
from core.errors import WeighbridgeError
from core.models import QueueMessage, new_id
from core.queue import (
    BUILD_QUEUE,
    DbQueue,
    Delivery,
    dead_letter_queue,
    eval_queue,
    fleet_of_queue,
    queue_from_url,
)
from tests.core.factories import make_envelope, make_queue
from tests.core.queue_processes import consume_until_empty, hold_one_message

SPAWN = multiprocessing.get_context("spawn")


def unique_queue(prefix: str = "test") -> str:
    return f"{prefix}-{new_id()[:8]}"


async def test_four_consumers_process_each_of_1000_messages_exactly_once(db: Database) -> None:
    name = unique_queue()
    producer = make_queue(db)
    sent = [make_envelope(i) for i in range(1000)]
    await producer.send_many(name, sent)
    assert await producer.depth(name) == 1000

    async def consume(q: DbQueue) -> list[str]:
        seen: list[str] = []
        while True:
            got = await q.receive([name], max_messages=10, wait_seconds=0.05)
            if got:
                seen.extend(d.envelope.message_id for d in got)
                assert await q.ack_many(got) == len(got)
            elif await q.depth(name) == 0:
                return seen

    # Each consumer is its own queue object, so each claims in its own sessions. A task group
    # cancels the others if one fails, so no consumer outlives the test.
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(consume(make_queue(db))) for _ in range(4)]
    seen = [m for t in tasks for m in t.result()]
    duplicates = [m for m, n in Counter(seen).items() if n > 1]
    assert duplicates == []
    assert set(seen) == {e.message_id for e in sent}
    assert await producer.depth(name) == 0
    assert await producer.dead_letters(name) == []


async def test_four_consumer_processes_process_each_message_exactly_once(db: Database) -> None:
    """Several worker processes may consume one queue: each message still goes to one of them."""
    name = unique_queue()
    sent = [make_envelope(i) for i in range(1000)]
    await make_queue(db).send_many(name, sent)

    barrier = SPAWN.Barrier(4)
    results = SPAWN.Queue()
    processes = [
        SPAWN.Process(target=consume_until_empty, args=(db.url, name, barrier, results))
        for _ in range(4)
    ]
    for p in processes:
        p.start()
    try:
        reports = [await asyncio.to_thread(results.get, True, 90) for _ in processes]
    finally:
        for p in processes:
            await asyncio.to_thread(p.join, 30)
            if p.is_alive():
                p.kill()
    errors = [r for r in reports if isinstance(r, str)]
    assert errors == []
    assert [p.exitcode for p in processes] == [0, 0, 0, 0]
    assert len({pid for pid, _ in reports}) == 4
    seen = [m for _, ids in reports for m in ids]
    assert [m for m, n in Counter(seen).items() if n > 1] == []
    assert set(seen) == {e.message_id for e in sent}
    assert await make_queue(db).depth(name) == 0


async def test_a_consumer_killed_while_holding_a_message_loses_nothing(db: Database) -> None:
    name = unique_queue()
    q = make_queue(db)
    envelope = make_envelope()
    await q.send(name, envelope)

    held = SPAWN.Event()
    lease = 2.0
    process = SPAWN.Process(target=hold_one_message, args=(db.url, name, lease, held))
    process.start()
    try:
        assert await asyncio.to_thread(held.wait, 60), "the consumer process never got the message"
        killed_at = time.monotonic()
        os.kill(process.pid, signal.SIGKILL)
        await asyncio.to_thread(process.join, 10)
    finally:
        if process.is_alive():
            process.kill()
    assert process.exitcode == -signal.SIGKILL

    # Still leased by the dead consumer: nobody else gets it yet.
    assert await q.receive([name]) == []
    got = await q.receive([name], wait_seconds=10)
    assert time.monotonic() - killed_at < lease + 5
    assert [d.envelope.message_id for d in got] == [envelope.message_id]
    assert got[0].envelope == envelope
    assert got[0].attempts == 2
    assert await q.ack(got[0])
    assert await q.depth(name) == 0


async def test_a_message_that_keeps_failing_is_dead_lettered_with_its_last_error(
    db: Database,
) -> None:
    name = unique_queue()
    q = make_queue(db, max_attempts=3)
    envelope = make_envelope()
    await q.send(name, envelope)

    outcomes = []
    for attempt in (1, 2, 3):
        (delivery,) = await q.receive([name], wait_seconds=2)
        assert delivery.attempts == attempt
        outcomes.append(await q.retry(delivery, error=f"connection reset (attempt {attempt})"))
    assert outcomes == [False, False, True]

    assert await q.receive([name], wait_seconds=0.2) == []
    assert await q.depth(name) == 0
    (dead,) = await q.dead_letters(name)
    assert dead.message_id == envelope.message_id
    assert dead.attempts == 3
    assert dead.last_error == "connection reset (attempt 3)"
    assert dead.body["action_id"] == envelope.action_id


async def test_retry_waits_for_the_backoff_before_redelivery(db: Database) -> None:
    name = unique_queue()
    q = make_queue(db)
    await q.send(name, make_envelope())
    (delivery,) = await q.receive([name])
    assert await q.retry(delivery, error="throttled", delay=1.5) is False
    assert await q.receive([name]) == []
    again = await q.receive([name], wait_seconds=5)
    assert len(again) == 1
    assert again[0].attempts == 2


async def test_a_lease_that_expires_on_the_last_attempt_is_dead_lettered_by_the_sweep(
    db: Database,
) -> None:
    name = unique_queue()
    q = make_queue(db, max_attempts=2)
    await q.send(name, make_envelope())

    (first,) = await q.receive([name], lease_seconds=0.3)
    assert await q.retry(first, error="disk full", delay=0) is False
    # The second (last) attempt's worker stops without acking or retrying.
    (last,) = await q.receive([name], lease_seconds=0.3, wait_seconds=2)
    assert last.attempts == 2
    await asyncio.sleep(0.4)

    # A fresh consumer sweeps at once; the message is not delivered a third time.
    other = make_queue(db, max_attempts=2)
    assert await other.receive([name], wait_seconds=0.2) == []
    assert await other.depth(name) == 0
    (dead,) = await other.dead_letters(name)
    assert dead.attempts == 2
    assert "lease expired on the last attempt" in dead.last_error
    # The earlier attempt's error is kept, so the operator sees the whole story.
    assert "disk full" in dead.last_error
    # The stale holder can no longer ack it.
    assert await q.ack(last) is False


async def test_extend_keeps_a_message_invisible_past_its_original_lease(db: Database) -> None:
    name = unique_queue()
    q = make_queue(db)
    await q.send(name, make_envelope())
    (delivery,) = await q.receive([name], lease_seconds=0.5)
    assert await q.extend(delivery, 3.0)
    await asyncio.sleep(0.8)
    other = make_queue(db)
    assert await other.receive([name]) == []
    assert await q.ack(delivery)
    assert await q.depth(name) == 0


async def test_a_consumer_whose_lease_expired_cannot_ack_or_extend_the_new_holders_message(
    db: Database,
) -> None:
    name = unique_queue()
    q = make_queue(db)
    await q.send(name, make_envelope())
    (stale,) = await q.receive([name], lease_seconds=0.2)
    await asyncio.sleep(0.3)
    (current,) = await q.receive([name], lease_seconds=30)
    assert current.attempts == 2
    assert await q.extend(stale, 60) is False
    assert await q.ack(stale) is False
    assert await q.depth(name) == 1
    assert await q.ack(current) is True
    assert await q.depth(name) == 0


async def test_a_delayed_message_is_not_received_before_its_delay(db: Database) -> None:
    name = unique_queue()
    q = make_queue(db)
    sent_at = time.monotonic()
    await q.send(name, make_envelope(), delay=1.5)
    assert await q.receive([name]) == []
    assert await q.depth(name) == 1
    got = await q.receive([name], wait_seconds=5)
    assert len(got) == 1
    assert time.monotonic() - sent_at >= 1.45


async def test_a_malformed_body_is_dead_lettered_without_breaking_receive(db: Database) -> None:
    name = unique_queue()
    q = make_queue(db)
    async with db.session() as session:
        session.add(
            QueueMessage(
                queue=name,
                message_id=new_id(),
                body={"hello": "not an envelope"},
                available_at=0.0,
                created_at=time.time(),
            )
        )
    good = make_envelope()
    await q.send(name, good)

    got = await q.receive([name], max_messages=10)
    assert [d.envelope.message_id for d in got] == [good.message_id]
    (dead,) = await q.dead_letters(name)
    assert dead.body == {"hello": "not an envelope"}
    assert "invalid message body" in dead.last_error
    assert "action_id" in dead.last_error
    assert await q.ack(got[0])
    assert await q.receive([name]) == []
    assert await q.depth(name) == 0


async def test_receive_takes_only_messages_of_the_named_queues(db: Database) -> None:
    a, b = eval_queue(f"a{new_id()[:6]}"), eval_queue(f"b{new_id()[:6]}")
    q = make_queue(db)
    for_a = [make_envelope(i) for i in range(3)]
    for_b = [make_envelope(i) for i in range(2)]
    await q.send_many(a, for_a)
    await q.send_many(b, for_b)

    got_a = await q.receive([a], max_messages=10)
    assert {d.envelope.message_id for d in got_a} == {e.message_id for e in for_a}
    assert {d.queue for d in got_a} == {a}
    assert await q.receive([a], max_messages=10) == []
    assert await q.depth(b) == 2

    got_both = await q.receive([a, b], max_messages=10)
    assert {d.envelope.message_id for d in got_both} == {e.message_id for e in for_b}


async def test_messages_are_received_in_the_order_they_were_sent(db: Database) -> None:
    name = unique_queue()
    q = make_queue(db)
    sent = [make_envelope(i) for i in range(5)]
    for e in sent:
        await q.send(name, e)
    got: list[Delivery] = []
    while len(got) < 5:
        got += await q.receive([name], max_messages=2)
    assert [d.envelope.message_id for d in got] == [e.message_id for e in sent]


async def test_ack_many_acks_only_what_this_consumer_holds(db: Database) -> None:
    name = unique_queue()
    q = make_queue(db)
    await q.send_many(name, [make_envelope(i) for i in range(4)])
    got = await q.receive([name], max_messages=4)
    assert await q.ack_many(got) == 4
    assert await q.ack_many(got) == 0
    assert await q.ack_many([]) == 0


async def test_queue_from_url_picks_the_database_queue_and_explains_bad_urls(
    db: Database,
) -> None:
    q = queue_from_url("db://", database=db, lease_seconds=5.0)
    assert isinstance(q, DbQueue)
    assert q.lease_seconds == 5.0
    with pytest.raises(WeighbridgeError, match="unknown queue URL scheme 'redis'") as err:
        queue_from_url("redis://localhost", database=db)
    assert err.value.field == "WEIGHBRIDGE_QUEUE_URL"


async def test_dead_letters_and_depth_are_per_queue(db: Database) -> None:
    q = make_queue(db, max_attempts=1)
    other = unique_queue()
    await q.send(BUILD_QUEUE, make_envelope())
    await q.send(other, make_envelope())
    (delivery,) = await q.receive([BUILD_QUEUE])
    assert await q.retry(delivery, error="bad bundle") is True
    assert len(await q.dead_letters(BUILD_QUEUE)) == 1
    assert await q.dead_letters(other) == []
    assert await q.depth(BUILD_QUEUE) == 0
    assert await q.depth(other) == 1
    async with db.session() as session:
        total = await session.scalar(sa.select(sa.func.count()).select_from(QueueMessage))
    assert total == 2


def test_the_fleet_of_an_eval_queue_and_of_its_dead_letters() -> None:
    assert fleet_of_queue(eval_queue("south-fleet")) == "south-fleet"
    assert fleet_of_queue(dead_letter_queue(eval_queue("south-fleet"))) == "south-fleet"
    assert fleet_of_queue(BUILD_QUEUE) is None
    assert fleet_of_queue(dead_letter_queue(BUILD_QUEUE)) is None
