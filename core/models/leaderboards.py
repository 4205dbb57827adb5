"""The stored leaderboard of a task: its header (version, freshness) and one row per submission."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from core.models.base import UTCDateTime, json_column


class Leaderboard(SQLModel, table=True):
    """A task's board: rebuilt in the background when `requested` passes `built`.

    Marking a board stale is one UPDATE in the transaction of the change that makes it stale
    (a submission done or purged, a task config changed), so the request cannot be lost.
    """

    __tablename__ = "leaderboards"

    task_id: int = Field(foreign_key="tasks.id", primary_key=True)
    version: int = 0
    requested: int = 0
    built: int = 0
    config_sha256: str = Field(default="", max_length=64)
    updated_at: datetime | None = Field(
        default=None, sa_column=sa.Column(UTCDateTime(), nullable=True)
    )


class LeaderboardEntry(SQLModel, table=True):
    """One done submission on a stored board: the per-model aggregates any weights apply to.

    `metrics` are the dataset-weighted averages, `datasets` the per-dataset values; the tie
    flag compares the row with `compared_with` (its neighbour above with the default weights).
    """

    __tablename__ = "leaderboard_entries"
    __table_args__ = (
        sa.UniqueConstraint(
            "task_id", "submission_id", name="uq_leaderboard_entries_task_id_submission_id"
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    task_id: int = Field(foreign_key="tasks.id", index=True)
    submission_id: str = Field(foreign_key="submissions.id", index=True, max_length=32)
    position: int = 0
    ranked: bool = True
    reason: str | None = Field(default=None, max_length=512)
    metrics: dict[str, Any] = Field(default_factory=dict, sa_column=json_column())
    datasets: dict[str, Any] = Field(default_factory=dict, sa_column=json_column())
    # Double, not Float: MySQL's FLOAT is single precision.
    ci_low: float | None = Field(default=None, sa_column=sa.Column(sa.Double(), nullable=True))
    ci_high: float | None = Field(default=None, sa_column=sa.Column(sa.Double(), nullable=True))
    compared_with: str | None = Field(default=None, max_length=32)
    pvalue: float | None = Field(default=None, sa_column=sa.Column(sa.Double(), nullable=True))
    unsandboxed: bool = False
