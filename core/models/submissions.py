"""Submissions of three kinds, their event timeline, their runs and their scores."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from core.models.base import UTCDateTime, created_at_column, json_column, new_id, utcnow


class Submission(SQLModel, table=True):
    """A model, benchmark or inspection someone asked Weighbridge to weigh."""

    __tablename__ = "submissions"
    __table_args__ = (
        sa.Index("ix_submissions_user_task_created", "user_id", "task_id", "created_at"),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    kind: str = Field(default="model", max_length=16)  # model | benchmark | inspection
    task_id: int | None = Field(default=None, foreign_key="tasks.id", index=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    name: str = Field(max_length=255)
    private: bool = False
    # Moderation: an admin may take a row off the boards (`hidden`), mark it (`flagged`, with
    # the reason shown), or mark an organiser's reference model (`baseline`).
    hidden: bool = False
    flagged: bool = False
    flag_reason: str | None = Field(default=None, sa_column=sa.Column(sa.Text(), nullable=True))
    baseline: bool = False
    status: str = Field(default="uploaded", max_length=16, index=True)
    failed_stage: str | None = Field(default=None, max_length=32)
    error: str | None = Field(default=None, sa_column=sa.Column(sa.Text(), nullable=True))
    error_log_key: str | None = Field(default=None, max_length=512)
    upload_key: str | None = Field(default=None, max_length=512)
    upload_filename: str | None = Field(default=None, max_length=255)
    upload_bytes: int | None = Field(
        default=None, sa_column=sa.Column(sa.BigInteger(), nullable=True)
    )
    upload_sha256: str | None = Field(default=None, max_length=64)
    parent_id: str | None = Field(default=None, max_length=32, index=True)
    client_id: str | None = Field(default=None, max_length=64)
    meta: dict[str, Any] = Field(default_factory=dict, sa_column=json_column())
    created_at: datetime = Field(default_factory=utcnow, sa_column=created_at_column())
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column=sa.Column(UTCDateTime(), nullable=False)
    )


class Event(SQLModel, table=True):
    """One entry of a submission's timeline; `envelope` is the full versioned event."""

    __tablename__ = "events"

    id: int | None = Field(default=None, primary_key=True)
    submission_id: str = Field(foreign_key="submissions.id", index=True, max_length=32)
    message_id: str = Field(max_length=32, unique=True)
    type: str = Field(max_length=64)
    status: str | None = Field(default=None, max_length=16)
    message: str = Field(default="", sa_column=sa.Column(sa.Text(), nullable=False))
    envelope: dict[str, Any] = Field(default_factory=dict, sa_column=json_column())
    created_at: datetime = Field(default_factory=utcnow, sa_column=created_at_column())


class Run(SQLModel, table=True):
    """One unit of evaluation work: a dataset of a model, or run N of a benchmark."""

    __tablename__ = "runs"
    __table_args__ = (
        sa.UniqueConstraint("submission_id", "name", name="uq_runs_submission_id_name"),
    )

    id: int | None = Field(default=None, primary_key=True)
    submission_id: str = Field(foreign_key="submissions.id", index=True, max_length=32)
    name: str = Field(max_length=128)
    status: str = Field(default="queued", max_length=16)  # core.states.RunStatus
    attempt: int = 0
    started_at: datetime | None = Field(
        default=None, sa_column=sa.Column(UTCDateTime(), nullable=True)
    )
    finished_at: datetime | None = Field(
        default=None, sa_column=sa.Column(UTCDateTime(), nullable=True)
    )
    summary: dict[str, Any] = Field(default_factory=dict, sa_column=json_column())
    error: str | None = Field(default=None, sa_column=sa.Column(sa.Text(), nullable=True))
    created_at: datetime = Field(default_factory=utcnow, sa_column=created_at_column())


class Score(SQLModel, table=True):
    """One metric value; unique per submission, dataset and metric so duplicates cannot exist."""

    __tablename__ = "scores"
    __table_args__ = (
        sa.UniqueConstraint(
            "submission_id", "dataset", "metric", name="uq_scores_submission_id_dataset_metric"
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    submission_id: str = Field(foreign_key="submissions.id", index=True, max_length=32)
    dataset: str = Field(max_length=128)
    metric: str = Field(max_length=64)
    # Double precision on every backend (a bare float is MySQL's 4-byte FLOAT: 7 digits).
    value: float = Field(sa_column=sa.Column(sa.Double(), nullable=False))
    ci_low: float | None = Field(default=None, sa_column=sa.Column(sa.Double(), nullable=True))
    ci_high: float | None = Field(default=None, sa_column=sa.Column(sa.Double(), nullable=True))
    n_examples: int | None = None
    extra: dict[str, Any] = Field(default_factory=dict, sa_column=json_column())
    created_at: datetime = Field(default_factory=utcnow, sa_column=created_at_column())
