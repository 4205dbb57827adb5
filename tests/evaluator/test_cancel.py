"""Cancelled means cancelled: every run of a cancelled submission ends `cancelled`, whether the
cancel lands while its message waits, after a worker made its runs, or mid-dataset (where the
handler workers are stopped at once); a later message for it changes nothing."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import sqlalchemy as sa

from core.context import Services
from core.envelope import Envelope
from core.models import Notification, Run, User
from core.queue import eval_queue
from core.submissions import cancel_submission, list_runs, list_scores
from core.taskconfig import TaskConfig
from evaluator.evaluation import EvaluatePayload, Evaluation
from sandbox.uids import uid_range
from tests.evaluator.factories import (
    FLEET,
    events_of,
    make_built_submission,
    make_user,
    status_of,
    store_dataset,
    toy_rows,
    wait_for,
)
from tests.evaluator.models import pack_mar, write_folder
from tests.evaluator.test_worker import evaluator

# Each batch takes a minute: a run that ends within seconds was stopped, not finished.
STUCK = """
import time


def handle(data, context):
    if data is None:
        return None
    time.sleep(60)
    return [{"label": 0} for item in data]
"""


async def cancel(services: Services, submission_id: str, user: User) -> None:
    """What `weighbridge cancel ID` makes the api do."""
    async with services.db.session() as session:
        await cancel_submission(session, submission_id, user=user)


async def run_statuses(services: Services, submission_id: str) -> dict[str, str]:
    async with services.db.session() as session:
        return {r.name: r.status for r in await list_runs(session, submission_id)}


async def drained(services: Services) -> bool:
    return await services.queue.depth(eval_queue(FLEET)) == 0


def handler_processes() -> list[psutil.Process]:
    """This test's sandboxed processes: its descendants running as a sandbox user."""
    first, count = uid_range()
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if first <= process.uids().real < first + count:
                found.append(process)
        except psutil.Error:
            continue
    return found


async def test_a_submission_cancelled_while_queued_has_every_run_cancelled(
    services: Services, tmp_path: Path
) -> None:
    dataset = await store_dataset(services, toy_rows(8))
    second = await store_dataset(services, toy_rows(8), name="second")
    user = await make_user(services)
    mar = pack_mar(write_folder(tmp_path / "stuck", STUCK), tmp_path / "stuck.mar")
    # One waits in the queue; the other's runs were made by a worker that died before any
    # started (its message waits for redelivery): no worker is there to end them.
    waiting, _ = await make_built_submission(services, user, mar, [dataset, second])
    orphaned, envelope = await make_built_submission(services, user, mar, [dataset, second])
    await begin(services, envelope)
    assert await run_statuses(services, orphaned) == {"test": "queued", "second": "queued"}

    await cancel(services, waiting, user)
    await cancel(services, orphaned, user)
    assert await run_statuses(services, orphaned) == {"test": "cancelled", "second": "cancelled"}

    async with evaluator(services):
        await wait_for(lambda: drained(services), within=30)  # acknowledged, not retried

    for sid in (waiting, orphaned):
        assert await status_of(services, sid) == "cancelled"
        types = [e.type for e in await events_of(services, sid)]
        assert "dataset.started" not in types and types[-1] == "status.cancelled"
        async with services.db.session() as session:
            assert not await list_scores(session, sid)
    assert await run_statuses(services, waiting) == {}  # nothing was ever queued to run
    assert await run_statuses(services, orphaned) == {"test": "cancelled", "second": "cancelled"}


async def begin(services: Services, envelope: Envelope) -> None:
    """What a worker does first with the message: built -> evaluating, one queued run per
    dataset."""
    payload = EvaluatePayload.model_validate(envelope.payload)
    task = TaskConfig.model_validate(payload.task.config)
    with ThreadPoolExecutor(1) as pool:
        assert await Evaluation(services, envelope, payload, task, pool=pool).begin()


async def test_a_submission_cancelled_while_evaluating_stops_and_has_every_run_cancelled(
    services: Services, tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("the handler workers are told apart by their sandbox uid, given as root")
    dataset = await store_dataset(services, toy_rows(16))
    second = await store_dataset(services, toy_rows(16), name="second")
    user = await make_user(services)
    mar = pack_mar(write_folder(tmp_path / "stuck", STUCK), tmp_path / "stuck.mar")
    sid, envelope = await make_built_submission(
        services,
        user,
        mar,
        [dataset, second],
        eval_overrides={"batch_size": 4, "max_concurrent_transforms": 2, "timeout_seconds": 300},
    )

    async with evaluator(services):

        async def both_workers_busy() -> bool:
            return len(handler_processes()) >= 2

        await wait_for(both_workers_busy, within=60)
        assert await run_statuses(services, sid) == {"test": "running", "second": "queued"}
        workers = handler_processes()
        await cancel(services, sid, user)
        assert await run_statuses(services, sid) == {"test": "cancelled", "second": "cancelled"}
        cancelled_at = time.monotonic()

        async def stopped() -> bool:
            return any(e.type == "dataset.stopped" for e in await events_of(services, sid))

        await wait_for(stopped, within=15)
        _gone, alive = psutil.wait_procs(workers, timeout=5)
        assert not alive, alive  # killed mid-batch, not left to finish their minute
        assert time.monotonic() - cancelled_at < 30
        assert not handler_processes()

        # A later delivery of its message is acknowledged and changes nothing.
        events_before = len(await events_of(services, sid))
        await services.queue.send(eval_queue(FLEET), envelope)
        await wait_for(lambda: drained(services), within=30)
        assert len(await events_of(services, sid)) == events_before

    assert await status_of(services, sid) == "cancelled"
    assert await run_statuses(services, sid) == {"test": "cancelled", "second": "cancelled"}
    async with services.db.session() as session:
        assert not await list_scores(session, sid)
        runs = list(await session.scalars(sa.select(Run).where(Run.submission_id == sid)))
        emails = list(
            await session.scalars(sa.select(Notification).where(Notification.submission_id == sid))
        )
    assert all(r.error is None and r.finished_at is not None for r in runs)
    assert emails == []  # cancelling is the owner's own doing: no email about it
    events = await events_of(services, sid)
    types = [e.type for e in events]
    assert "dataset.failed" not in types and "status.failed" not in types
    assert types.count("dataset.started") == 1  # the second dataset never started
    stop = next(e for e in events if e.type == "dataset.stopped")
    assert stop.message == "test: stopped because the submission was cancelled"
