"""In-process wake-ups for consumers: a message this process commits is picked up at once.

In `weighbridge up` the API, the builder and the evaluator share one process, so a consumer
need not wait for its next poll to see a message staged next door. `RingingQueue` wraps the
process's queue and `RingingOutbox` its outbox: once a message staged becomes visible (its
transaction committed) or one is sent, they ring the `Doorbell`, and the `Consumer`s of that
queue claim at once. Messages from other processes, and retries due later, are still found by
polling (`poll_seconds`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from core.envelope import Envelope
from core.outbox import Outbox
from core.queue import Queue


class Doorbell:
    """Events that consumers wait on, set when a message for one of their queues is ready."""

    def __init__(self) -> None:
        self._waiters: list[tuple[frozenset[str], asyncio.Event, asyncio.AbstractEventLoop]] = []

    def subscribe(self, queues: Iterable[str]) -> asyncio.Event:
        event = asyncio.Event()
        self._waiters.append((frozenset(queues), event, asyncio.get_running_loop()))
        return event

    def unsubscribe(self, event: asyncio.Event) -> None:
        self._waiters = [w for w in self._waiters if w[1] is not event]

    def ring(self, queue: str) -> None:
        """Wake the consumers of `queue` (from any thread)."""
        for queues, event, loop in list(self._waiters):
            if queue in queues and not loop.is_closed():
                loop.call_soon_threadsafe(event.set)


class RingingQueue:
    """A Queue that rings `doorbell` when a message it stages or sends becomes visible;
    everything else is the wrapped queue's."""

    def __init__(self, queue: Queue, doorbell: Doorbell) -> None:
        self.inner = queue
        self.doorbell = doorbell

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def send(self, queue: str, message: Envelope, *, delay: float = 0.0) -> None:
        await self.inner.send(queue, message, delay=delay)
        if delay <= 0:
            self.doorbell.ring(queue)

    async def send_many(self, queue: str, messages: Sequence[Envelope]) -> None:
        await self.inner.send_many(queue, messages)  # type: ignore[attr-defined]
        self.doorbell.ring(queue)


class RingingOutbox:
    """An Outbox that rings `doorbell` once a message it staged is committed; everything else
    is the wrapped outbox's. (A relayed message rings again when the relay sends it through a
    `RingingQueue`; a consumer woken early finds nothing and waits again.)"""

    def __init__(self, outbox: Outbox, doorbell: Doorbell) -> None:
        self.inner = outbox
        self.doorbell = doorbell

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @property
    def relays(self) -> bool:
        return self.inner.relays

    async def stage(
        self, session: AsyncSession, queue: str, message: Envelope, *, delay: float = 0.0
    ) -> None:
        await self.inner.stage(session, queue, message, delay=delay)
        if delay <= 0:
            # Visible only once the caller's transaction commits: ring then, not now.
            sa.event.listen(
                session.sync_session,
                "after_commit",
                lambda _session: self.doorbell.ring(queue),
                once=True,
            )

    async def relay(self) -> int:
        return await self.inner.relay()

    async def wait_for_work(self, seconds: float) -> None:
        await self.inner.wait_for_work(seconds)

    async def pending(self) -> int:
        return await self.inner.pending()
