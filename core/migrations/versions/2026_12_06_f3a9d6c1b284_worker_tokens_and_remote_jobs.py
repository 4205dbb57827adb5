"""worker tokens and remote jobs

Revision ID: f3a9d6c1b284
Revises: e2b7c4a9f013
Create Date: 2026-12-06 14:30:00

Remote evaluator workers: `worker_tokens` (a fleet's bearer tokens, stored as sha256) and
`remote_jobs` (one dataset of one submission, claimed by a worker of that fleet over the API,
kept by heartbeat, completed with a signed report).
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import core.models.base

revision: str = "f3a9d6c1b284"
down_revision: str | None = "e2b7c4a9f013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "worker_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("fleet", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("label", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("token_sha256", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("created_at", core.models.base.UTCDateTime(), nullable=False),
        sa.Column("last_used_at", core.models.base.UTCDateTime(), nullable=True),
        sa.Column("revoked_at", core.models.base.UTCDateTime(), nullable=True),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["created_by"], ["users.id"], name=op.f("fk_worker_tokens_created_by_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_worker_tokens")),
        sa.UniqueConstraint("token_sha256", name=op.f("uq_worker_tokens_token_sha256")),
    )
    with op.batch_alter_table("worker_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_worker_tokens_fleet"), ["fleet"], unique=False)

    op.create_table(
        "remote_jobs",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("fleet", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("submission_id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("dataset", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("lease_until", sa.Double(), nullable=False),
        sa.Column("secret", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("token_id", sa.Integer(), nullable=True),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_remote_jobs")),
    )
    with op.batch_alter_table("remote_jobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_remote_jobs_fleet"), ["fleet"], unique=False)
        batch_op.create_index(batch_op.f("ix_remote_jobs_status"), ["status"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_remote_jobs_submission_id"), ["submission_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("remote_jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_remote_jobs_submission_id"))
        batch_op.drop_index(batch_op.f("ix_remote_jobs_status"))
        batch_op.drop_index(batch_op.f("ix_remote_jobs_fleet"))
    op.drop_table("remote_jobs")
    with op.batch_alter_table("worker_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_worker_tokens_fleet"))
    op.drop_table("worker_tokens")
