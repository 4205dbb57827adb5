"""Apply and check Alembic migrations from code (used by `weighbridge db upgrade` and `up`)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection

from core.db import Database
from core.models import SQLModel

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str = "") -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("file_template", "%%(year)d_%%(month).2d_%%(day).2d_%%(rev)s_%%(slug)s")
    if url:
        cfg.set_main_option("sqlalchemy.url", url)
    return cfg


async def upgrade_database(db: Database, revision: str = "head") -> None:
    """Bring the database to `revision` on one of the database's own connections."""

    def _upgrade(connection: Connection) -> None:
        cfg = alembic_config(db.url)
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)

    async with db.engine.begin() as conn:
        await conn.run_sync(_upgrade)


async def pending_model_changes(db: Database) -> list:
    """Differences between the migrated schema and the models (empty when they agree)."""

    def _compare(connection: Connection) -> list:
        ctx = MigrationContext.configure(
            connection, opts={"compare_type": True, "render_as_batch": True}
        )
        return compare_metadata(ctx, SQLModel.metadata)

    async with db.engine.connect() as conn:
        return await conn.run_sync(_compare)
