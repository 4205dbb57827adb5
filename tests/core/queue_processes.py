"""Queue consumers that run in their own OS process (spawned), each with its own Database.

Kept apart from the test module so a spawned child imports only what it needs.
"""

from __future__ import annotations

import asyncio
import os
import time
import traceback
from typing import Any

from core.db import Database
from core.queue import DbQueue


def consume_until_empty(url: str, queue: str, barrier: Any, results: Any) -> None:
    """Receive batches and ack them until the queue is empty; report the message ids seen.

    A failure is reported as its traceback (a string), so the test fails at once and says why.
    """
    try:
        results.put(asyncio.run(_consume(url, queue, barrier)))
    except BaseException:
        results.put(traceback.format_exc())
        raise


async def _consume(url: str, queue: str, barrier: Any) -> tuple[int, list[str]]:
    db = Database(url)
    q = DbQueue(db, lease_seconds=30.0, poll_seconds=0.02)
    seen: list[str] = []
    try:
        await q.depth(queue)  # connect before the start line, so all start together
        await asyncio.to_thread(barrier.wait, 60)
        while True:
            got = await q.receive([queue], max_messages=10, wait_seconds=0.1)
            if got:
                seen.extend(d.envelope.message_id for d in got)
                await q.ack_many(got)
            elif await q.depth(queue) == 0:
                return os.getpid(), seen
    finally:
        await db.dispose()


def hold_one_message(url: str, queue: str, lease: float, held: Any) -> None:
    """Receive one message and never ack it: the test kills this process with SIGKILL."""
    asyncio.run(_hold(url, queue, lease, held))


async def _hold(url: str, queue: str, lease: float, held: Any) -> None:
    db = Database(url)
    q = DbQueue(db, poll_seconds=0.02)
    got = []
    deadline = time.monotonic() + 60
    while not got and time.monotonic() < deadline:
        got = await q.receive([queue], lease_seconds=lease, wait_seconds=1.0)
    held.set()
    await asyncio.sleep(3600)
