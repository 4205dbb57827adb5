"""moderation flags, token life, passwords

Revision ID: 9c2d7e4b1a58
Revises: f3a9d6c1b284
Create Date: 2026-12-06 14:40:00

- `submissions.hidden` (an admin took the row off the boards), `flagged` with `flag_reason`
  (shown with a mark), and `baseline` (an organiser's reference model, marked on the board).
- `api_tokens.expires_at` (a token may be given a life) and `revoked_at` (revoked tokens are
  kept, refused, and listed as revoked).
- `users.password_hash` (signing in to the website with a password; a scrypt hash, never
  the password).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from core.models.base import UTCDateTime

revision: str = "9c2d7e4b1a58"
down_revision: str | None = "f3a9d6c1b284"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("submissions") as batch:
        for name in ("hidden", "flagged", "baseline"):
            batch.add_column(
                sa.Column(name, sa.Boolean(), nullable=False, server_default=sa.false())
            )
        batch.add_column(sa.Column("flag_reason", sa.Text(), nullable=True))
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("expires_at", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("revoked_at", UTCDateTime(), nullable=True))
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("password_hash", sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("password_hash")
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("revoked_at")
        batch.drop_column("expires_at")
    with op.batch_alter_table("submissions") as batch:
        batch.drop_column("flag_reason")
        for name in ("baseline", "flagged", "hidden"):
            batch.drop_column(name)
