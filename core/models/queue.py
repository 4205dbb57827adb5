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


class OutboxMessage(SQLModel, table=True):
    """A message staged in a caller's transaction, waiting for the relay to publish it.

    Used when the queue transport is not the database itself (SQS): the row commits with the
    caller's work, the relay sends it after commit and deletes it. A relay that claims rows
    sets `claim_token` until `claimed_until` (database epoch seconds), so two relays never
    send one row at the same time, and a relay that died mid-send leaves its rows to others.
    """

    __tablename__ = "outbox_messages"
    __table_args__ = (sa.Index("ix_outbox_messages_claim", "claimed_until", "id"),)

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
    # When the message should become visible (epoch seconds, the database's clock).
    available_at: float = Field(sa_column=sa.Column(sa.Double(), nullable=False))
    claim_token: str | None = Field(default=None, max_length=32)
    claimed_until: float = Field(default=0.0, sa_column=sa.Column(sa.Double(), nullable=False))
    created_at: float = Field(sa_column=sa.Column(sa.Double(), nullable=False))
