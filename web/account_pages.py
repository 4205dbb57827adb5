"""Sign in and out, "My submissions" (with cancel) and "My tokens" (create, name, revoke)."""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.responses import Response

from core import submissions as subs
from core.accounts import authenticate_password, authenticate_token, issue_token
from core.api_tokens import create_token, describe_token, list_tokens, revoke_token
from core.context import services_of
from core.errors import Unauthorized, WeighbridgeError
from core.models import ApiToken, User, utcnow
from core.states import TERMINAL, Status
from core.tasks import list_tasks
from web.auth import (
    PASSWORD_KIND,
    SESSION_SECONDS,
    TOKEN_KIND,
    check_csrf,
    close_session,
    open_session,
    session_claims,
    session_problem,
    throttle_of,
    viewer_of,
)
from web.pages import render_error, templates

router = APIRouter(include_in_schema=False)
SAFE_NEXT = re.compile(r"/[A-Za-z0-9/_.~%?=&+-]*")
Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Response]])


def shows_errors(handler: Handler) -> Handler:
    """A refusal on these pages (403, 404, 409, 429...) is an error page, not the API's JSON."""

    @functools.wraps(handler)
    async def wrapper(*args: Any, **kwargs: Any) -> Response:
        try:
            return await handler(*args, **kwargs)
        except WeighbridgeError as exc:
            return render_error(
                kwargs["request"], exc.status, exc.message, headers=exc.headers or None
            )

    return wrapper  # type: ignore[return-value]


def _next_path(value: object) -> str:
    """Where to go after signing in: a path on this site only (never another host)."""
    text = value if isinstance(value, str) else ""
    # Browsers drop tabs and newlines from a URL ("/\t/evil" is "//evil"): allow plain paths.
    if not SAFE_NEXT.fullmatch(text) or text.startswith("//"):
        return "/me"
    return text


def _to_signin(path: str) -> RedirectResponse:
    return RedirectResponse(f"/signin?next={path}", status_code=303)


def _signin_page(
    request: Request, *, error: str | None = None, status: int = 200, next_path: str = "/me"
) -> HTMLResponse:
    return templates.TemplateResponse(
        request,
        "signin.html",
        {"error": error, "notice": session_problem(request), "next": next_path},
        status_code=status,
    )


@router.get("/signin", response_class=HTMLResponse)
@shows_errors
async def signin_form(request: Request, next: str = "/me") -> Response:
    await viewer_of(request)  # notes a session whose token was revoked or expired
    return _signin_page(request, next_path=_next_path(next))


@router.post("/signin", response_class=HTMLResponse)
@shows_errors
async def signin(request: Request) -> Response:
    form = await request.form()
    check_csrf(request, form)
    next_path = _next_path(form.get("next"))
    token = str(form.get("token") or "").strip()
    name = str(form.get("name") or "").strip()
    password = str(form.get("password") or "")
    client = request.client.host if request.client else "unknown"
    keys = [f"ip:{client}"] + ([f"name:{name.lower()}"] if name and not token else [])
    throttle = throttle_of(request)
    throttle.check(keys)
    services = services_of(request)
    try:
        async with services.db.session() as session:
            if token:
                _, row = await authenticate_token(session, token)
                kind = TOKEN_KIND
            elif name and password:
                user = await authenticate_password(session, name, password)
                # A password session holds a token of its own: listed, revocable, ends with it.
                secret = await issue_token(session, user, label="web sign-in")
                _, row = await authenticate_token(session, secret)
                row.expires_at = utcnow() + timedelta(seconds=SESSION_SECONDS)
                kind = PASSWORD_KIND
            else:
                return _signin_page(
                    request,
                    error="enter an API token, or a user name and a password",
                    status=422,
                    next_path=next_path,
                )
    except Unauthorized as exc:
        throttle.fail(keys)
        message = (
            exc.message
            if exc.code in ("token_revoked", "token_expired")
            else ("those details were not accepted: check them and try again")
        )
        return _signin_page(request, error=message, status=401, next_path=next_path)
    response = RedirectResponse(next_path, status_code=303)
    open_session(request, response, row, kind=kind)
    return response


