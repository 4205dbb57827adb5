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


async def test_old_queue_names_and_dead_letters_are_carried_over(tmp_path) -> None:
    """Before 3b7e2d9f1a40: fleets' queues were `eval.<id>` and dead letters stayed in their
    queue with their follow-up in memory only; after it, messages wait where today's workers
    look for them, and every old dead letter is recorded again (on_dead is idempotent)."""
    from core.migrate import upgrade_database
    from core.models import QueueMessage, table_of

    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'old.db'}")
    try:
        await upgrade_database(db, "c96abd069aaf")
        qm = table_of(QueueMessage)
        row = {
            "body": {},
            "max_attempts": 3,
            "available_at": 0.0,
            "created_at": 0.0,
            "dead": False,
            "last_error": None,
        }
        async with db.engine.begin() as conn:
            await conn.execute(
                sa.insert(qm),
                [
                    {**row, "queue": "eval.gpu", "message_id": "a" * 32, "attempts": 0},
                    {
                        **row,
                        "queue": "eval.gpu",
                        "message_id": "b" * 32,
                        "attempts": 3,
                        "dead": True,
                        "last_error": "boom",
                    },
                    {**row, "queue": "build", "message_id": "c" * 32, "attempts": 1},
                ],
            )
        await upgrade_database(db)
        async with db.engine.connect() as conn:
            rows = {
                r.message_id[0]: r
                for r in (await conn.execute(sa.select(qm).order_by(qm.c.id))).all()
            }
        assert (rows["a"].queue, rows["a"].dead) == ("eval-gpu", False)
        assert (rows["b"].queue, rows["b"].dead, rows["b"].last_error) == (
            "eval-gpu-dlq",
            False,
            "boom",
        )
        assert rows["b"].max_attempts == rows["b"].attempts + 10
        assert (rows["c"].queue, rows["c"].attempts) == ("build", 1)
    finally:
        await db.dispose()


async def test_scores_keep_double_precision_on_every_backend(db: Database) -> None:
    """A bare float column is MySQL's 4-byte FLOAT; scores must keep 15+ digits everywhere."""
    from core.accounts import create_user
    from core.models import Score, Submission

    value = 0.123456789012345
    async with db.session() as session:
        user, _ = await create_user(session, "precise", email="p@example.org")
        submission = Submission(user_id=user.id, name="p", status="done")  # type: ignore[arg-type]
        session.add(submission)
        await session.flush()
        session.add(
            Score(
                submission_id=submission.id,
                dataset="d",
                metric="accuracy",
                value=value,
                ci_low=value - 0.1,
                ci_high=value + 0.1,
            )
        )
    async with db.session() as session:
        score = (await session.execute(sa.select(Score))).scalar_one()
    assert score.value == value
    assert score.ci_low == value - 0.1 and score.ci_high == value + 0.1
