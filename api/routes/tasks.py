"""Tasks and their leaderboards."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from api.deps import optional_user, services_of
from core.errors import WeighbridgeError
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


@router.get("/{slug}/leaderboard", response_model=None)
async def read_task_leaderboard(
    slug: str, request: Request, weights: str | None = None, per_user: str = "all"
) -> Response:
    """The task's board as the caller sees it: rows an admin hid only for admins, private rows
    only for their owner, no scores on a rank-only task; `per_user=best` keeps each owner's
    best row (the web page's default view), `all` (the default here) every row."""
    import orjson

    from core.boards import read_leaderboard
    from core.leaderboard import parse_weights

    services = services_of(request)
    async with services.db.session() as session:
        viewer = await optional_user(session, request)
        task = await get_task(session, slug)
        if per_user not in ("all", "best"):
            raise WeighbridgeError("per_user must be 'all' or 'best'", field="per_user")
        board = await read_leaderboard(
            session,
            task,
            weights=parse_weights(weights) if weights else None,
            viewer=viewer,
            best_per_user=per_user == "best",
        )
    # Plain JSON already: encoded by orjson directly, not walked by jsonable_encoder (a
    # 1,000-row board spent most of its time there).
    return Response(orjson.dumps(board), media_type="application/json")