@router.post("/signout")
@shows_errors
async def signout(request: Request) -> Response:
    form = await request.form()
    check_csrf(request, form)
    claims = session_claims(request)
    if claims is not None and claims.kind == PASSWORD_KIND:
        async with services_of(request).db.session() as session:
            row = await session.get(ApiToken, claims.token_id)
            user = await session.get(User, claims.user_id)
            if row is not None and user is not None and row.revoked_at is None:
                await revoke_token(session, claims.token_id, by=user)
    response = RedirectResponse("/", status_code=303)
    close_session(request, response)
    return response


def _row(s: Any, slugs: dict[int | None, str]) -> dict[str, Any]:
    return {
        "id": s.id,
        "name": s.name,
        "kind": s.kind,
        "status": s.status,
        "task": slugs.get(s.task_id) if s.task_id else None,
        "created_at": s.created_at,
        "cancellable": Status(s.status) not in TERMINAL,
        "hidden": s.hidden,
        "flagged": s.flagged,
        "flag_reason": s.flag_reason,
    }


@router.get("/me", response_class=HTMLResponse)
@shows_errors
async def my_submissions(request: Request, cancelled: str | None = None) -> Response:
    viewer = await viewer_of(request)
    if viewer is None:
        return _to_signin("/me")
    async with services_of(request).db.session() as session:
        rows = await subs.list_submissions(session, viewer=viewer, mine=True, limit=200)
        slugs = {t.id: t.slug for t in await list_tasks(session)}
    return templates.TemplateResponse(
        request,
        "me.html",
        {
            "viewer": viewer,
            "rows": [_row(s, slugs) for s in rows],
            # Only an id this page links to, never other text from the address.
            "cancelled": cancelled if cancelled and subs.ID.fullmatch(cancelled) else None,
        },
    )


@router.post("/me/submissions/{submission_id}/cancel")
@shows_errors
async def cancel_mine(submission_id: str, request: Request) -> Response:
    viewer = await viewer_of(request)
    if viewer is None:
        return _to_signin("/me")
    check_csrf(request, await request.form())
    async with services_of(request).db.session() as session:
        await subs.cancel_submission(session, submission_id, user=viewer)
    return RedirectResponse(f"/me?cancelled={submission_id}", status_code=303)


async def _tokens_page(
    request: Request, viewer: User, *, new: dict | None = None, error: str | None = None
) -> HTMLResponse:
    claims = session_claims(request)
    async with services_of(request).db.session() as session:
        tokens = [describe_token(t) for t in await list_tokens(session, viewer)]
    return templates.TemplateResponse(
        request,
        "tokens.html",
        {
            "viewer": viewer,
            "tokens": tokens,
            "new": new,
            "error": error,
            "current": claims.token_id if claims else None,
        },
        status_code=200 if error is None else 422,
    )


@router.get("/me/tokens", response_class=HTMLResponse)
@shows_errors
async def my_tokens(request: Request) -> Response:
    viewer = await viewer_of(request)
    if viewer is None:
        return _to_signin("/me/tokens")
    return await _tokens_page(request, viewer)


@router.post("/me/tokens", response_class=HTMLResponse)
@shows_errors
async def new_token(request: Request) -> Response:
    viewer = await viewer_of(request)
    if viewer is None:
        return _to_signin("/me/tokens")
    form = await request.form()
    check_csrf(request, form)
    try:
        async with services_of(request).db.session() as session:
            row, token = await create_token(
                session,
                viewer,
                name=str(form.get("name") or "default"),
                expires=str(form.get("expires") or "") or None,
            )
    except WeighbridgeError as exc:
        return await _tokens_page(request, viewer, error=exc.message)
    return await _tokens_page(request, viewer, new={**describe_token(row), "token": token})


@router.post("/me/tokens/{token_id}/revoke")
@shows_errors
async def revoke_mine(token_id: int, request: Request) -> Response:
    viewer = await viewer_of(request)
    if viewer is None:
        return _to_signin("/me/tokens")
    check_csrf(request, await request.form())
    async with services_of(request).db.session() as session:
        await revoke_token(session, token_id, by=viewer)
    claims = session_claims(request)
    if claims is not None and claims.token_id == token_id:
        # The session was opened with this token: it ends with it.
        response = RedirectResponse("/signin", status_code=303)
        close_session(request, response)
        return response
    return RedirectResponse("/me/tokens", status_code=303)
