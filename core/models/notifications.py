"""The email outbox: rows written with the state they announce, sent after commit."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from core.models.base import UTCDateTime, created_at_column, new_id, utcnow


class Notification(SQLModel, table=True):
    """One email; `message_id` is its RFC 5322 Message-ID seed and dedupe key."""

    __tablename__ = "notifications"

    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(default_factory=new_id, max_length=32, unique=True)
    submission_id: str | None = Field(default=None, max_length=32, index=True)
    user_id: int | None = Field(default=None, foreign_key="users.id")
    to_address: str = Field(max_length=255)
    subject: str = Field(max_length=255)
    body_text: str = Field(sa_column=sa.Column(sa.Text(), nullable=False))
    body_html: str = Field(default="", sa_column=sa.Column(sa.Text(), nullable=False))
    status: str = Field(default="pending", max_length=16, index=True)  # pending | sent | failed
    attempts: int = 0
    available_at: float = Field(default=0.0, sa_column=sa.Column(sa.Double(), nullable=False))
    last_error: str | None = Field(default=None, sa_column=sa.Column(sa.Text(), nullable=True))
    sent_at: datetime | None = Field(
        default=None, sa_column=sa.Column(UTCDateTime(), nullable=True)
    )
    created_at: datetime = Field(default_factory=utcnow, sa_column=created_at_column())
