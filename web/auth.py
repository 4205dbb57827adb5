"""Who is looking at a page: a signed cookie session (bound to the API token it was opened
with, so revoking that token ends it) or a Bearer token; and CSRF tokens for the site's forms.

The session cookie is `v1.<token id>.<user id>.<issued>.<kind>.<nonce>.<signature>`, the
signature an HMAC-SHA256 under the service's secret key (core.presign.secret_key). A form's CSRF
token is an HMAC of the session's nonce (signed in) or of a random `wb_csrf` cookie (signed out,
double submit), so a page of another site can neither read nor forge it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.accounts import authenticate, check_token_usable
from core.context import services_of
from core.errors import Forbidden, RateLimited, Unauthorized
from core.models import ApiToken, User
from core.presign import secret_key

SESSION_COOKIE = "wb_session"
CSRF_COOKIE = "wb_csrf"
CSRF_FIELD = "csrf"
SESSION_SECONDS = 14 * 24 * 3600
# Sign-in by password opens a token of its own (listed with the user's tokens, revocable).
PASSWORD_KIND, TOKEN_KIND = "p", "t"
_VIEWER = "wb.viewer"
_NEW_CSRF = "wb.new_csrf_seed"
_PROBLEM = "wb.session_problem"


@dataclass(frozen=True)
class SessionClaims:
    token_id: int
    user_id: int
    issued: int
    kind: str
    nonce: str


def bearer_token(request: Request) -> str | None:
    """The token of an `Authorization: Bearer …` header (as api.deps reads it)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _secret(request: Request) -> str:
    return secret_key(services_of(request).settings)


def _sign(secret: str, purpose: str, text: str) -> str:
    return hmac.new(secret.encode(), f"{purpose}\n{text}".encode(), hashlib.sha256).hexdigest()


def session_value(secret: str, *, token_id: int, user_id: int, kind: str, now: float) -> str:
    body = f"v1.{token_id}.{user_id}.{int(now)}.{kind}.{secrets.token_urlsafe(16)}"
    return f"{body}.{_sign(secret, 'session', body)}"


def read_session(
    secret: str, value: str | None, *, now: float | None = None
) -> SessionClaims | None:
    """The claims of a session cookie whose signature holds and whose time is not up."""
    if not value:
        return None
    body, _, signature = value.rpartition(".")
    parts = body.split(".")
    if len(parts) != 6 or parts[0] != "v1":
        return None
    if not hmac.compare_digest(_sign(secret, "session", body), signature):
        return None
    _, token_id, user_id, issued, kind, nonce = parts
    if not (token_id.isdigit() and user_id.isdigit() and issued.isdigit()):
        return None
    if int(issued) + SESSION_SECONDS < (time.time() if now is None else now):
        return None
    return SessionClaims(int(token_id), int(user_id), int(issued), kind, nonce)


def session_claims(request: Request) -> SessionClaims | None:
    return read_session(_secret(request), request.cookies.get(SESSION_COOKIE))


def cookie_secure(request: Request) -> bool:
    return services_of(request).settings.public_url.lower().startswith("https://")


def open_session(request: Request, response: Response, token: ApiToken, *, kind: str) -> None:
    """Set the session cookie for `token` on `response` (HttpOnly, SameSite=Lax)."""
    assert token.id is not None
    value = session_value(
        _secret(request), token_id=token.id, user_id=token.user_id, kind=kind, now=time.time()
    )
    response.set_cookie(
        SESSION_COOKIE,
        value,
        max_age=SESSION_SECONDS,
        httponly=True,
        samesite="lax",
        secure=cookie_secure(request),
        path="/",
    )


def close_session(request: Request, response: Response) -> None:
    response.delete_cookie(
        SESSION_COOKIE, path="/", httponly=True, samesite="lax", secure=cookie_secure(request)
    )


async def viewer_of(request: Request) -> User | None:
    """The signed-in user (session cookie or Bearer token), or None.

    A bad Bearer token is refused (401, saying why); a session whose token was revoked or has
    expired gives None, and `session_problem(request)` says what happened.
    """
    if _VIEWER in request.scope:
        return request.scope[_VIEWER]
    viewer: User | None = None
    token = bearer_token(request)
    services = services_of(request)
    if token is not None:
        async with services.db.session() as session:
            viewer = await authenticate(session, token)
    else:
        claims = session_claims(request)
        if claims is not None:
            async with services.db.session() as session:
                row = await session.get(ApiToken, claims.token_id)
                user = await session.get(User, claims.user_id)
                if row is None or user is None or row.user_id != user.id:
                    request.scope[_PROBLEM] = "your session has ended: sign in again"
                else:
                    try:
                        check_token_usable(row)
                        viewer = user
                    except Unauthorized as exc:
                        request.scope[_PROBLEM] = exc.message
    request.scope[_VIEWER] = viewer
    return viewer


