"""The evaluator's queries: per-dataset runs and scores (inserted only if absent)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from core.models import Run, Score, Submission, table_of, utcnow


async def insert_if_absent(
    session: AsyncSession,
    table: sa.Table,
    rows: Sequence[dict[str, Any]],
    *,
    unique: Sequence[str],
) -> None:
    """Insert rows, silently keeping any row that already holds the same unique key."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt: Any = sqlite_insert(table).values(list(rows))
        stmt = stmt.on_conflict_do_nothing(index_elements=list(unique))
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt = pg_insert(table).values(list(rows))
        stmt = stmt.on_conflict_do_nothing(index_elements=list(unique))
    elif dialect in ("mysql", "mariadb"):
        from sqlalchemy.dialects.mysql import insert as my_insert

        stmt = my_insert(table).values(list(rows))
        stmt = stmt.on_duplicate_key_update({unique[0]: stmt.inserted[unique[0]]})
    else:
        raise RuntimeError(f"no insert-if-absent for the {dialect} dialect")
    await session.execute(stmt)


async def ensure_runs(session: AsyncSession, submission_id: str, names: Sequence[str]) -> None:
    """One `runs` row per dataset (queued), created once however often the message comes."""
    now = utcnow()
    await insert_if_absent(
        session,
        table_of(Run),
        [
            {
                "submission_id": submission_id,
                "name": name,
                "status": "queued",
                "attempt": 0,
                "summary": {},
                "created_at": now,
            }
            for name in names
        ],
        unique=("submission_id", "name"),
    )


async def get_run(session: AsyncSession, submission_id: str, name: str) -> Run | None:
    return await session.scalar(
        sa.select(Run).where(col(Run.submission_id) == submission_id, col(Run.name) == name)
    )


async def list_runs(session: AsyncSession, submission_id: str) -> list[Run]:
    return list(
        await session.scalars(
            sa.select(Run).where(col(Run.submission_id) == submission_id).order_by(col(Run.id))
        )
    )


async def score_names(session: AsyncSession, submission_id: str, dataset: str) -> set[str]:
    return set(
        await session.scalars(
            sa.select(col(Score.metric)).where(
                col(Score.submission_id) == submission_id, col(Score.dataset) == dataset
            )
        )
    )


async def insert_scores(
    session: AsyncSession, submission_id: str, dataset: str, scores: Sequence[dict[str, Any]]
) -> None:
    """Store scores; one per submission+dataset+metric, so a redelivery adds no duplicate."""
    now = utcnow()
    await insert_if_absent(
        session,
        table_of(Score),
        [
            {
                "submission_id": submission_id,
                "dataset": dataset,
                "metric": s["metric"],
                "value": s["value"],
                "ci_low": s.get("ci_low"),
                "ci_high": s.get("ci_high"),
                "n_examples": s.get("n_examples"),
                "extra": s.get("extra", {}),
                "created_at": now,
            }
            for s in scores
        ],
        unique=("submission_id", "dataset", "metric"),
    )


async def lock_submission(session: AsyncSession, submission_id: str) -> Submission | None:
    """The submission row, locked for this transaction where the database can."""
    query = sa.select(Submission).where(col(Submission.id) == submission_id)
    if session.get_bind().dialect.name != "sqlite":
        query = query.with_for_update()
    return await session.scalar(query.execution_options(populate_existing=True))


async def submission_status(session: AsyncSession, submission_id: str) -> str | None:
    return await session.scalar(
        sa.select(col(Submission.status)).where(col(Submission.id) == submission_id)
    )
