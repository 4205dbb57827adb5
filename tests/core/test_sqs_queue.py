"""The SQS queue against moto's server over HTTP: the queue contract on SQS.

Every test makes its own prefix, so its queues are its own. Visibility timeouts are whole
seconds on SQS, so the lease tests wait a second or two.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from core.db import Database
from core.errors import WeighbridgeError
from core.models import new_id
from core.outbox import RelayOutbox, relay_forever
from core.queue import DEAD_LETTER_TRIES, dead_letter_queue, eval_queue, queue_from_url
from core.sqsqueue import SqsQueue
from core.worker import Consumer
from tests.core.factories import make_envelope


def make_sqs(db: Database, moto_url: str, prefix: str, **overrides: float) -> SqsQueue:
    values: dict[str, float] = {
        "lease_seconds": 30.0,
        "max_attempts": 3,
        "backoff_seconds": 0.01,
        "long_poll_seconds": 1.0,
    }
    values.update(overrides)
    return SqsQueue(db, prefix=prefix, endpoint_url=moto_url, **values)  # type: ignore[arg-type]


@pytest.fixture
async def sqs(db: Database, moto_url: str) -> AsyncIterator[SqsQueue]:
    queue = make_sqs(db, moto_url, f"t{new_id()[:8]}-")
    yield queue
    await queue.close()


async def drain(queue: SqsQueue, name: str) -> list[str]:
    seen: list[str] = []
    while got := await queue.receive([name], max_messages=10):
        seen += [d.envelope.message_id for d in got]
        assert await queue.ack_many(got) == len(got)
    return seen


async def test_queue_and_its_dead_letter_queue_are_created_with_a_redrive_policy(
    sqs: SqsQueue,
) -> None:
    url = await sqs.ensure("build")
    client = await sqs._client()
    attributes = (await client.get_queue_attributes(QueueUrl=url, AttributeNames=["All"]))[
        "Attributes"
    ]
    policy = json.loads(attributes["RedrivePolicy"])
    assert policy["deadLetterTargetArn"].endswith(sqs.prefix + "build-dlq")
    assert int(policy["maxReceiveCount"]) == sqs.max_attempts + 1
    assert attributes["VisibilityTimeout"] == "30"
    assert await sqs.ensure("build") == url  # found, not created again


async def test_four_consumers_take_every_one_of_200_messages(db: Database, moto_url: str) -> None:
    """Nothing is lost and every message is deleted once handled. A standard SQS queue
    delivers at least once (now and then a message twice, which moto's threaded server also
    does under concurrent receives), so the workers are idempotent and the test allows a rare
    duplicate, not a lost message."""
    prefix = f"t{new_id()[:8]}-"
    producer = make_sqs(db, moto_url, prefix)
    sent = [make_envelope(i) for i in range(200)]
    await producer.send_many("build", sent)

    async def consume() -> list[str]:
        queue = make_sqs(db, moto_url, prefix)
        try:
            return await drain(queue, "build")
        finally:
            await queue.close()

    try:
        results = await asyncio.gather(*(consume() for _ in range(4)))
        seen = [m for r in results for m in r]
        assert set(seen) == {e.message_id for e in sent}
        assert len([m for m, n in Counter(seen).items() if n > 1]) <= 4
        assert await producer.depth("build") == 0
    finally:
        await producer.close()


async def test_an_unacked_message_comes_back_after_its_visibility_timeout(sqs: SqsQueue) -> None:
    await sqs.send("build", make_envelope(1))
    first = await sqs.receive(["build"], lease_seconds=1)
    assert len(first) == 1 and first[0].attempts == 1
    assert await sqs.receive(["build"]) == []  # leased
    await asyncio.sleep(1.5)
    again = await sqs.receive(["build"], wait_seconds=2)
    assert [d.envelope.message_id for d in again] == [first[0].envelope.message_id]
    assert again[0].attempts == 2
    # (Whether the first holder's stale receipt may still extend it is SQS's to say: moto
    # allows it, so the test does not check it.)
    assert await sqs.ack(again[0])


async def test_extend_keeps_a_message_invisible_past_its_first_lease(sqs: SqsQueue) -> None:
    await sqs.send("build", make_envelope(1))
    [held] = await sqs.receive(["build"], lease_seconds=1)
    assert await sqs.extend(held, 30)
    await asyncio.sleep(1.5)
    assert await sqs.receive(["build"]) == []
    assert await sqs.in_flight("build") == 1
    assert await sqs.ack(held)


async def test_a_poison_message_lands_in_the_dead_letter_queue_with_its_reason(
    sqs: SqsQueue,
) -> None:
    envelope = make_envelope(7)
    await sqs.send("build", envelope)
    for attempt in range(1, sqs.max_attempts + 1):
        [d] = await sqs.receive(["build"], wait_seconds=2)
        assert d.attempts == attempt
        went_dead = await sqs.retry(d, error=f"boom {attempt}", delay=0)
        assert went_dead is (attempt == sqs.max_attempts)
    assert await sqs.depth("build") == 0
    # The queue's consumers receive it from the dead-letter queue, with the reason.
    [dead] = await sqs.receive([dead_letter_queue("build")])
    assert dead.dead and dead.envelope.message_id == envelope.message_id
    assert dead.error == f"boom {sqs.max_attempts}"
    assert dead.attempts == sqs.max_attempts
    assert await sqs.settle(dead)
    [kept] = await sqs.dead_letters("build")
    assert kept.message_id == envelope.message_id and kept.last_error == dead.error
    assert await sqs.depth(dead_letter_queue("build")) == 0
    # An operator sends it back with fresh attempts.
    assert await sqs.redrive("build", envelope.message_id)
    assert await sqs.dead_letters("build") == []
    [back] = await sqs.receive(["build"], wait_seconds=2)
    assert back.envelope.message_id == envelope.message_id and back.attempts == 1


async def test_a_lease_that_runs_out_on_the_last_attempt_makes_a_dead_letter(
    sqs: SqsQueue,
) -> None:
    """The holder dies each time (no ack, no retry): past the last attempt, the message is a
    dead letter saying so, with the error of the attempt before."""
    await sqs.send("build", make_envelope(3))
    [d] = await sqs.receive(["build"])
    await sqs.retry(d, error="first failure", delay=0)
    for _ in range(sqs.max_attempts - 1):
        got = await sqs.receive(["build"], lease_seconds=1, wait_seconds=2)
        assert len(got) == 1
        await asyncio.sleep(1.5)  # the holder died
    assert await sqs.receive(["build"], wait_seconds=1) == []
    [dead] = await sqs.receive([dead_letter_queue("build")])
    assert dead.error is not None and "lease expired on the last attempt" in dead.error
    assert "first failure" in dead.error


async def test_release_hands_a_message_back_without_spending_an_attempt(sqs: SqsQueue) -> None:
    await sqs.send("build", make_envelope(1))
    [d] = await sqs.receive(["build"])
    assert await sqs.retry(d, error="once", delay=0) is False
    [d2] = await sqs.receive(["build"], wait_seconds=2)
    assert d2.attempts == 2
    assert await sqs.release(d2)
    [d3] = await sqs.receive(["build"], wait_seconds=2)
    assert d3.attempts == 2


async def test_a_delayed_message_waits_for_its_delay(sqs: SqsQueue) -> None:
    await sqs.send("build", make_envelope(1), delay=2)
    assert await sqs.receive(["build"]) == []
    await asyncio.sleep(2.5)
    assert len(await sqs.receive(["build"], wait_seconds=1)) == 1
    with pytest.raises(WeighbridgeError, match="at most 900"):
        await sqs.send("build", make_envelope(2), delay=3600)


async def test_a_malformed_body_is_kept_as_a_dead_letter_without_breaking_receive(
    sqs: SqsQueue,
) -> None:
    client = await sqs._client()
    url = await sqs.ensure("build")
    await client.send_message(QueueUrl=url, MessageBody='{"not": "an envelope"}')
    await sqs.send("build", make_envelope(2))
    got = await sqs.receive(["build"], max_messages=10, wait_seconds=1)
    got += await sqs.receive(["build"], max_messages=10)
    assert [d.envelope.payload["i"] for d in got] == [2]
    [kept] = await sqs.dead_letters("build")
    assert kept.last_error is not None and "not an event envelope" in kept.last_error


async def test_two_fleets_each_receive_only_their_own_messages(db: Database, moto_url: str) -> None:
    prefix = f"t{new_id()[:8]}-"
    producer = make_sqs(db, moto_url, prefix)
    a, b = make_sqs(db, moto_url, prefix), make_sqs(db, moto_url, prefix)
    for i in range(5):
        await producer.send(eval_queue("fleet-a"), make_envelope(i, type="a"))
        await producer.send(eval_queue("fleet-b"), make_envelope(i, type="b"))
    got_a = await drain(a, eval_queue("fleet-a"))
    got_b = await drain(b, eval_queue("fleet-b"))
    assert len(got_a) == len(got_b) == 5
    assert not set(got_a) & set(got_b)
    for q in (producer, a, b):
        await q.close()


async def test_a_message_over_sqs_size_limit_is_refused_clearly(sqs: SqsQueue) -> None:
    big = make_envelope(1, payload={"blob": "x" * 300_000})
    with pytest.raises(WeighbridgeError, match="storage keys"):
        await sqs.send("build", big)


async def test_the_outbox_relays_committed_messages_to_sqs(sqs: SqsQueue, db: Database) -> None:
    outbox = RelayOutbox(db, sqs)
    envelope = make_envelope(5)
    async with db.session() as session:
        await outbox.stage(session, "build", envelope)
    stop = asyncio.Event()
    relay = asyncio.create_task(relay_forever(outbox, stop, every=0.1))
    try:
        [d] = await sqs.receive(["build"], wait_seconds=5)
        assert d.envelope.message_id == envelope.message_id
        # The relay deletes its row just after the send the receive may already have seen.
        for _ in range(100):
            if not await outbox.pending():
                break
            await asyncio.sleep(0.05)
        assert await outbox.pending() == 0
    finally:
        stop.set()
        await relay


async def test_the_consumer_loop_records_dead_letters_on_sqs(sqs: SqsQueue) -> None:
    """The worker roles' consumer on SQS: handled messages are deleted, a failing one is
    retried, dead-lettered and recorded once by on_dead, then kept."""
    handled: list[int] = []
    recorded: list[tuple[int, str]] = []

    async def handle(delivery: object) -> None:
        i = delivery.envelope.payload["i"]  # type: ignore[attr-defined]
        if i == 13:
            raise RuntimeError("thirteen is unlucky")
        handled.append(i)

    async def on_dead(delivery: object, error: str) -> None:
        recorded.append((delivery.envelope.payload["i"], error))  # type: ignore[attr-defined]

    for i in (1, 13, 2):
        await sqs.send("build", make_envelope(i))
    consumer = Consumer(sqs, ["build"], handle, on_dead=on_dead, name="t", lease_seconds=30)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        for _ in range(200):
            if recorded and await sqs.dead_letters("build"):
                break
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert sorted(handled) == [1, 2]
    assert len(recorded) == 1 and recorded[0][0] == 13
    assert "thirteen is unlucky" in recorded[0][1]
    assert await sqs.depth("build") == 0


async def test_a_dead_letter_whose_recording_keeps_failing_is_kept_with_both_stories(
    sqs: SqsQueue,
) -> None:
    await sqs.send("build", make_envelope(1))
    [d] = await sqs.receive(["build"])
    await sqs.dead_letter(d, error="cannot be done")
    for _ in range(DEAD_LETTER_TRIES):
        got = await sqs.receive([dead_letter_queue("build")], wait_seconds=2)
        if not got:
            await asyncio.sleep(0.5)
            got = await sqs.receive([dead_letter_queue("build")], wait_seconds=2)
        [dead] = got
        await sqs.retry(dead, error="database away", delay=0)
        await sqs._visible_in(dead, 0)  # no waiting for the backoff in the test
    [kept] = await sqs.dead_letters("build")
    assert kept.last_error is not None
    assert "cannot be done" in kept.last_error and "database away" in kept.last_error


def test_sqs_urls_are_checked(db: Database) -> None:
    queue = queue_from_url("sqs://?prefix=wb-&wait=5", database=db, region="eu-west-1")
    assert isinstance(queue, SqsQueue)
    assert queue.prefix == "wb-" and queue.long_poll_seconds == 5
    for bad, says in (
        ("sqs://host/path", "names no host"),
        ("sqs://?prefix=a.b", "prefix"),
        ("sqs://?wait=60", "0-20"),
        ("sqs://?colour=blue", "unknown option"),
    ):
        with pytest.raises(WeighbridgeError, match=says):
            queue_from_url(bad, database=db)


async def test_counts_show_waiting_messages_and_recorded_dead_letters(sqs: SqsQueue) -> None:
    """What /metrics reports for SQS: SQS's own counts per queue, and the recorded dead
    letters kept in the database."""
    for i in range(3):
        await sqs.send("build", make_envelope(i))
    [d] = await sqs.receive(["build"])
    await sqs.dead_letter(d, error="no")
    [dead] = await sqs.receive([dead_letter_queue("build")])
    await sqs.settle(dead)
    assert ("build", False, 2) in await sqs.counts()
    assert ("build-dlq", True, 1) in await sqs.counts()
