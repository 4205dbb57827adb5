"""Users and their hashed API tokens."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from core.models.base import UTCDateTime, created_at_column, utcnow


class User(SQLModel, table=True):
    """A person (or a service) that submits work."""

    __tablename__ = "users"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, unique=True)
    email: str = Field(max_length=255)
    is_admin: bool = False
    # For signing in to the website with a password (scrypt; None: token sign-in only).
    password_hash: str | None = Field(default=None, max_length=255)
    created_at: datetime = Field(default_factory=utcnow, sa_column=created_at_column())


class ApiToken(SQLModel, table=True):
    """A bearer token; only its sha256 is stored, the token itself is shown once."""

    __tablename__ = "api_tokens"

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    token_sha256: str = Field(max_length=64, unique=True)
    label: str = Field(default="default", max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_column=created_at_column())
    last_used_at: datetime | None = Field(
        default=None, sa_column=sa.Column(UTCDateTime(), nullable=True)
    )
    # A token may be given a life; a revoked one is kept (listed as revoked) and refused.
    expires_at: datetime | None = Field(
        default=None, sa_column=sa.Column(UTCDateTime(), nullable=True)
    )
    revoked_at: datetime | None = Field(
        default=None, sa_column=sa.Column(UTCDateTime(), nullable=True)
    )
