"""Migrations and models agree on every backend, and the check notices when they do not."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import sqlalchemy as sa

import core.migrate
from core.db import Database
from core.migrate import pending_model_changes
from core.models import SQLModel


async def test_the_migrated_schema_matches_the_models(db: Database) -> None:
    # A model changed without a migration shows up here; make one with
    # `alembic revision --autogenerate` (see core/migrations) and commit it with the model.
    assert await pending_model_changes(db) == []


async def test_a_model_change_without_a_migration_is_noticed(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    changed = sa.MetaData(naming_convention=SQLModel.metadata.naming_convention)
    for table in SQLModel.metadata.sorted_tables:
        table.to_metadata(changed)
    changed.tables["submissions"].append_column(sa.Column("priority", sa.Integer(), nullable=True))
    changed.remove(changed.tables["notifications"])
    monkeypatch.setattr(core.migrate, "SQLModel", SimpleNamespace(metadata=changed))

    diffs = await pending_model_changes(db)
    described = [(d[0], getattr(d[-1], "name", None)) for d in diffs if isinstance(d, tuple)]
    assert ("add_column", "priority") in described
    assert ("remove_table", "notifications") in described
