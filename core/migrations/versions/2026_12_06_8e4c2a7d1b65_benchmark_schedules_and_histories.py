"""benchmark schedules and histories

Revision ID: 8e4c2a7d1b65
Revises: 5d1f8b3c7e92
Create Date: 2026-12-06 11:29:46.068441

Periodic benchmarks (scheduler/): a schedule per cron parent and one row per tick submitted,
unique per (parent, tick) so two schedulers submit a tick once; the metric series of each
benchmark identity, their points, the regression alert states and the alerts raised
(see core/models/benchmarks.py).
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import core.models.base

revision: str = "8e4c2a7d1b65"
down_revision: str | None = "5d1f8b3c7e92"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "benchmark_series",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("identity", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("variant", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("benchmark", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("instance_type", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", core.models.base.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_benchmark_series")),
        sa.UniqueConstraint("identity", "variant", name="uq_benchmark_series_identity_variant"),
    )
    with op.batch_alter_table("benchmark_series", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_benchmark_series_benchmark"), ["benchmark"], unique=False
        )

    op.create_table(
        "benchmark_alert_states",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("series_id", sa.Integer(), nullable=False),
        sa.Column("metric", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("rule_key", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("rule", sa.JSON(), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.Column("updated_at", core.models.base.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["series_id"],
            ["benchmark_series.id"],
            name=op.f("fk_benchmark_alert_states_series_id_benchmark_series"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_benchmark_alert_states")),
        sa.UniqueConstraint(
            "series_id",
            "metric",
            "rule_key",
            name="uq_benchmark_alert_states_series_id_metric_rule_key",
        ),
    )
    with op.batch_alter_table("benchmark_alert_states", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_benchmark_alert_states_series_id"), ["series_id"], unique=False
        )

    op.create_table(
        "benchmark_alerts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("series_id", sa.Integer(), nullable=False),
        sa.Column("metric", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("rule_key", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("method", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("submission_id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("detected_id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("baseline", sa.Double(), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.Column("change", sa.Double(), nullable=False),
        sa.Column("relative_change", sa.Double(), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("created_at", core.models.base.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["series_id"],
            ["benchmark_series.id"],
            name=op.f("fk_benchmark_alerts_series_id_benchmark_series"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_benchmark_alerts")),
        sa.UniqueConstraint(
            "series_id",
            "metric",
            "rule_key",
            "kind",
            "detected_id",
            name="uq_benchmark_alerts_series_id_metric_rule_key_kind_detected_id",
        ),
    )
    with op.batch_alter_table("benchmark_alerts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_benchmark_alerts_series_id"), ["series_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_benchmark_alerts_submission_id"), ["submission_id"], unique=False
        )

    op.create_table(
        "benchmark_points",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("series_id", sa.Integer(), nullable=False),
        sa.Column("submission_id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("metric", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("run_at", core.models.base.UTCDateTime(), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.Column("ci_low", sa.Double(), nullable=True),
        sa.Column("ci_high", sa.Double(), nullable=True),
        sa.Column("units", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["series_id"],
            ["benchmark_series.id"],
            name=op.f("fk_benchmark_points_series_id_benchmark_series"),
        ),
        sa.ForeignKeyConstraint(
            ["submission_id"],
            ["submissions.id"],
            name=op.f("fk_benchmark_points_submission_id_submissions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_benchmark_points")),
        sa.UniqueConstraint(
            "submission_id", "metric", name="uq_benchmark_points_submission_id_metric"
        ),
    )
    with op.batch_alter_table("benchmark_points", schema=None) as batch_op:
        batch_op.create_index(
            "ix_benchmark_points_series_metric_run", ["series_id", "metric", "run_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_benchmark_points_submission_id"), ["submission_id"], unique=False
        )

    op.create_table(
        "benchmark_runs",
        sa.Column("submission_id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("series_id", sa.Integer(), nullable=False),
        sa.Column("run_at", core.models.base.UTCDateTime(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("created_at", core.models.base.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["series_id"],
            ["benchmark_series.id"],
            name=op.f("fk_benchmark_runs_series_id_benchmark_series"),
        ),
        sa.ForeignKeyConstraint(
            ["submission_id"],
            ["submissions.id"],
            name=op.f("fk_benchmark_runs_submission_id_submissions"),
        ),
        sa.PrimaryKeyConstraint("submission_id", name=op.f("pk_benchmark_runs")),
    )
    with op.batch_alter_table("benchmark_runs", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_benchmark_runs_series_id"), ["series_id"], unique=False
        )

    op.create_table(
        "schedule_ticks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("submission_id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("tick_at", core.models.base.UTCDateTime(), nullable=False),
        sa.Column("children", sa.JSON(), nullable=False),
        sa.Column("missed", sa.Integer(), nullable=False),
        sa.Column("created_at", core.models.base.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["submission_id"],
            ["submissions.id"],
            name=op.f("fk_schedule_ticks_submission_id_submissions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_schedule_ticks")),
        sa.UniqueConstraint(
            "submission_id", "tick_at", name="uq_schedule_ticks_submission_id_tick_at"
        ),
    )
    with op.batch_alter_table("schedule_ticks", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_schedule_ticks_submission_id"), ["submission_id"], unique=False
        )

    op.create_table(
        "schedules",
        sa.Column("submission_id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("cron", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("families", sa.JSON(), nullable=False),
        sa.Column("started_at", core.models.base.UTCDateTime(), nullable=False),
        sa.Column("last_tick_at", core.models.base.UTCDateTime(), nullable=True),
        sa.Column("created_at", core.models.base.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["submission_id"],
            ["submissions.id"],
            name=op.f("fk_schedules_submission_id_submissions"),
        ),
        sa.PrimaryKeyConstraint("submission_id", name=op.f("pk_schedules")),
    )


def downgrade() -> None:
    op.drop_table("schedules")
    with op.batch_alter_table("schedule_ticks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_schedule_ticks_submission_id"))

    op.drop_table("schedule_ticks")
    with op.batch_alter_table("benchmark_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_benchmark_runs_series_id"))

    op.drop_table("benchmark_runs")
    with op.batch_alter_table("benchmark_points", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_benchmark_points_submission_id"))
        batch_op.drop_index("ix_benchmark_points_series_metric_run")

    op.drop_table("benchmark_points")
    with op.batch_alter_table("benchmark_alerts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_benchmark_alerts_submission_id"))
        batch_op.drop_index(batch_op.f("ix_benchmark_alerts_series_id"))

    op.drop_table("benchmark_alerts")
    with op.batch_alter_table("benchmark_alert_states", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_benchmark_alert_states_series_id"))

    op.drop_table("benchmark_alert_states")
    with op.batch_alter_table("benchmark_series", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_benchmark_series_benchmark"))

    op.drop_table("benchmark_series")
