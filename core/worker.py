"""The consumer loop every worker role shares: receive, keep the lease alive, ack or retry."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from core.errors import RetryableError
from core.messages import MessageRefused
from core.queue import Delivery, Queue, dead_letter_queue

log = logging.getLogger(__name__)

Handler = Callable[[Delivery], Awaitable[None]]
DeadHandler = Callable[[Delivery, str], Awaitable[None]]
# The cancel message of a job stopped because its lease was lost.
LEASE_LOST = "weighbridge: lease lost"


def _lost_lease(job: asyncio.Future[None]) -> bool:
    try:
        job.result()
    except asyncio.CancelledError as exc:
        return LEASE_LOST in exc.args
    except BaseException:
        return False
    return False


class Consumer:
    """Runs `handle` for each message of `queues`; one bad message never stops the loop.

    - handler returns: ack.
    - RetryableError, or any other exception (it may be a passing fault we did not foresee):
      retried with a jittered backoff; after the last attempt the message moves to its
      dead-letter queue.
    - MessageRefused (core.messages: a message no attempt can read, with no submission to
      fail): moved to the dead-letter queue at once, with the reason.
    - dead letters of `queues` (durable, in `<queue>-dlq`) go to `on_dead`, which records the
      failure on the submission (idempotently: it may see a dead letter twice after a crash),
      and are then settled. Only the consumers of a queue see its dead letters.
    - while a handler runs, its lease is extended; if the lease is lost (another worker holds
      the message now) the handler is stopped and the message left to its new holder.
    - a handler cancelled by shutdown hands its message back without spending an attempt.
    """

    def __init__(
        self,
        queue: Queue,
        queues: Sequence[str],
        handle: Handler,
        *,
        name: str,
        on_dead: DeadHandler | None = None,
        concurrency: int = 1,
        lease_seconds: float = 60.0,
        wait_seconds: float = 1.0,
    ) -> None:
        self.queue = queue
        self.queues = list(queues)
        # Each queue's dead letters are received by the same consumers, after its messages.
        self.receives = [*self.queues, *(dead_letter_queue(q) for q in self.queues)]
        self.handle = handle
        self.name = name
        self.on_dead = on_dead
        self.concurrency = max(1, concurrency)
        self.lease_seconds = lease_seconds
        self.wait_seconds = wait_seconds
        self.processed = 0

    async def _heartbeat(self, delivery: Delivery, job: asyncio.Future[None]) -> None:
        """Extend the lease every third of it; stop the job when the lease is lost.

        A failed extend (the database briefly away) is retried at the next beat; only when
        no extend succeeded for a whole lease is the lease taken as lost."""
        held_until = time.monotonic() + self.lease_seconds
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                kept = await self.queue.extend(delivery, self.lease_seconds)
            except Exception as exc:
                log.warning(
                    "%s: could not extend the lease of %s: %s",
                    self.name,
                    delivery.envelope.message_id,
                    exc,
                )
                if time.monotonic() < held_until:
                    continue
                kept = False
            if not kept:
                log.error(
                    "%s: lost the lease of %s (another worker may hold it now); stopping it",
                    self.name,
                    delivery.envelope.message_id,
                )
                job.cancel(LEASE_LOST)
                return
            held_until = time.monotonic() + self.lease_seconds

    async def process(self, delivery: Delivery) -> None:
        run = self._record_dead if delivery.dead else self.handle
        job: asyncio.Future[None] = asyncio.ensure_future(run(delivery))
        beat = asyncio.create_task(self._heartbeat(delivery, job))
        try:
            try:
                await asyncio.shield(job)
            except asyncio.CancelledError:
                if job.cancelled() and _lost_lease(job):
                    return  # the new holder has it: neither ack nor retry
                if not job.done():
                    # Shutdown: stop the job, hand the message back with its attempt unspent.
                    job.cancel()
                    with contextlib.suppress(BaseException):
                        await job
                    with contextlib.suppress(Exception):
                        await self.queue.release(delivery)
                    raise
                raise
        except asyncio.CancelledError:
            raise
        except MessageRefused as exc:
            # No attempt can read it: not retried; dead-lettered with the reason (its handler
            # raises this only where it had no submission to fail).
            log.warning("%s: refused %s: %s", self.name, delivery.envelope.message_id, exc)
            await self._dead_letter(delivery, f"refused: {exc.reason}")
        except RetryableError as exc:
            log.warning("%s: retrying %s: %s", self.name, delivery.envelope.message_id, exc)
            await self._retry(delivery, f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            log.exception("%s: message %s failed", self.name, delivery.envelope.message_id)
            tail = "".join(traceback.format_exception(exc)[-3:])
            await self._retry(delivery, f"{type(exc).__name__}: {exc}\n{tail}")
        else:
            if delivery.dead:
                await self.queue.settle(delivery)
            else:
                await self.queue.ack(delivery)
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await beat
            self.processed += 1

    async def _retry(self, delivery: Delivery, error: str) -> None:
        try:
            await self.queue.retry(delivery, error=error)
        except Exception:
            # The lease runs out and the message comes back: nothing is lost.
            log.exception("%s: could not hand %s back", self.name, delivery.envelope.message_id)

    async def _dead_letter(self, delivery: Delivery, error: str) -> None:
        try:
            await self.queue.dead_letter(delivery, error=error)
        except Exception:
            log.exception("%s: could not dead-letter %s", self.name, delivery.envelope.message_id)

    async def _record_dead(self, delivery: Delivery) -> None:
        """A dead letter of our queues: `on_dead` records the failure (raising retries it)."""
        if self.on_dead is None:
            return
        await self.on_dead(delivery, delivery.error or "the message used its last attempt")

    async def run_once(self, *, wait_seconds: float = 0.0) -> int:
        """Receive one batch and process it; returns how many messages were handled."""
        deliveries = await self.queue.receive(
            self.receives,
            max_messages=self.concurrency,
            lease_seconds=self.lease_seconds,
            wait_seconds=wait_seconds,
        )
        await asyncio.gather(*(self.process(d) for d in deliveries))
        return len(deliveries)

    async def run(self, stop: asyncio.Event) -> None:
        """Loop until `stop` is set, with up to `concurrency` messages in hand at once; errors
        talking to the queue are logged and retried.

        A slot is refilled as soon as its message is done, so one slow message never holds
        the others back. When the queue can ring a doorbell (`core.doorbell.RingingQueue`,
        `weighbridge up`) and is polled (the database queue), an idle consumer sleeps until a
        message for its queues is committed in this process, a message in hand is done, or
        the poll interval passes, whichever is first. On stop, messages in hand finish;
        cancelled, they are stopped and handed back without spending an attempt.
        """
        doorbell = getattr(self.queue, "doorbell", None)
        idle = float(getattr(self.queue, "poll_seconds", 0) or 0)
        bell = doorbell.subscribe(self.queues) if doorbell is not None and idle > 0 else None
        in_hand: set[asyncio.Task[None]] = set()
        try:
            while not stop.is_set():
                room = self.concurrency - len(in_hand)
                received = 0
                if room > 0:
                    try:
                        received = await self._take(room, in_hand, bell=bell)
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        log.exception("%s: queue unavailable; retrying in 2 s", self.name)
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), 2.0)
                        continue
                    if received == room:
                        continue  # there may be more waiting: fill the remaining slots
                if bell is None and not in_hand and room > 0:
                    continue  # the receive itself waited (long polling)
                waits: list[Any] = [stop.wait()]
                if bell is not None:
                    waits.append(bell.wait())
                await _first(*waits, seconds=idle or self.wait_seconds, also=in_hand)
                in_hand = {t for t in in_hand if not t.done()}
        except asyncio.CancelledError:
            # Cancelled (the shutdown grace ran out): stop the jobs in hand; each hands its
            # message back with the attempt unspent.
            for task in in_hand:
                task.cancel()
            await asyncio.gather(*in_hand, return_exceptions=True)
            raise
        finally:
            if in_hand:  # a requested stop: the messages in hand finish
                await asyncio.gather(*in_hand, return_exceptions=True)
            if bell is not None and doorbell is not None:
                doorbell.unsubscribe(bell)

    async def _take(self, room: int, in_hand: set[asyncio.Task[None]], *, bell: Any) -> int:
        """Receive up to `room` messages and start each in its own task."""
        if bell is not None:
            bell.clear()  # before claiming: a ring during the claim is kept
        # A queue that long-polls (SQS) waits in the receive itself, up to its own poll time.
        idle_wait = getattr(self.queue, "long_poll_seconds", None) or self.wait_seconds
        wait = 0.0 if bell is not None or in_hand else idle_wait
        deliveries = await self.queue.receive(
            self.receives,
            max_messages=room,
            lease_seconds=self.lease_seconds,
            wait_seconds=wait,
        )
        for delivery in deliveries:
            in_hand.add(asyncio.create_task(self.process(delivery), name=f"{self.name}-job"))
        return len(deliveries)


async def run_every(
    interval: float,
    stop: asyncio.Event,
    duty: Callable[[], Awaitable[None]],
    *,
    what: str,
) -> None:
    """Run `duty` now, then every `interval` seconds until `stop` is set; a failure is logged
    and the duty tried again at the next turn (the periodic loops: sweeper, reaper)."""
    while not stop.is_set():
        try:
            await duty()
        except Exception:
            log.exception("%s failed; trying again in %g s", what, interval)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)


async def _first(
    *waits: Coroutine[Any, Any, Any],
    seconds: float,
    also: set[asyncio.Task[None]] | None = None,
) -> None:
    """Wait until the first of `waits` (or of the running tasks `also`) finishes or `seconds`
    pass; cancel the rest of `waits` (never `also`)."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(
            [*tasks, *(also or ())], timeout=seconds, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
