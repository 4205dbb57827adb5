"""The scheduler's two periodic duties, run side by side until stopped."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from core.models import utcnow
from core.worker import run_every
from scheduler.histories import record_done_benchmarks
from scheduler.ticks import Clock, submit_due_ticks

if TYPE_CHECKING:
    from core.context import Services

# Cron has minute resolution: looking for due ticks every few seconds starts a tick on time.
TICK_SECONDS = 5.0
# Histories are read by people and alerts sent by email: a second's delay costs nothing, and
# the query for unrecorded runs need not run at the workers' poll rate.
HISTORY_SECONDS = 1.0


async def run_scheduler(
    services: Services,
    stop: asyncio.Event,
    *,
    clock: Clock = utcnow,
    tick_seconds: float | None = None,
    poll_seconds: float | None = None,
) -> None:
    """Submit due cron ticks every `tick_seconds` and record done benchmarks every
    `poll_seconds` (by default the settings' poll interval, at least HISTORY_SECONDS) until
    `stop` is set; a failed round is logged and tried again at the next turn."""
    tick_every = TICK_SECONDS if tick_seconds is None else tick_seconds
    poll_every = (
        max(services.settings.poll_seconds, HISTORY_SECONDS)
        if poll_seconds is None
        else poll_seconds
    )

    async def ticks() -> None:
        await submit_due_ticks(services, now=clock())

    async def histories() -> None:
        await record_done_benchmarks(services)

    await asyncio.gather(
        run_every(tick_every, stop, ticks, what="cron ticks"),
        run_every(poll_every, stop, histories, what="benchmark histories"),
    )
