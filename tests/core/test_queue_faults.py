"""The queue's faults, each reproduced and held fixed (on every database backend):
dead letters reach only their own queue's consumers (Q1) and survive a crash (Q2); a flaky or
lost lease (Q3); shutdown mid-job (Q4); the database's clock (Q5); dead letters recorded once
(Q6); jittered, capped backoff (Q7)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest
import sqlalchemy as sa

import core.queue
from core.db import Database
from core.models import QueueMessage, new_id, table_of
from core.queue import MAX_BACKOFF_SECONDS, DbQueue, Delivery, backoff, dead_letter_queue
from core.worker import Consumer
from tests.core.factories import make_envelope, make_queue


def queue_name(prefix: str = "faults") -> str:
    return f"{prefix}-{new_id()[:8]}"


@contextlib.asynccontextmanager
async def running(*consumers: Consumer) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(c.run(stop)) for c in consumers]
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 15)


async def wait_until(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)


async def row_of(db: Database, message_id: str) -> sa.Row:
    qm = table_of(QueueMessage)
    async with db.session() as session:
        return (await session.execute(sa.select(qm).where(qm.c.message_id == message_id))).one()


async def die_holding_last_attempt(q: DbQueue, name: str) -> str:
    """Send a one-attempt message and take it with a short lease, as a worker that then dies."""
    envelope = make_envelope()
    await q.send(name, envelope)
    assert len(await q.receive([name], lease_seconds=0.2)) == 1
    await asyncio.sleep(0.3)
    return envelope.message_id


async def test_q1_a_dead_letter_reaches_only_its_own_queues_consumers(db: Database) -> None:
    """Builder and evaluator share one queue object in `up`; an evaluate message that died
    must reach the evaluator's on_dead, never the builder's."""
    shared = make_queue(db, max_attempts=1)
    build, evaluate = queue_name("build"), queue_name("eval")
    seen: dict[str, list[str]] = {"builder": [], "evaluator": []}

    def consumer(role: str, queue: str) -> Consumer:
        async def handle(delivery: Delivery) -> None:
            raise AssertionError("nothing to handle")

        async def on_dead(delivery: Delivery, error: str) -> None:
            seen[role].append(delivery.envelope.message_id)

        return Consumer(shared, [queue], handle, name=role, on_dead=on_dead, wait_seconds=0.05)

    dead_id = await die_holding_last_attempt(shared, evaluate)
    # The builder's consumer polls first and often; it must not take the evaluator's letter.
    async with running(consumer("builder", build)):
        await asyncio.sleep(1.5)
    assert seen["builder"] == []
    async with running(consumer("builder", build), consumer("evaluator", evaluate)):
        await wait_until(lambda: seen["evaluator"] == [dead_id])
    assert seen["builder"] == []


async def test_q2_a_dead_letter_outlives_a_crash_before_it_was_recorded(db: Database) -> None:
    """Dead-lettering is durable: if the process dies (here: on_dead raises, as a crash
    would leave it) before the failure is recorded, a later consumer records it."""
    q = make_queue(db, max_attempts=1)
    name = queue_name()
    dead_id = await die_holding_last_attempt(q, name)
    calls: list[str] = []

    async def handle(delivery: Delivery) -> None:
        raise AssertionError("nothing to handle")

    async def crashing(delivery: Delivery, error: str) -> None:
        calls.append("crash")
        raise ConnectionError("the database went away while failing the submission")

    async def recording(delivery: Delivery, error: str) -> None:
        calls.append("recorded")

    first = Consumer(q, [name], handle, name="first", on_dead=crashing, wait_seconds=0.05)
    async with running(first):
        await wait_until(lambda: "crash" in calls)
    (letter,) = await q.dead_letters(name)
    assert letter.settled is False  # still waiting to be recorded

    later = make_queue(db, max_attempts=1, backoff_seconds=0.01)
    second = Consumer(later, [name], handle, name="second", on_dead=recording, wait_seconds=0.05)
    async with running(second):
        await wait_until(lambda: "recorded" in calls, within=15)
    (letter,) = await q.dead_letters(name)
    assert letter.settled is True and letter.message_id == dead_id
    assert calls.count("recorded") == 1


class FlakyQueue:
    """A queue whose `extend` fails now and then, or reports the lease lost."""

    def __init__(self, inner: DbQueue, *, raise_times: int = 0, lose: bool = False) -> None:
        self.inner = inner
        self.raise_times = raise_times
        self.lose = lose
        self.extends = 0

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    async def extend(self, delivery: Delivery, seconds: float) -> bool:
        self.extends += 1
        if self.raise_times:
            self.raise_times -= 1
            raise ConnectionError("connection reset by peer")
        if self.lose:
            return False
        return await self.inner.extend(delivery, seconds)


async def test_q3_a_flaky_extend_does_not_end_the_heartbeat(db: Database) -> None:
    q = make_queue(db)
    flaky = FlakyQueue(q, raise_times=1)
    name = queue_name()
    await q.send(name, make_envelope())
    done: list[int] = []

    async def slow(delivery: Delivery) -> None:
        await asyncio.sleep(2.0)  # four leases of 0.6 s
        done.append(delivery.attempts)

    worker = Consumer(flaky, [name], slow, name="slow", lease_seconds=0.6, wait_seconds=0.05)  # type: ignore[arg-type]
    rival_got: list[int] = []

    async def rival_handle(delivery: Delivery) -> None:
        rival_got.append(delivery.attempts)

    rival = Consumer(make_queue(db), [name], rival_handle, name="rival", wait_seconds=0.05)
    async with running(worker):
        await asyncio.sleep(0.1)
        async with running(rival):
            await wait_until(lambda: done == [1], within=10)
    assert flaky.extends >= 3  # it kept beating after the failure
    assert rival_got == []  # nobody else ran it meanwhile
    assert await q.depth(name) == 0


async def test_q3_a_lost_lease_stops_the_job_and_leaves_the_message(db: Database) -> None:
    q = make_queue(db)
    name = queue_name()
    envelope = make_envelope()
    await q.send(name, envelope)
    stopped: list[str] = []

    async def slow(delivery: Delivery) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            stopped.append(delivery.envelope.message_id)
            raise

    lossy = FlakyQueue(q, lose=True)
    worker = Consumer(lossy, [name], slow, name="lossy", lease_seconds=0.6, wait_seconds=0.05)  # type: ignore[arg-type]
    async with running(worker):
        await wait_until(lambda: stopped == [envelope.message_id])
    row = await row_of(db, envelope.message_id)
    # Neither acked nor retried: the row is as the claim left it, for its new holder.
    assert (row.attempts, row.dead, row.last_error) == (1, False, None)
    assert row.lease_token is not None


async def test_q4_shutdown_mid_job_hands_the_message_back_without_spending_an_attempt(
    db: Database,
) -> None:
    q = make_queue(db, max_attempts=1)
    name = queue_name()
    envelope = make_envelope()
    await q.send(name, envelope)
    started = asyncio.Event()

    async def long_job(delivery: Delivery) -> None:
        started.set()
        await asyncio.sleep(600)

    consumer = Consumer(q, [name], long_job, name="long", wait_seconds=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    await asyncio.wait_for(started.wait(), 10)
    stop.set()
    task.cancel()  # the grace period ran out, as `serve` does after 30 s
    with contextlib.suppress(asyncio.CancelledError):
        await task
    row = await row_of(db, envelope.message_id)
    assert (row.attempts, row.lease_token, row.dead) == (0, None, False)
    # Available at once, and its only attempt is still there: a restart runs it.
    (again,) = await make_queue(db, max_attempts=1).receive([name])
    assert again.attempts == 1


async def test_q5_leases_follow_the_database_clock_not_the_workers(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = make_queue(db)
    name = queue_name()
    await q.send(name, make_envelope())
    (held,) = await q.receive([name], lease_seconds=30)
    # A second worker whose clock runs an hour fast must not see the lease as expired.
    real = core.queue.time.time
    monkeypatch.setattr(core.queue.time, "time", lambda: real() + 3600)
    assert await make_queue(db).receive([name]) == []
    monkeypatch.undo()
    assert await q.ack(held)


async def test_q6_a_dead_letter_is_recorded_once_whatever_a_stale_holder_does(
    db: Database,
) -> None:
    q = make_queue(db, max_attempts=2)
    name = queue_name()
    envelope = make_envelope()
    await q.send(name, envelope)
    (stale,) = await q.receive([name], lease_seconds=0.2)  # attempt 1; its worker stalls
    await asyncio.sleep(0.3)
    (current,) = await q.receive([name], wait_seconds=2)  # attempt 2, the last
    # The stalled worker wakes and retries with its old copy: it changes nothing.
    assert await q.retry(stale, error="stale") is False
    assert (await row_of(db, envelope.message_id)).attempts == 2
    assert await q.retry(current, error="broken for good") is True
    assert await q.retry(current, error="again") is False  # no longer held

    recorded: list[str] = []

    async def handle(delivery: Delivery) -> None:
        raise AssertionError("nothing to handle")

    async def on_dead(delivery: Delivery, error: str) -> None:
        await asyncio.sleep(0.2)  # two consumers race for the letter
        recorded.append(error)

    consumers = [
        Consumer(make_queue(db), [name], handle, name=f"c{i}", on_dead=on_dead, wait_seconds=0.02)
        for i in range(2)
    ]
    async with running(*consumers):
        await wait_until(lambda: len(recorded) == 1)
        await asyncio.sleep(0.5)
    assert recorded == ["broken for good"]
    (letter,) = await q.dead_letters(name)
    assert letter.settled and letter.attempts >= 2


def test_q7_backoff_is_jittered_and_capped() -> None:
    for attempts in range(1, 60):
        ceiling = min(MAX_BACKOFF_SECONDS, 2.0 * 2 ** (attempts - 1))
        values = {backoff(2.0, attempts) for _ in range(50)}
        assert all(ceiling / 2 <= v <= ceiling for v in values)
        assert len(values) > 1  # not all the same: retries spread out
    assert backoff(2.0, 1000) <= MAX_BACKOFF_SECONDS


def test_queue_names_are_valid_sqs_names() -> None:
    assert core.queue.eval_queue("default") == "eval-default"
    assert dead_letter_queue("eval-default") == "eval-default-dlq"
    with pytest.raises(ValueError, match="not valid"):
        core.queue.check_queue_name("eval.default")
