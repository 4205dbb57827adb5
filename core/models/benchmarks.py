"""Periodic benchmarks: their schedules and ticks, the metric series they keep, their alerts.

A scheduled parent (a cron descriptor) gets a `Schedule`; every tick the scheduler submits
becomes a `ScheduleTick`, unique per (parent, tick time), so two schedulers racing submit a
tick's children once. A done benchmark is recorded once (`BenchmarkRun`, keyed by the
submission) in its `BenchmarkSeries` (one per benchmark identity and range values), with one
`BenchmarkPoint` per metric; `BenchmarkAlertState` keeps what metrics.regressions remembers
between runs, and `BenchmarkAlert` every alert fired or cleared.

The rows of a submission are keyed by `submission_id`, so `cancel --purge` deletes them with
the submission's other rows.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from core.models.base import UTCDateTime, created_at_column, json_column, utcnow


class Schedule(SQLModel, table=True):
    """A scheduled parent's cron, read once from its descriptor; `last_tick_at` the newest tick
    submitted (the scheduler's bookmark; None before the first)."""

    __tablename__ = "schedules"

    # The parent submission (named so, like every per-submission row, for the purge).
    submission_id: str = Field(foreign_key="submissions.id", primary_key=True, max_length=32)
    cron: str = Field(max_length=128)
    # The range combinations each tick submits ([] for one plain run).
    families: list[dict[str, Any]] = Field(default_factory=list, sa_column=json_column())
    started_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    last_tick_at: datetime | None = Field(
        default=None, sa_column=sa.Column(UTCDateTime(), nullable=True)
    )
    created_at: datetime = Field(default_factory=utcnow, sa_column=created_at_column())


class ScheduleTick(SQLModel, table=True):
    """One cron tick of a schedule, submitted once: two schedulers race on its unique key."""

    __tablename__ = "schedule_ticks"
    __table_args__ = (
        sa.UniqueConstraint(
            "submission_id", "tick_at", name="uq_schedule_ticks_submission_id_tick_at"
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    submission_id: str = Field(foreign_key="submissions.id", index=True, max_length=32)
    tick_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    children: list[str] = Field(default_factory=list, sa_column=json_column())
    # Ticks that fell due while no scheduler ran and were skipped for this one.
    missed: int = 0
    created_at: datetime = Field(default_factory=utcnow, sa_column=created_at_column())


class BenchmarkSeries(SQLModel, table=True):
    """The history of one benchmark: an identity (task_name + labels + hardware) and, for a
    family's child, its range values (`variant`, "" for none): runs with other values are
    other measurements and never share a series.

    `version` is raised by every recording, as the series' lock: the UPDATE makes a second
    recorder of the same series wait for the first's commit, on every backend.
    """

    __tablename__ = "benchmark_series"
    __table_args__ = (
        sa.UniqueConstraint("identity", "variant", name="uq_benchmark_series_identity_variant"),
    )

    id: int | None = Field(default=None, primary_key=True)
    identity: str = Field(max_length=64)
    variant: str = Field(default="", max_length=255)
    benchmark: str = Field(default="", max_length=255, index=True)
    instance_type: str = Field(default="", max_length=128)
    labels: dict[str, Any] = Field(default_factory=dict, sa_column=json_column())
    version: int = 0
    created_at: datetime = Field(default_factory=utcnow, sa_column=created_at_column())


class BenchmarkRun(SQLModel, table=True):
    """A done submission taken into its series, once: the primary key is the submission."""

    __tablename__ = "benchmark_runs"

    submission_id: str = Field(foreign_key="submissions.id", primary_key=True, max_length=32)
    series_id: int = Field(foreign_key="benchmark_series.id", index=True)
    # When the run was asked for: its cron tick, else its submission time (the series' order).
    run_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    # Why nothing was recorded for it (no overall scores), else "".
    note: str = Field(default="", sa_column=sa.Column(sa.Text(), nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_column=created_at_column())


class BenchmarkPoint(SQLModel, table=True):
    """One metric of one run in a series: the value over all the run's repetitions."""

    __tablename__ = "benchmark_points"
    __table_args__ = (
        sa.UniqueConstraint(
            "submission_id", "metric", name="uq_benchmark_points_submission_id_metric"
        ),
        sa.Index("ix_benchmark_points_series_metric_run", "series_id", "metric", "run_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    series_id: int = Field(foreign_key="benchmark_series.id")
    submission_id: str = Field(foreign_key="submissions.id", index=True, max_length=32)
    metric: str = Field(max_length=64)
    run_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    # Double, not Float: MySQL's FLOAT is single precision.
    value: float = Field(sa_column=sa.Column(sa.Double(), nullable=False))
    ci_low: float | None = Field(default=None, sa_column=sa.Column(sa.Double(), nullable=True))
    ci_high: float | None = Field(default=None, sa_column=sa.Column(sa.Double(), nullable=True))
    units: str = Field(default="", max_length=32)


class BenchmarkAlertState(SQLModel, table=True):
    """metrics.regressions.AlertState of one `[[output.alerts]]` rule on one metric of a series.

    `rule_key` hashes the rule, so a descriptor that changes its thresholds starts afresh.
    """

    __tablename__ = "benchmark_alert_states"
    __table_args__ = (
        sa.UniqueConstraint(
            "series_id",
            "metric",
            "rule_key",
            name="uq_benchmark_alert_states_series_id_metric_rule_key",
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    series_id: int = Field(foreign_key="benchmark_series.id", index=True)
    metric: str = Field(max_length=64)
    rule_key: str = Field(max_length=16)
    rule: dict[str, Any] = Field(default_factory=dict, sa_column=json_column())
    status: str = Field(default="ok", max_length=16)  # ok | pending | alerting
    state: dict[str, Any] = Field(default_factory=dict, sa_column=json_column())
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column=sa.Column(UTCDateTime(), nullable=False)
    )


class BenchmarkAlert(SQLModel, table=True):
    """An alert fired (the metric got worse) or cleared (it came back), on a series.

    `submission_id` is the first run at the new level, `detected_id` the run whose recording
    raised it; unique per (series, metric, rule, kind, detecting run), so a recording that
    runs twice cannot raise it twice.
    """

    __tablename__ = "benchmark_alerts"
    __table_args__ = (
        sa.UniqueConstraint(
            "series_id",
            "metric",
            "rule_key",
            "kind",
            "detected_id",
            name="uq_benchmark_alerts_series_id_metric_rule_key_kind_detected_id",
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    series_id: int = Field(foreign_key="benchmark_series.id", index=True)
    metric: str = Field(max_length=64)
    rule_key: str = Field(max_length=16)
    kind: str = Field(max_length=16)  # fired | cleared
    method: str = Field(max_length=16)
    submission_id: str = Field(max_length=32, index=True)
    detected_id: str = Field(max_length=32)
    baseline: float = Field(sa_column=sa.Column(sa.Double(), nullable=False))
    value: float = Field(sa_column=sa.Column(sa.Double(), nullable=False))
    change: float = Field(sa_column=sa.Column(sa.Double(), nullable=False))
    relative_change: float | None = Field(
        default=None, sa_column=sa.Column(sa.Double(), nullable=True)
    )
    details: dict[str, Any] = Field(default_factory=dict, sa_column=json_column())
    created_at: datetime = Field(default_factory=utcnow, sa_column=created_at_column())
