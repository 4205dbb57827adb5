"""Remote evaluator workers: their fleet tokens and the dataset jobs they pull over the API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from core.models.base import UTCDateTime, created_at_column, json_column, utcnow


class WorkerToken(SQLModel, table=True):
    """A bearer token (`wbw_…`) that lets a worker pull one fleet's jobs and nothing else;
    only its sha256 is stored, the token itself is shown once."""

    __tablename__ = "worker_tokens"

    id: int | None = Field(default=None, primary_key=True)
    fleet: str = Field(max_length=64, index=True)
    label: str = Field(default="worker", max_length=64)
    token_sha256: str = Field(max_length=64, unique=True)
    created_at: datetime = Field(default_factory=utcnow, sa_column=created_at_column())
    last_used_at: datetime | None = Field(
        default=None, sa_column=sa.Column(UTCDateTime(), nullable=True)
    )
    revoked_at: datetime | None = Field(
        default=None, sa_column=sa.Column(UTCDateTime(), nullable=True)
    )
    # The admin who made it (None: made on the server's machine with `weighbridge admin`).
    created_by: int | None = Field(default=None, foreign_key="users.id")


class RemoteJob(SQLModel, table=True):
    """One dataset of one submission, run by a remote worker of `fleet`.

    queued -> claimed (a worker holds it until `lease_until`, database epoch seconds, and
    extends it by heartbeat) -> done | failed, or cancelled by the server side. A lease that
    runs out sends the job back to queued; `attempts` counts the claims. `secret` is the
    per-claim key the worker signs its reports with (HMAC needs the key itself on both sides;
    it is new at every claim and cleared when the job ends)."""

    __tablename__ = "remote_jobs"

    id: str = Field(primary_key=True, max_length=32)
    fleet: str = Field(max_length=64, index=True)
    submission_id: str = Field(max_length=32, index=True)
    dataset: str = Field(max_length=128)
    status: str = Field(default="queued", max_length=16, index=True)
    lease_until: float = Field(default=0.0, sa_column=sa.Column(sa.Double(), nullable=False))
    secret: str | None = Field(default=None, max_length=64)
    attempts: int = 0
    # The worker token that holds (or last held) the job.
    token_id: int | None = Field(default=None)
    # What the worker needs (storage keys and hashes, the task's settings); never labels.
    spec: dict[str, Any] = Field(default_factory=dict, sa_column=json_column())
    # What the worker reported on completion (performance, timings, its own description).
    result: dict[str, Any] | None = Field(default=None, sa_column=json_column(nullable=True))
    error: str | None = Field(default=None, sa_column=sa.Column(sa.Text(), nullable=True))
    created_at: float = Field(sa_column=sa.Column(sa.Double(), nullable=False))
    updated_at: float = Field(sa_column=sa.Column(sa.Double(), nullable=False))
