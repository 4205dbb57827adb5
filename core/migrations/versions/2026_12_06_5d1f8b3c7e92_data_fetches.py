"""data fetches

Revision ID: 5d1f8b3c7e92
Revises: a41f0c6e9d27
Create Date: 2026-12-06 11:20:00

One row per benchmark data source (src + expected checksums): the database lock that lets
one job download a file while the others wait, and where the verified copy lies afterwards
(see core/fetcher.py).
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "5d1f8b3c7e92"
down_revision: str | None = "a41f0c6e9d27"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "data_fetches",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("fetch_key", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("src", sa.Text(), nullable=False),
        sa.Column("expected", sqlmodel.sql.sqltypes.AutoString(length=512), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("holder", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
        sa.Column("lease_until", sa.Double(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("storage_key", sa.Text(), nullable=True),
        sa.Column("sha256", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("md5", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_data_fetches")),
        sa.UniqueConstraint("fetch_key", name=op.f("uq_data_fetches_fetch_key")),
    )


def downgrade() -> None:
    op.drop_table("data_fetches")
