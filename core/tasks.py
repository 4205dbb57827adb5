"""Tasks in the database, kept in step with task_configs/*.toml."""

from __future__ import annotations

import difflib
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from core.errors import NotFound
from core.models import Dataset, Task, utcnow
from core.taskconfig import TaskConfig


async def sync_tasks(session: AsyncSession, configs: dict[str, TaskConfig]) -> list[Task]:
    """Insert or update every configured task and its datasets (prepared checksums are kept)."""
    tasks = []
    for slug, config in configs.items():
        task = await session.scalar(sa.select(Task).where(col(Task.slug) == slug))
        digest = config.sha256()
        if task is None:
            task = Task(slug=slug, name=config.name, config_sha256="")
            session.add(task)
        if task.config_sha256 != digest:
            task.name = config.name
            task.description = config.description
            task.config = config.model_dump(mode="json")
            task.config_sha256 = digest
            task.eval_server_id = config.eval.eval_server_id
            task.updated_at = utcnow()
            changed = True
        else:
            changed = False
        await session.flush()
        if changed:
            # Weights, metrics or datasets may have moved: the stored board is rebuilt.
            from core.boards import mark_leaderboard_stale

            assert task.id is not None
            await mark_leaderboard_stale(session, task.id)
        existing = {
            d.name: d
            for d in (
                await session.scalars(sa.select(Dataset).where(col(Dataset.task_id) == task.id))
            )
        }
        for dc in config.datasets:
            row = existing.get(dc.name)
            if row is None:
                assert task.id is not None
                row = Dataset(task_id=task.id, name=dc.name)
                session.add(row)
            row.split = dc.split
            row.access = dc.access
            row.weight = dc.weight
            row.perturbation_of = dc.perturbation_of
            if dc.sha256:
                row.sha256 = dc.sha256
        tasks.append(task)
    await session.flush()
    return tasks


async def list_tasks(session: AsyncSession) -> list[Task]:
    return list(await session.scalars(sa.select(Task).order_by(col(Task.slug))))


async def get_task(session: AsyncSession, slug: str, *, field: str = "task") -> Task:
    task = await session.scalar(sa.select(Task).where(col(Task.slug) == slug))
    if task is None:
        known = [t.slug for t in await list_tasks(session)]
        close = difflib.get_close_matches(slug, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known tasks: {', '.join(known)}"
        raise NotFound(f"unknown task {slug!r}{hint}", field=field)
    return task


def task_config(task: Task) -> TaskConfig:
    return TaskConfig.model_validate(task.config)


async def list_datasets(session: AsyncSession, task: Task) -> list[Dataset]:
    return list(
        await session.scalars(
            sa.select(Dataset).where(col(Dataset.task_id) == task.id).order_by(col(Dataset.id))
        )
    )


def describe_task(task: Task, datasets: list[Dataset]) -> dict[str, Any]:
    """A task as the API's JSON and the website show it (docs/api.md)."""
    config = task_config(task)
    weights = config.metric_weights()
    return {
        "slug": task.slug,
        "name": task.name,
        "description": task.description,
        "input_fields": config.input_fields,
        "output_fields": config.output_fields,
        "metrics": [{"name": m.name, "weight": weights.get(m.name)} for m in config.metrics],
        "datasets": [
            {
                "name": d.name,
                "access": d.access,
                "split": d.split,
                "n_examples": d.n_examples,
                "sha256": d.sha256 or None,
            }
            for d in datasets
        ],
        "eval_server_id": task.eval_server_id,
        "limits": {
            "submissions_per_window": config.limits.submissions_per_window,
            "window_hours": config.limits.window_hours,
        },
    }
