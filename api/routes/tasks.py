"""Tasks and their leaderboards."""

from __future__ import annotations

from fastapi import APIRouter, Request

from api.deps import optional_user, services_of
from core.tasks import describe_task, get_task, list_datasets, list_tasks

router = APIRouter(prefix="/api/v1/tasks", tags=["tasks"])


@router.get("")
async def read_tasks(request: Request) -> dict:
    async with services_of(request).db.session() as session:
        tasks = await list_tasks(session)
        return {"tasks": [describe_task(t, await list_datasets(session, t)) for t in tasks]}


@router.get("/{slug}")
async def read_task(slug: str, request: Request) -> dict:
    async with services_of(request).db.session() as session:
        task = await get_task(session, slug)
        return describe_task(task, await list_datasets(session, task))


@router.get("/{slug}/leaderboard")
async def read_task_leaderboard(slug: str, request: Request, weights: str | None = None) -> dict:
    from core.boards import read_leaderboard
    from core.leaderboard import parse_weights

    services = services_of(request)
    async with services.db.session() as session:
        viewer = await optional_user(session, request)
        task = await get_task(session, slug)
        return await read_leaderboard(
            session, task, weights=parse_weights(weights) if weights else None, viewer=viewer
        )
