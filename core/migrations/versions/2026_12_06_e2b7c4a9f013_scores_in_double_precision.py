"""scores in double precision

Revision ID: e2b7c4a9f013
Revises: 8e4c2a7d1b65
Create Date: 2026-12-06 11:50:00

`scores.value`, `ci_low` and `ci_high` were `FLOAT`: double precision on Postgres, but a
4-byte float on MySQL/MariaDB, which kept 7 significant digits of every score there. They are
`DOUBLE` everywhere now (on SQLite, where any REAL is 8 bytes, only the declared type
changes: the table is copied by Alembic's batch mode).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e2b7c4a9f013"
down_revision: str | None = "8e4c2a7d1b65"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (("value", False), ("ci_low", True), ("ci_high", True))


def upgrade() -> None:
    with op.batch_alter_table("scores") as batch:
        for name, nullable in COLUMNS:
            batch.alter_column(
                name, existing_type=sa.Float(), type_=sa.Double(), existing_nullable=nullable
            )


def downgrade() -> None:
    with op.batch_alter_table("scores") as batch:
        for name, nullable in COLUMNS:
            batch.alter_column(
                name, existing_type=sa.Double(), type_=sa.Float(), existing_nullable=nullable
            )
