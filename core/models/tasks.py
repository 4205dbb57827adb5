"""Tasks (loaded from task_configs/*.toml) and their datasets."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from core.models.base import UTCDateTime, created_at_column, json_column, utcnow


class Task(SQLModel, table=True):
    """One task; `config` is the validated TOML, kept so workers need no file access."""

    __tablename__ = "tasks"

    id: int | None = Field(default=None, primary_key=True)
    slug: str = Field(max_length=64, unique=True)
    name: str = Field(max_length=255)
    description: str = Field(default="", sa_column=sa.Column(sa.Text(), nullable=False))
    config: dict[str, Any] = Field(default_factory=dict, sa_column=json_column())
    config_sha256: str = Field(max_length=64)
    eval_server_id: str = Field(default="default", max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_column=created_at_column())
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column=sa.Column(UTCDateTime(), nullable=False)
    )


class Dataset(SQLModel, table=True):
    """A dataset of a task: where its file lives in storage and its checksum."""

    __tablename__ = "datasets"
    __table_args__ = (sa.UniqueConstraint("task_id", "name", name="uq_datasets_task_id_name"),)

    id: int | None = Field(default=None, primary_key=True)
    task_id: int = Field(foreign_key="tasks.id", index=True)
    name: str = Field(max_length=128)
    split: str = Field(default="test", max_length=32)
    access: str = Field(default="hidden", max_length=16)  # public | hidden
    uri: str = Field(default="", max_length=1024)
    sha256: str = Field(default="", max_length=64)
    n_examples: int | None = None
    weight: float = 1.0
    perturbation_of: str | None = Field(default=None, max_length=128)
    created_at: datetime = Field(default_factory=utcnow, sa_column=created_at_column())
