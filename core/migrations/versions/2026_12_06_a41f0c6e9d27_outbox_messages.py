"""outbox messages

Revision ID: a41f0c6e9d27
Revises: 3b7e2d9f1a40
Create Date: 2026-12-06 11:10:00

The transactional outbox for queue transports other than the database (SQS): a message is
staged in the caller's transaction and relayed after commit (see core/outbox.py).
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "a41f0c6e9d27"
down_revision: str | None = "3b7e2d9f1a40"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "outbox_messages",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("queue", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("message_id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("available_at", sa.Double(), nullable=False),
        sa.Column("claim_token", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
        sa.Column("claimed_until", sa.Double(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_messages")),
        sa.UniqueConstraint("message_id", name=op.f("uq_outbox_messages_message_id")),
    )
    op.create_index(
        "ix_outbox_messages_claim", "outbox_messages", ["claimed_until", "id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_messages_claim", table_name="outbox_messages")
    op.drop_table("outbox_messages")
