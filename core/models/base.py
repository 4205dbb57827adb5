"""Shared column types and the metadata naming convention for every table."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import SQLModel

SQLModel.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class UTCDateTime(sa.types.TypeDecorator):
    """Stores naive UTC (portable to SQLite and MySQL), always returns aware UTC datetimes."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC)


def created_at_column() -> sa.Column:
    return sa.Column(UTCDateTime(), nullable=False, default=utcnow)


def json_column(nullable: bool = False) -> sa.Column:
    return sa.Column(sa.JSON(), nullable=nullable)


def table_of(model: type[SQLModel]) -> sa.Table:
    """A table model's Core table, for bulk statements (SQLModel leaves `__table__` untyped)."""
    table = model.__table__  # type: ignore[attr-defined]
    assert isinstance(table, sa.Table), f"{model.__name__} is not a table model"
    return table
