"""Cron ticks: each scheduled benchmark's children submitted once per tick, whoever runs.

A cron descriptor makes a parent submission (core.benchmarks); `discover_schedules` gives
each new parent a `Schedule` row (its cron and range family, read once from the stored
descriptor). `submit_due_ticks` then, for every schedule whose next tick has come:

- inserts the tick's row, unique per (parent, tick time), FIRST in its transaction and
  submits the children in the same transaction: a second scheduler racing for the same tick
  fails on the unique key (after the first commits, on every backend) and rolls back its
  children with it, so a tick runs exactly once;
- runs only the LATEST due tick: ticks that fell due while no scheduler ran are reported on
  the parent's timeline ("missed N ticks between A and B") and never replayed in a burst;
- stops for a purged parent: the purge deletes the schedule with the parent, and a tick
  racing the purge fails on its foreign key.

The clock is injected (`now`), so tests drive the schedule without waiting for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from croniter import croniter
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from core.benchmarks import check_run_limit, submit_children
from core.descriptor import expand_ranges, parse_descriptor
from core.errors import RateLimited
from core.models import Schedule, ScheduleTick, Submission, User, table_of, utcnow
from core.states import record_event

if TYPE_CHECKING:
    from core.context import Services

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
SERVICE = "scheduler"
# A schedule that could not be read (its descriptor gone or no longer valid) is kept with
# this cron, so it is reported once and never looked at again.
DISABLED = ""
# Past this many missed ticks the count is not walked to the end ("more than N").
MAX_COUNTED_MISSES = 100_000


@dataclass(frozen=True)
class DueTick:
    """The tick to run now for a schedule, and the ticks skipped before it."""

    tick_at: datetime
    missed: int = 0
    first_missed: datetime | None = None
    last_missed: datetime | None = None
    counted_all: bool = True


@dataclass
class TickReport:
    """What one round did: ticks submitted (parent id, tick, children) and schedules found."""

    submitted: list[tuple[str, datetime, list[str]]] = field(default_factory=list)
    discovered: list[str] = field(default_factory=list)


def due_tick(cron: str, *, since: datetime, now: datetime) -> DueTick | None:
    """The newest tick of `cron` in (since, now], with the ones before it counted; None when
    none has come. `since` is the last tick submitted (or when the schedule began)."""
    latest = croniter(cron, now + timedelta(microseconds=1)).get_prev(datetime)
    if latest <= since:
        return None
    ticks = croniter(cron, since)
    missed = 0
    first = last = None
    while True:
        tick = ticks.get_next(datetime)
        if tick >= latest:
            break
        first = first or tick
        last = tick
        missed += 1
        if missed >= MAX_COUNTED_MISSES:
            prev = croniter(cron, latest).get_prev(datetime)
            return DueTick(latest, missed, first, prev, counted_all=False)
    return DueTick(latest, missed, first, last)


def _schedule_parents() -> sa.Select[Any]:
    """Scheduled parents that have no schedule row yet."""
    schedules = table_of(Schedule)
    role = col(Submission.meta)["role"].as_string()
    return (
        sa.select(Submission)
        .outerjoin(schedules, schedules.c.submission_id == col(Submission.id))
        .where(
            col(Submission.parent_id).is_(None),
            role == "schedule",
            schedules.c.submission_id.is_(None),
        )
        .order_by(col(Submission.created_at))
        .limit(100)
    )


async def discover_schedules(services: Services) -> list[str]:
    """Give each new scheduled parent its schedule row; returns the parents taken on."""
    async with services.db.session() as session:
        parents = list(await session.scalars(_schedule_parents()))
    found = []
    for parent in parents:
        cron, families, problem = DISABLED, [], ""
        try:
            text = await services.storage.read_bytes(parent.upload_key or "")
            descriptor = parse_descriptor(text, filename=parent.upload_filename or "descriptor")
            if descriptor.scheduled:
                cron, families = descriptor.info.scheduling, expand_ranges(descriptor)
            else:
                problem = "its descriptor is not scheduled (info.scheduling is single_run)"
        except Exception as exc:  # a descriptor gone or refused: reported once, below
            problem = f"its descriptor could not be read: {exc}"
        try:
            async with services.db.session() as session:
                session.add(
                    Schedule(
                        submission_id=parent.id,
                        cron=cron,
                        families=families,
                        started_at=parent.created_at,
                    )
                )
                await session.flush()
                if problem:
                    record_event(
                        session,
                        parent,
                        "benchmark.schedule_failed",
                        service=SERVICE,
                        status=parent.status,
                        message=f"the schedule cannot run: {problem}",
                    )
        except IntegrityError:
            continue  # another scheduler took it on first, or the parent was purged
        if problem:
            log.error("schedule %s cannot run: %s", parent.id, problem)
        found.append(parent.id)
    return found


def _missed_message(due: DueTick) -> str:
    count = str(due.missed) if due.counted_all else f"more than {due.missed}"
    first = due.first_missed.isoformat() if due.first_missed else "?"
    last = due.last_missed.isoformat() if due.last_missed else "?"
    return (
        f"missed {count} tick(s) between {first} and {last} while no scheduler ran; "
        f"they are not replayed: only the latest, {due.tick_at.isoformat()}, runs"
    )


async def submit_tick(services: Services, schedule: Schedule, due: DueTick) -> list[str] | None:
    """Submit the children of one tick, once; None when another scheduler had it already or
    the parent is gone."""
    tick_iso = due.tick_at.isoformat()
    try:
        async with services.db.session() as session:
            # The unique row first: a racing scheduler waits here for our commit, then fails.
            tick = ScheduleTick(
                submission_id=schedule.submission_id, tick_at=due.tick_at, missed=due.missed
            )
            session.add(tick)
            await session.flush()
            parent = await session.get(Submission, schedule.submission_id)
            if parent is None:
                raise LookupError(schedule.submission_id)
            owner = await session.get(User, parent.user_id)
            assert owner is not None
            try:
                await check_run_limit(
                    session,
                    owner,
                    adding=max(1, len(schedule.families)),
                    limit=services.settings.benchmark_runs_per_day,
                )
            except RateLimited as exc:
                # The tick is spent, without runs: a schedule cannot outrun its owner's limit.
                record_event(
                    session,
                    parent,
                    "benchmark.tick_skipped",
                    service=SERVICE,
                    status=parent.status,
                    message=f"tick {tick_iso}: skipped: {exc.message}",
                    payload={"tick": tick_iso},
                )
                children = []
            else:
                children = await submit_children(
                    session,
                    services.outbox,
                    parent,
                    list(schedule.families),
                    user=owner,
                    extra_meta={"tick": tick_iso},
                )
            tick.children = [child.id for child in children]
            session.add(tick)
            schedules = table_of(Schedule)
            await session.execute(
                sa.update(schedules)
                .where(schedules.c.submission_id == schedule.submission_id)
                .values(last_tick_at=due.tick_at)
            )
            if due.missed:
                record_event(
                    session,
                    parent,
                    "benchmark.ticks_missed",
                    service=SERVICE,
                    status=parent.status,
                    message=_missed_message(due),
                    payload={
                        "missed": due.missed,
                        "first": due.first_missed.isoformat() if due.first_missed else None,
                        "last": due.last_missed.isoformat() if due.last_missed else None,
                        "counted_all": due.counted_all,
                        "ran": tick_iso,
                    },
                )
            record_event(
                session,
                parent,
                "benchmark.tick",
                service=SERVICE,
                status=parent.status,
                message=f"tick {tick_iso}: submitted {len(children)} run(s)",
                payload={"tick": tick_iso, "children": tick.children},
            )
    except IntegrityError:
        return None  # this tick is another scheduler's, or the parent was purged meanwhile
    except LookupError:
        return None
    log.info(
        "schedule %s: tick %s submitted %d run(s)",
        schedule.submission_id,
        tick_iso,
        len(tick.children),
    )
    return list(tick.children)


async def submit_due_ticks(services: Services, *, now: datetime | None = None) -> TickReport:
    """One round: take on new schedules, then submit every schedule's due tick (if any)."""
    now = now or utcnow()
    report = TickReport(discovered=await discover_schedules(services))
    async with services.db.session() as session:
        schedules = list(
            await session.scalars(
                sa.select(Schedule)
                .where(col(Schedule.cron) != DISABLED)
                .order_by(col(Schedule.created_at))
            )
        )
    for schedule in schedules:
        since = schedule.last_tick_at or schedule.started_at
        try:
            due = due_tick(schedule.cron, since=since, now=now)
        except (ValueError, KeyError) as exc:  # a cron croniter refuses (validated at submit)
            log.error("schedule %s: cron %r: %s", schedule.submission_id, schedule.cron, exc)
            continue
        if due is None:
            continue
        children = await submit_tick(services, schedule, due)
        if children is not None:
            report.submitted.append((schedule.submission_id, due.tick_at, children))
    return report
