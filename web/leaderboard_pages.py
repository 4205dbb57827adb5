"""The home page and the task leaderboards: the page, its CSV and JSON exports, an embed view.

Every view of a board goes through `core.boards.read_leaderboard` with the viewer and the same
query (`weights`, `all`), so the page, its exports and the API agree on what is shown: rows an
admin hid only for admins, private rows only for their owner, ranks and names only on a
rank-only task, each owner's best row unless `all=1`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response
from starlette.routing import NoMatchFound

from core.boards import read_leaderboard
from core.context import services_of
from core.errors import WeighbridgeError
from core.leaderboard import parse_weights, scoring_datasets
from core.overview import read_overview
from core.tasks import describe_task, get_task, list_datasets, task_config
from web.auth import viewer_of
from web.boardtable import board_columns, board_records, header_html, records_csv, rows_html
from web.pages import templates

router = APIRouter(include_in_schema=False)


def _has_page(request: Request, endpoint: str, **params: str) -> bool:
    """Whether the site routes the page `endpoint` (another part's page may not be there)."""
    try:
        request.app.url_path_for(endpoint, **params)
    except NoMatchFound:
        return False
    return True


@router.get("/", response_class=HTMLResponse)
async def home(request: Request) -> HTMLResponse:
    viewer = await viewer_of(request)
    async with services_of(request).db.session() as session:
        overview = await read_overview(session, viewer=viewer)
    tasks = overview["tasks"]
    context = {
        "tasks": tasks,
        "alerts": overview["alerts"],
        # Link alerts to the benchmark pages where the site has them.
        "benchmark_pages": _has_page(request, "history_page", name="x"),
        "sign_in": _has_page(request, "signin_form"),
        "viewer": viewer,
        # The site's own address, for the `weighbridge login --url` line.
        "site_url": str(request.base_url).rstrip("/"),
        "example_task": tasks[0]["slug"] if tasks else "TASK",
    }
    return templates.TemplateResponse(request, "index.html", context)


async def _board(
    request: Request, slug: str, *, weights: str | None, show_all: bool
) -> tuple[dict[str, Any], dict[str, Any], list[str], str | None]:
    """(task info, board, scoring dataset names, error): a bad `weights` is an error shown
    with the board under the task's own weights."""
    viewer = await viewer_of(request)
    error = None
    async with services_of(request).db.session() as session:
        task = await get_task(session, slug)
        info = describe_task(task, await list_datasets(session, task))
        datasets = list(scoring_datasets(task_config(task)))
        try:
            board = await read_leaderboard(
                session,
                task,
                weights=parse_weights(weights) if weights else None,
                viewer=viewer,
                best_per_user=not show_all,
            )
        except WeighbridgeError as exc:
            error = exc.message
            board = await read_leaderboard(session, task, viewer=viewer, best_per_user=not show_all)
    return info, board, datasets, error


def _href(slug: str, suffix: str = "", params: dict[str, str | None] | None = None) -> str:
    """A link to the task's board (`suffix`: an export) with the query params that are set."""
    query = urlencode({k: v for k, v in (params or {}).items() if v})
    return f"/tasks/{slug}{suffix}" + (f"?{query}" if query else "")


@router.get("/tasks/{slug}", response_class=HTMLResponse)
async def task_page(
    slug: str,
    request: Request,
    weights: str | None = None,
    show_all: bool = Query(False, alias="all"),
    embed: bool = False,
) -> HTMLResponse:
    info, board, datasets, error = await _board(request, slug, weights=weights, show_all=show_all)
    metrics = [m["name"] for m in info["metrics"]]
    columns = board_columns(board, metrics=metrics, datasets=datasets)
    shown_weights = weights or ",".join(f"{k}={v:g}" for k, v in board["weights"].items())
    kept = weights if error is None else None
    view: dict[str, str | None] = {"weights": kept, "all": "1" if show_all else None}
    links = {
        "page": _href(slug, "", view),
        "csv": _href(slug, "/leaderboard.csv", view),
        "json": _href(slug, "/leaderboard.json", view),
        "embed": _href(slug, "", {**view, "embed": "1"}),
        "toggle_all": _href(
            slug,
            "",
            {"weights": kept, "all": None if show_all else "1", "embed": "1" if embed else None},
        ),
    }
    return templates.TemplateResponse(
        request,
        "task.html",
        {
            "task": info,
            "board": board,
            "weights": shown_weights,
            "show_all": show_all,
            "embed": embed,
            "error": error,
            "header": header_html(columns),
            "body": rows_html(board, columns),
            "n_columns": len(columns),
            # The first per-dataset column (1-based), which the page's CSS collapses from.
            "first_dataset_column": next(
                (i for i, c in enumerate(columns, start=1) if c.group), None
            ),
            "links": links,
        },
        status_code=200 if error is None else 422,
    )


def _export_error(exc: WeighbridgeError, media_type: str) -> Response:
    if media_type == "application/json":
        body = orjson.dumps(exc.to_dict())
    else:
        body = f"error: {exc.message}\n".encode()
    return Response(body, status_code=exc.status, media_type=media_type)


async def _export(
    request: Request, slug: str, *, weights: str | None, show_all: bool
) -> tuple[dict[str, Any], list[dict[str, Any]], list[Any]]:
    viewer = await viewer_of(request)
    async with services_of(request).db.session() as session:
        task = await get_task(session, slug)
        config = task_config(task)
        board = await read_leaderboard(
            session,
            task,
            weights=parse_weights(weights) if weights else None,
            viewer=viewer,
            best_per_user=not show_all,
        )
    columns = board_columns(
        board, metrics=[m.name for m in config.metrics], datasets=list(scoring_datasets(config))
    )
    return board, board_records(board, columns), columns


@router.get("/tasks/{slug}/leaderboard.json")
async def leaderboard_json(
    slug: str,
    request: Request,
    weights: str | None = None,
    show_all: bool = Query(False, alias="all"),
) -> Response:
    try:
        board, records, _ = await _export(request, slug, weights=weights, show_all=show_all)
    except WeighbridgeError as exc:
        return _export_error(exc, "application/json")
    body = {
        "task": board["task"],
        "primary_metric": board["primary_metric"],
        "weights": board["weights"],
        "rank_only": board["rank_only"],
        "per_user": board["per_user"],
        "board": board["board"],
        "rows": records,
    }
    return Response(
        orjson.dumps(body),
        media_type="application/json",
        headers={"Access-Control-Allow-Origin": "*"},
    )


@router.get("/tasks/{slug}/leaderboard.csv")
async def leaderboard_csv(
    slug: str,
    request: Request,
    weights: str | None = None,
    show_all: bool = Query(False, alias="all"),
) -> Response:
    try:
        _, records, columns = await _export(request, slug, weights=weights, show_all=show_all)
    except WeighbridgeError as exc:
        return _export_error(exc, "text/plain; charset=utf-8")
    return Response(
        records_csv(records, columns),
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'inline; filename="{slug}-leaderboard.csv"',
            "Access-Control-Allow-Origin": "*",
        },
    )
