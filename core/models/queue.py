"""The database queue's table: leases by time, attempts, dead letters with the last error."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel


class QueueMessage(SQLModel, table=True):
    """One message. `available_at` (epoch seconds) is both the delay and the lease expiry."""

    __tablename__ = "queue_messages"
    __table_args__ = (sa.Index("ix_queue_messages_claim", "queue", "dead", "available_at", "id"),)

    id: int | None = Field(
        default=None,
        sa_column=sa.Column(
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
    )
    queue: str = Field(max_length=128)
    message_id: str = Field(max_length=32, unique=True)
    body: dict[str, Any] = Field(sa_column=sa.Column(sa.JSON(), nullable=False))
    attempts: int = 0
    max_attempts: int = 3
    available_at: float = Field(sa_column=sa.Column(sa.Double(), nullable=False))
    lease_token: str | None = Field(default=None, max_length=32)
    dead: bool = False
    last_error: str | None = Field(default=None, sa_column=sa.Column(sa.Text(), nullable=True))
    created_at: float = Field(sa_column=sa.Column(sa.Double(), nullable=False))
