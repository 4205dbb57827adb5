"""The admin's page: moderate submissions (hide, flag with a reason, baseline) and redrive dead
letters. Admins only: others get a 403 page, and signed-out visitors the sign-in page."""

from __future__ import annotations

import re

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.responses import Response

from core import submissions as subs
from core.accounts import user_names
from core.context import services_of
from core.dead_letters import list_dead_letters, redrive_dead_letter
from core.errors import Forbidden
from core.models import User
from core.moderation import moderate_submission
from core.scrub import scrub_text
from core.tasks import list_tasks
from web.account_pages import shows_errors
from web.auth import check_csrf, viewer_of
from web.pages import templates

router = APIRouter(include_in_schema=False)
DONE = re.compile(r"(?:moderated|redrove) [A-Za-z0-9_-]{1,64}")


async def _admin_or_redirect(request: Request) -> User | Response:
    viewer = await viewer_of(request)
    if viewer is None:
        return RedirectResponse("/signin?next=/admin", status_code=303)
    if not viewer.is_admin:
        raise Forbidden("this page is for admins only")
    return viewer


@router.get("/admin", response_class=HTMLResponse)
@shows_errors
async def admin_page(request: Request, done: str | None = None) -> Response:
    viewer = await _admin_or_redirect(request)
    if isinstance(viewer, Response):
        return viewer
    services = services_of(request)
    async with services.db.session() as session:
        rows = await subs.list_submissions(session, viewer=viewer, mine=False, limit=200)
        slugs = {t.id: t.slug for t in await list_tasks(session)}
        owners = await user_names(session, (s.user_id for s in rows))
    letters = await list_dead_letters(services.queue)
    for letter in letters:
        letter["error"] = scrub_text(letter["error"])
    return templates.TemplateResponse(
        request,
        "admin.html",
        {
            "viewer": viewer,
            "rows": rows,
            "slugs": slugs,
            "owners": owners,
            "letters": letters,
            # Only the notes this page itself links to, never any text from the address.
            "done": done if done and DONE.fullmatch(done) else None,
        },
    )


@router.post("/admin/submissions/{submission_id}/moderation")
@shows_errors
async def moderate(submission_id: str, request: Request) -> Response:
    viewer = await _admin_or_redirect(request)
    if isinstance(viewer, Response):
        return viewer
    form = await request.form()
    check_csrf(request, form)
    flagged = form.get("flagged") == "on"
    async with services_of(request).db.session() as session:
        await moderate_submission(
            session,
            submission_id,
            by=viewer,
            hidden=form.get("hidden") == "on",
            flagged=flagged,
            flag_reason=str(form.get("flag_reason") or "") if flagged else None,
            baseline=form.get("baseline") == "on",
        )
    return RedirectResponse(f"/admin?done=moderated+{submission_id}", status_code=303)


@router.post("/admin/dead-letters/{message_id}/redrive")
@shows_errors
async def redrive(message_id: str, request: Request) -> Response:
    viewer = await _admin_or_redirect(request)
    if isinstance(viewer, Response):
        return viewer
    check_csrf(request, await request.form())
    await redrive_dead_letter(services_of(request).queue, message_id)
    return RedirectResponse(f"/admin?done=redrove+{message_id}", status_code=303)