def known_viewer(request: Request) -> User | None:
    """The viewer, where this request already asked `viewer_of` (for the page's header)."""
    return request.scope.get(_VIEWER)


def account_link(request: Request) -> tuple[str, str]:
    """The header's account link: the viewer's name (known), "My account" (a session cookie
    that still holds, not looked up on this page), else "Sign in"."""
    viewer = known_viewer(request)
    if viewer is not None:
        return viewer.name, "/me"
    if _VIEWER not in request.scope and session_claims(request) is not None:
        return "My account", "/me"
    return "Sign in", "/signin"


def session_problem(request: Request) -> str | None:
    """Why the session cookie sent with this request no longer signs anyone in, if it does not."""
    return request.scope.get(_PROBLEM)


async def require_viewer(request: Request) -> User:
    viewer = await viewer_of(request)
    if viewer is None:
        raise Unauthorized(session_problem(request) or "sign in to see this page (/signin)")
    return viewer


async def require_admin(request: Request) -> User:
    viewer = await require_viewer(request)
    if not viewer.is_admin:
        raise Forbidden("this page is for admins only")
    return viewer


def _csrf_seed(request: Request, *, create: bool) -> str | None:
    claims = session_claims(request)
    if claims is not None:
        return "s:" + claims.nonce
    seed = request.cookies.get(CSRF_COOKIE) or request.scope.get(_NEW_CSRF)
    if seed:
        return "c:" + seed
    if not create:
        return None
    seed = secrets.token_urlsafe(24)
    request.scope[_NEW_CSRF] = seed  # CsrfCookieMiddleware sets it on the response
    return "c:" + seed


def csrf_token(request: Request) -> str:
    """The token a form of this page carries in its `csrf` field."""
    seed = _csrf_seed(request, create=True)
    assert seed is not None
    return _sign(_secret(request), "csrf", seed)


def check_csrf(request: Request, form: Mapping[str, Any]) -> None:
    """Refuse (403) a form post that does not carry this browser's CSRF token.

    A request with a Bearer token is not a browser's cookie-borne one and needs none."""
    if bearer_token(request) is not None:
        return
    seed = _csrf_seed(request, create=False)
    sent = form.get(CSRF_FIELD)
    if seed is None or not isinstance(sent, str) or not sent:
        raise Forbidden(
            "this form is missing its security token: reload the page and send it again",
            code="csrf",
            field=CSRF_FIELD,
        )
    if not hmac.compare_digest(_sign(_secret(request), "csrf", seed), sent):
        raise Forbidden(
            "this form's security token does not match (it is from another page or an old "
            "session): reload the page and send it again",
            code="csrf",
            field=CSRF_FIELD,
        )


class CsrfCookieMiddleware:
    """Sets the `wb_csrf` cookie on a response whose page made a new CSRF seed."""

    def __init__(self, app: ASGIApp, *, secure: bool) -> None:
        self.app = app
        self.secure = secure

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_cookie(message: Message) -> None:
            seed = scope.get(_NEW_CSRF)
            if message["type"] == "http.response.start" and seed:
                cookie = f"{CSRF_COOKIE}={seed}; Path=/; HttpOnly; SameSite=Lax"
                if self.secure:
                    cookie += "; Secure"
                message.setdefault("headers", []).append((b"set-cookie", cookie.encode()))
            await send(message)

        await self.app(scope, receive, send_with_cookie)


@dataclass
class SignInThrottle:
    """Failed sign-ins per client address and per name: after `limit` in `window` seconds,
    more tries are refused (429) until the oldest falls out of the window."""

    limit: int = 5
    window: float = 300.0
    failures: dict[str, deque[float]] = field(default_factory=dict)

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self.failures.setdefault(key, deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        return times

    def check(self, keys: list[str], *, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for key in keys:
            times = self._recent(key, now)
            if len(times) >= self.limit:
                wait = int(times[0] + self.window - now) + 1
                raise RateLimited(
                    f"too many failed sign-in attempts: try again in {wait} seconds",
                    headers={"Retry-After": str(wait)},
                )

    def fail(self, keys: list[str], *, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for key in keys:
            self._recent(key, now).append(now)
        if len(self.failures) > 10_000:  # forget the oldest keys rather than grow without end
            for key in list(self.failures)[:5_000]:
                del self.failures[key]


def throttle_of(request: Request) -> SignInThrottle:
    return request.app.state.signin_throttle


def install_auth(app: FastAPI, *, secure: bool) -> None:
    """The sign-in throttle and the CSRF cookie middleware for an app."""
    app.state.signin_throttle = SignInThrottle()
    app.add_middleware(CsrfCookieMiddleware, secure=secure)
