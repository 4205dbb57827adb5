"""Cron ticks: one child set per tick with two schedulers racing, missed ticks reported and
not replayed, and a purged parent's schedule stopped."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import col

from core.context import Services
from core.models import Event, Schedule, ScheduleTick, Submission
from core.submissions import purge_submission
from scheduler import run_scheduler
from scheduler.ticks import due_tick, submit_due_ticks
from tests.scheduler.conftest import T0, make_owner, make_schedule


async def children_of(services: Services, parent_id: str) -> list[Submission]:
    async with services.db.session() as session:
        return list(
            await session.scalars(
                sa.select(Submission)
                .where(col(Submission.parent_id) == parent_id)
                .order_by(col(Submission.created_at))
            )
        )


async def events_of(services: Services, submission_id: str, type: str) -> list[Event]:
    async with services.db.session() as session:
        return list(
            await session.scalars(
                sa.select(Event).where(
                    col(Event.submission_id) == submission_id, col(Event.type) == type
                )
            )
        )


def at(minutes: int, seconds: int = 0) -> datetime:
    return T0.replace(second=0) + timedelta(minutes=minutes, seconds=seconds)


def test_due_tick_runs_the_latest_and_counts_the_rest() -> None:
    assert due_tick("*/5 * * * *", since=T0, now=at(4, 59)) is None
    due = due_tick("*/5 * * * *", since=T0, now=at(5))
    assert due is not None and (due.tick_at, due.missed) == (at(5), 0)
    due = due_tick("*/5 * * * *", since=at(5), now=at(31))
    assert due is not None
    assert (due.tick_at, due.missed, due.first_missed, due.last_missed) == (
        at(30),
        4,
        at(10),
        at(25),
    )


async def test_two_schedulers_submit_each_tick_once(services: Services, second: Services) -> None:
    owner = await make_owner(services)
    parent = await make_schedule(
        services, owner, "*/5 * * * *", ranges="[ranges]\nbatch = [8, 16]\n"
    )
    submitted = 0
    for now in (at(3), at(5, 10), at(7), at(10, 2), at(10, 40), at(15)):
        reports = await asyncio.gather(
            submit_due_ticks(services, now=now), submit_due_ticks(second, now=now)
        )
        submitted += sum(len(r.submitted) for r in reports)
    assert submitted == 3
    children = await children_of(services, parent.id)
    ticks = sorted(c.meta["tick"] for c in children)
    # Two children per tick (the [ranges] family), each tick once.
    assert ticks == [at(m).isoformat() for m in (5, 5, 10, 10, 15, 15)]
    assert sorted(c.meta["values"]["batch"] for c in children) == [8, 8, 8, 16, 16, 16]
    assert all(c.status == "uploaded" and c.kind == "benchmark" for c in children)
    async with services.db.session() as session:
        rows = list(await session.scalars(sa.select(ScheduleTick)))
    assert sorted(r.tick_at for r in rows) == [at(5), at(10), at(15)]
    assert all(len(r.children) == 2 and r.missed == 0 for r in rows)
    assert await events_of(services, parent.id, "benchmark.ticks_missed") == []


async def test_two_scheduler_loops_racing_with_an_injected_clock(
    services: Services, second: Services
) -> None:
    owner = await make_owner(services)
    parent = await make_schedule(services, owner, "* * * * *")
    now = [at(0, 45)]
    stop = asyncio.Event()
    loops = [
        asyncio.create_task(
            run_scheduler(s, stop, clock=lambda: now[0], tick_seconds=0.01, poll_seconds=0.05)
        )
        for s in (services, second)
    ]
    try:
        for minute in (1, 2, 3):
            now[0] = at(minute, 1)
            for _ in range(200):
                if len(await children_of(services, parent.id)) >= minute:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.1)  # both loops had several turns at this time
    finally:
        stop.set()
        await asyncio.gather(*loops)
    children = await children_of(services, parent.id)
    assert sorted(c.meta["tick"] for c in children) == [at(m).isoformat() for m in (1, 2, 3)]


async def test_missed_ticks_are_reported_not_replayed(services: Services) -> None:
    owner = await make_owner(services)
    parent = await make_schedule(services, owner, "*/5 * * * *")
    await submit_due_ticks(services, now=at(5, 1))
    # The scheduler was down from 00:05 to 00:31: 00:10 .. 00:25 fell due unseen.
    report = await submit_due_ticks(services, now=at(31))
    assert [(pid, tick) for pid, tick, _ in report.submitted] == [(parent.id, at(30))]
    children = await children_of(services, parent.id)
    assert sorted(c.meta["tick"] for c in children) == [at(5).isoformat(), at(30).isoformat()]
    [missed] = await events_of(services, parent.id, "benchmark.ticks_missed")
    assert (
        f"missed 4 tick(s) between {at(10).isoformat()} and {at(25).isoformat()}" in missed.message
    )
    assert missed.envelope["payload"]["missed"] == 4
    # Nothing is owed afterwards: the next round waits for 00:35.
    assert (await submit_due_ticks(services, now=at(34))).submitted == []


async def test_purging_the_parent_stops_its_schedule(services: Services) -> None:
    owner = await make_owner(services)
    parent = await make_schedule(services, owner, "*/5 * * * *")
    await submit_due_ticks(services, now=at(5))
    assert len(await children_of(services, parent.id)) == 1
    async with services.db.session() as session:
        result = await purge_submission(session, services.storage, parent.id, user=owner)
    assert len(result["purged"]) == 2  # the parent and its one child
    report = await submit_due_ticks(services, now=at(30))
    assert report.submitted == [] and report.discovered == []
    async with services.db.session() as session:
        assert list(await session.scalars(sa.select(Schedule))) == []
        assert list(await session.scalars(sa.select(ScheduleTick))) == []
        assert await session.get(Submission, parent.id) is None


async def test_a_schedule_whose_descriptor_is_gone_is_reported_once(services: Services) -> None:
    owner = await make_owner(services)
    parent = await make_schedule(services, owner, "*/5 * * * *")
    await services.storage.delete_prefix(f"submissions/{parent.id}")
    await submit_due_ticks(services, now=at(5))
    await submit_due_ticks(services, now=at(10))
    [failed] = await events_of(services, parent.id, "benchmark.schedule_failed")
    assert "descriptor could not be read" in failed.message
    assert await children_of(services, parent.id) == []


async def test_cancelling_the_parent_stops_its_schedule_and_cancels_unfinished_runs(
    services: Services,
) -> None:
    from core.submissions import cancel_submission

    owner = await make_owner(services)
    parent = await make_schedule(services, owner, "*/5 * * * *")
    await submit_due_ticks(services, now=at(5))
    [child] = await children_of(services, parent.id)
    async with services.db.session() as session:
        await cancel_submission(session, parent.id, user=owner)
    async with services.db.session() as session:
        assert (await session.get(Submission, child.id)).status == "cancelled"  # type: ignore[union-attr]
        kept = await session.get(Submission, parent.id)
        assert kept is not None and kept.meta["role"] == "stopped-schedule"
    # No scheduler takes it on again, and no tick comes.
    report = await submit_due_ticks(services, now=at(30))
    assert report.submitted == [] and report.discovered == []
    assert len(await children_of(services, parent.id)) == 1
    [note] = await events_of(services, parent.id, "benchmark.cancelled")
    assert "1 unfinished run(s) cancelled; the schedule is stopped" in note.message


async def test_a_tick_past_its_owner_s_run_limit_is_skipped_and_said(services: Services) -> None:
    owner = await make_owner(services)
    parent = await make_schedule(services, owner, "*/5 * * * *")
    services.settings.benchmark_runs_per_day = 1
    await submit_due_ticks(services, now=at(5))
    await submit_due_ticks(services, now=at(10))  # the limit is used: no second run
    assert len(await children_of(services, parent.id)) == 1
    [skipped] = await events_of(services, parent.id, "benchmark.tick_skipped")
    assert f"tick {at(10).isoformat()}: skipped" in skipped.message
    assert "the limit is 1" in skipped.message
    # The tick is spent, not retried at every round.
    await submit_due_ticks(services, now=at(11))
    assert len(await events_of(services, parent.id, "benchmark.tick_skipped")) == 1
