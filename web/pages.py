"""The leaderboard website: tasks, a task's leaderboard, a submission's live timeline."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from web.auth import account_link, csrf_token, known_viewer
from web.markdown import render_markdown

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
static = StaticFiles(directory=HERE / "static")
router = APIRouter(include_in_schema=False)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    return "\u2013" if value is None else str(value)


templates.env.filters["fmt"] = _fmt
templates.env.filters["markdown"] = render_markdown
# Forms carry `{{ csrf_token(request) }}`; the header shows who is signed in (web.auth).
templates.env.globals["csrf_token"] = csrf_token
templates.env.globals["known_viewer"] = known_viewer
templates.env.globals["account_link"] = account_link

ERROR_TITLES = {
    404: "Not found",
    405: "Not allowed",
    422: "That request could not be understood",
    500: "Something went wrong on our side",
}


def is_page_request(request: Request) -> bool:
    """Whether an error for this request is shown as a page (else it is the API's JSON).

    A request a page route answered is a page's; one no route matched is a page's unless
    its path is under /api. Every other route (the API, /healthz, /metrics) keeps JSON.
    """
    route = request.scope.get("route")
    if route is not None:
        # Every page module lives in web/ (pages, leaderboard, submission, benchmark pages...).
        endpoint = getattr(route, "endpoint", None)
        return getattr(endpoint, "__module__", "").startswith("web.")
    path = request.scope.get("path", "")
    return not (path == "/api" or path.startswith("/api/"))


def render_error(
    request: Request, status: int, message: str, *, headers: dict[str, str] | None = None
) -> HTMLResponse:
    """An error as a page in the site's layout."""
    return templates.TemplateResponse(
        request,
        "error.html",
        {"status": status, "title": ERROR_TITLES.get(status, "Error"), "message": message},
        status_code=status,
        headers=headers,
    )
