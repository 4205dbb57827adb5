"""Benchmark histories: every done benchmark joins its series once, and is judged against it.

`record_done_benchmarks` (a loop of the scheduler role, like the leaderboard rebuild) finds
done submissions of tracked kinds (core.kinds) not yet recorded. Each one is recorded in the
series of its identity (meta.identity: task_name + labels + hardware) and range values, one
point per metric from its overall scores (dataset "all": the median over every run), and
then every `[[output.alerts]]` rule of its descriptor is evaluated with the state stored for
it (metrics.regressions). An alert fired or cleared becomes a `BenchmarkAlert` row and an
event on the run's timeline; a fired one also queues an email to the owner (scheduler.alerts).

Exactly once, with any number of recorders: the recording transaction first raises the
series' `version` (an UPDATE, so a second recorder of the same series waits for the first's
commit on every backend and then sees its points), then inserts the run's row, keyed by the
submission; a recorder that finds the row there already stops. The alert rows are unique
per (series, metric, rule, kind, detecting run) as well.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from core.benchmarks import benchmark_identity
from core.descriptor import Descriptor, parse_descriptor
from core.kinds import POLICIES
from core.models import (
    BenchmarkAlert,
    BenchmarkAlertState,
    BenchmarkPoint,
    BenchmarkRun,
    BenchmarkSeries,
    Score,
    Submission,
    table_of,
    utcnow,
)
from core.states import Status, record_event
from metrics.errors import MetricError
from metrics.regressions import AlertEvent, AlertRule, AlertState, evaluate_alerts
from scheduler.alerts import queue_alert_email

if TYPE_CHECKING:
    from core.context import Services

log = logging.getLogger(__name__)

SERVICE = "scheduler"
# The dataset of a benchmark's overall score per metric (the median over every run).
OVERALL = "all"
PARENT_ROLES = ("schedule", "family")
BATCH = 50


@dataclass
class Recording:
    """What a done submission brings to its series, read before the write transaction."""

    submission: Submission
    identity: str
    variant: str
    benchmark: str
    instance_type: str
    labels: dict[str, Any]
    run_at: datetime
    scores: list[Score]
    units: dict[str, str]
    rules: list[AlertRule]
    problems: list[str] = field(default_factory=list)


def rule_key(rule: AlertRule) -> str:
    """A short stable hash of a rule: its state is kept per rule, and starts afresh if the
    rule's thresholds change."""
    text = json.dumps(rule.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def variant_of(values: Any) -> str:
    """A family child's range values as one label ("" for a run without ranges)."""
    if not isinstance(values, dict) or not values:
        return ""
    return ", ".join(f"{k}={values[k]}" for k in sorted(values))[:255]


def _run_at(submission: Submission) -> datetime:
    """A scheduled run is placed at its cron tick; any other at its submission time."""
    tick = submission.meta.get("tick")
    if isinstance(tick, str):
        try:
            return datetime.fromisoformat(tick)
        except ValueError:
            pass
    return submission.created_at


def unrecorded() -> sa.Select[Any]:
    """Done submissions of tracked kinds that are not in a series yet (parents excluded)."""
    runs = table_of(BenchmarkRun)
    role = col(Submission.meta)["role"].as_string()
    tracked = [name for name, policy in POLICIES.items() if policy.tracked]
    return (
        sa.select(Submission)
        .outerjoin(runs, runs.c.submission_id == col(Submission.id))
        .where(
            col(Submission.status) == Status.DONE.value,
            col(Submission.kind).in_(tracked),
            sa.or_(role.is_(None), role.not_in(PARENT_ROLES)),
            runs.c.submission_id.is_(None),
        )
        .order_by(col(Submission.updated_at), col(Submission.id))
        .limit(BATCH)
    )


class _Descriptors:
    """Descriptors read from storage, parsed once per content (a schedule's runs share one)."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.parsed: dict[str, Descriptor | str] = {}

    async def get(self, submission: Submission) -> Descriptor | str:
        """The descriptor, or why it could not be read."""
        key = submission.upload_sha256 or submission.upload_key or submission.id
        if key not in self.parsed:
            try:
                text = await self.services.storage.read_bytes(submission.upload_key or "")
                self.parsed[key] = parse_descriptor(
                    text, filename=submission.upload_filename or "descriptor.toml"
                )
            except Exception as exc:
                self.parsed[key] = f"the descriptor could not be read: {exc}"
        return self.parsed[key]


async def _read(
    session: AsyncSession, submission: Submission, descriptors: _Descriptors
) -> Recording:
    descriptor = await descriptors.get(submission)
    problems = [descriptor] if isinstance(descriptor, str) else []
    parsed = descriptor if not isinstance(descriptor, str) else None
    meta = submission.meta
    rules = []
    for i, alert in enumerate(parsed.output.alerts if parsed else []):
        try:
            rules.append(AlertRule(**alert.model_dump()))
        except ValidationError as exc:
            where = f"output.alerts[{i}]"
            problems.append(
                f"{where} is not usable: {exc.errors()[0]['msg']} (this rule is skipped)"
            )
    scores = list(
        await session.scalars(
            sa.select(Score)
            .where(col(Score.submission_id) == submission.id, col(Score.dataset) == OVERALL)
            .order_by(col(Score.metric))
        )
    )
    return Recording(
        submission=submission,
        identity=str(meta.get("identity") or (benchmark_identity(parsed) if parsed else "")),
        variant=variant_of(meta.get("values")),
        benchmark=str(meta.get("benchmark") or (parsed.task_name if parsed else "") or ""),
        instance_type=str(
            meta.get("instance_type") or (parsed.hardware.instance_type if parsed else "")
        ),
        labels=dict(parsed.info.labels) if parsed else {},
        run_at=_run_at(submission),
        scores=scores,
        units={m.name: m.units for m in parsed.output.metrics} if parsed else {},
        rules=rules,
        problems=problems,
    )


async def _series_id(services: Services, rec: Recording) -> int:
    """The series' id, made when it is the first run of it (two makers: one wins)."""
    query = sa.select(col(BenchmarkSeries.id)).where(
        col(BenchmarkSeries.identity) == rec.identity, col(BenchmarkSeries.variant) == rec.variant
    )
    async with services.db.session() as session:
        found = await session.scalar(query)
    if found is not None:
        return int(found)
    try:
        async with services.db.session() as session:
            series = BenchmarkSeries(
                identity=rec.identity,
                variant=rec.variant,
                benchmark=rec.benchmark[:255],
                instance_type=rec.instance_type[:128],
                labels=rec.labels,
            )
            session.add(series)
            await session.flush()
            assert series.id is not None
            return series.id
    except IntegrityError:
        async with services.db.session() as session:
            found = await session.scalar(query)
        assert found is not None
        return int(found)


async def _series_values(
    session: AsyncSession, series_id: int, metric: str
) -> list[tuple[str, float | None]]:
    """The metric's series in the order its runs were recorded (the series lock makes ids
    follow that order): a run that finishes late is still judged, after the ones before it,
    where in time order it would land behind the state's last run and never be looked at."""
    points = table_of(BenchmarkPoint).c
    rows = await session.execute(
        sa.select(points.submission_id, points.value)
        .where(points.series_id == series_id, points.metric == metric)
        .order_by(points.id)
    )
    return [(sid, value) for sid, value in rows]


async def _judge(
    session: AsyncSession,
    services: Services,
    rec: Recording,
    series_id: int,
    rule: AlertRule,
) -> list[AlertEvent]:
    """Evaluate one rule on its metric's series with the stored state; store the new state
    and the alerts, and tell the run's timeline (and, for a fired alert, its owner)."""
    series = await _series_values(session, series_id, rule.metric)
    key = rule_key(rule)
    row = await session.scalar(
        sa.select(BenchmarkAlertState).where(
            col(BenchmarkAlertState.series_id) == series_id,
            col(BenchmarkAlertState.metric) == rule.metric,
            col(BenchmarkAlertState.rule_key) == key,
        )
    )
    previous = AlertState.model_validate(row.state) if row is not None and row.state else None
    if previous is not None and previous.last_run not in {sid for sid, _ in series}:
        # Its last run was purged: start afresh from the history as it is now.
        previous = None
    try:
        state, events = await asyncio.to_thread(evaluate_alerts, series, rule, previous)
    except MetricError as exc:
        log.error("series %s, %s: %s", series_id, rule.metric, exc)
        return []
    if row is None:
        row = BenchmarkAlertState(
            series_id=series_id, metric=rule.metric, rule_key=key, rule=rule.model_dump()
        )
    row.state = state.model_dump(mode="json")
    row.status = state.status
    row.updated_at = utcnow()
    session.add(row)
    for event in events:
        alert = BenchmarkAlert(
            series_id=series_id,
            metric=event.metric,
            rule_key=key,
            kind=event.kind,
            method=event.method,
            submission_id=str(event.run_id),
            detected_id=str(event.detected_at),
            baseline=event.baseline,
            value=event.value,
            change=event.change,
            relative_change=event.relative_change,
            details={
                "z": event.z,
                "pvalue": event.pvalue,
                "change_point_index": event.change_point_index,
                "worse": rule.worse,
            },
        )
        session.add(alert)
        await session.flush()
        _tell_timeline(session, rec, event, rule)
        if event.kind == "fired":
            await queue_alert_email(
                session,
                services,
                rec.submission,
                alert,
                rule=rule,
                benchmark=rec.benchmark or rec.submission.name,
                where=_where(rec),
                units=rec.units.get(rule.metric, ""),
            )
    return events


def _where(rec: Recording) -> str:
    """The hardware and range values a series runs on, for people."""
    parts = [f"on {rec.instance_type}" if rec.instance_type else "", rec.variant]
    return ", ".join(p for p in parts if p) or "its only configuration"


def _tell_timeline(
    session: AsyncSession, rec: Recording, event: AlertEvent, rule: AlertRule
) -> None:
    relative = f" ({event.relative_change:+.1%})" if event.relative_change is not None else ""
    if event.kind == "fired":
        message = (
            f"regression: {event.metric} went from {event.baseline:g} to {event.value:g} "
            f"({event.change:+g}{relative}) from run {event.run_id} on ({rule.method} test)"
        )
    else:
        message = (
            f"alert cleared: {event.metric} is back at {event.value:g} "
            f"(baseline {event.baseline:g}) from run {event.run_id} on"
        )
    record_event(
        session,
        rec.submission,
        f"benchmark.alert_{event.kind}",
        service=SERVICE,
        status=rec.submission.status,
        message=message,
        payload=event.model_dump(mode="json"),
    )


async def record_submission(services: Services, rec: Recording) -> list[AlertEvent] | None:
    """Record one done run in its series and judge it; None when another recorder had it."""
    series_id = await _series_id(services, rec)
    series_table = table_of(BenchmarkSeries)
    async with services.db.session() as session:
        # The series' lock: a second recorder of this series waits here until we commit.
        await session.execute(
            sa.update(series_table)
            .where(series_table.c.id == series_id)
            .values(version=series_table.c.version + 1)
        )
        if await session.get(BenchmarkRun, rec.submission.id) is not None:
            return None
        submission = await session.get(Submission, rec.submission.id)
        if submission is None:
            return None  # purged meanwhile
        rec.submission = submission
        note = "" if rec.scores else f"no overall scores (dataset {OVERALL!r}) to record"
        session.add(
            BenchmarkRun(
                submission_id=submission.id, series_id=series_id, run_at=rec.run_at, note=note
            )
        )
        await session.flush()
        for score in rec.scores:
            session.add(
                BenchmarkPoint(
                    series_id=series_id,
                    submission_id=submission.id,
                    metric=score.metric,
                    run_at=rec.run_at,
                    value=score.value,
                    ci_low=score.ci_low,
                    ci_high=score.ci_high,
                    units=rec.units.get(score.metric, "")[:32],
                )
            )
        await session.flush()
        for problem in rec.problems:
            record_event(
                session,
                submission,
                "benchmark.history_note",
                service=SERVICE,
                status=submission.status,
                message=f"history: {problem}",
            )
        recorded = {score.metric for score in rec.scores}
        events: list[AlertEvent] = []
        for rule in rec.rules:
            if rule.metric in recorded:
                events += await _judge(session, services, rec, series_id, rule)
    return events


async def record_done_benchmarks(services: Services) -> int:
    """Record every done, unrecorded benchmark (oldest first); returns how many were taken."""
    descriptors = _Descriptors(services)
    taken = 0
    while True:
        async with services.db.session() as session:
            batch = list(await session.scalars(unrecorded()))
            recordings = [await _read(session, s, descriptors) for s in batch]
        before = taken
        for rec in recordings:
            try:
                if await record_submission(services, rec) is not None:
                    taken += 1
            except IntegrityError:
                # The run's row or an alert was written by another recorder: theirs stands.
                continue
        if len(batch) < BATCH or taken == before:
            return taken
