"""The data-fetch table: one row per data source (src + expected checksum), its lock and result."""

from __future__ import annotations

import sqlalchemy as sa
from sqlmodel import Field, SQLModel


class DataFetch(SQLModel, table=True):
    """Who is fetching a source now, or where the verified copy lies once fetched.

    `fetch_key` (sha256 of src and the expected checksums) is unique, so every job asking for
    the same file finds the same row: the first inserts it and downloads while it holds
    `holder` until `lease_until` (database epoch seconds, extended while it works); the others
    poll until it is `done` (then they read `storage_key`) or `failed` (`error` says why).
    A holder whose lease ran out died, and the next asker takes the row over. `attempts`
    counts the holders and doubles as the row's version for those take-overs.
    """

    __tablename__ = "data_fetches"

    id: int | None = Field(default=None, primary_key=True)
    fetch_key: str = Field(max_length=64, unique=True)
    src: str = Field(sa_column=sa.Column(sa.Text(), nullable=False))
    # The checksums the source was asked with, "md5:<hex>,sha256:<hex>" (empty: none given).
    expected: str = Field(default="", max_length=512)
    status: str = Field(max_length=16)
    holder: str | None = Field(default=None, max_length=32)
    lease_until: float = Field(default=0.0, sa_column=sa.Column(sa.Double(), nullable=False))
    attempts: int = 0
    storage_key: str | None = Field(default=None, sa_column=sa.Column(sa.Text(), nullable=True))
    sha256: str | None = Field(default=None, max_length=64)
    md5: str | None = Field(default=None, max_length=32)
    size: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger(), nullable=True))
    error: str | None = Field(default=None, sa_column=sa.Column(sa.Text(), nullable=True))
    created_at: float = Field(sa_column=sa.Column(sa.Double(), nullable=False))
    updated_at: float = Field(sa_column=sa.Column(sa.Double(), nullable=False))
