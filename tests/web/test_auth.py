"""Signing in to the site (token or password), the session cookie, CSRF, "My submissions",
"My tokens" and the admin page, over the real app."""

from __future__ import annotations

import re
from datetime import timedelta

import httpx
import pytest
import sqlalchemy as sa

from api.app import create_app
from core.accounts import create_user, get_user, set_password
from core.context import Services
from core.models import ApiToken, Submission, Task, utcnow
from web.auth import SESSION_COOKIE, SignInThrottle, read_session, session_value

SITE = "http://testserver"
SERVER_PATHS = ("/root", "/tmp/", "/home/", ".venv", "site-packages", "/work/")


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert match, "the page has no CSRF field"
    return match.group(1)


def assert_no_server_path(text: str, services: Services) -> None:
    for leak in (*SERVER_PATHS, str(services.settings.home)):
        assert leak not in text, f"{leak!r} shown to a user"


async def _user(services: Services, name: str = "ada", *, admin: bool = False) -> str:
    async with services.db.session() as session:
        _, token = await create_user(session, name, email=f"{name}@example.org", is_admin=admin)
    return token


async def _submission(services: Services, owner: str, status: str = "evaluating") -> str:
    async with services.db.session() as session:
        task = await session.scalar(sa.select(Task).where(Task.slug == "toy"))
        user = await get_user(session, owner)
        assert task is not None and user is not None
        s = Submission(task_id=task.id, user_id=user.id, name="my-model", status=status)
        session.add(s)
        await session.flush()
        return s.id


async def sign_in(client: httpx.AsyncClient, **fields: str) -> httpx.Response:
    page = await client.get("/signin")
    return await client.post("/signin", data={"csrf": csrf_of(page.text), **fields})


async def test_token_sign_in_sets_a_safe_cookie_and_shows_my_submissions(
    client: httpx.AsyncClient, services: Services
) -> None:
    token = await _user(services)
    sid = await _submission(services, "ada")
    anon = await client.get("/me")
    assert anon.status_code == 303 and anon.headers["location"] == "/signin?next=/me"

    signed = await sign_in(client, token=token, next="/me")
    assert signed.status_code == 303 and signed.headers["location"] == "/me"
    cookie = signed.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Secure" not in cookie
    assert token not in cookie  # the session names the token's row, not the token

    me = await client.get("/me")
    assert me.status_code == 200
    assert "<h1>My submissions</h1>" in me.text and sid in me.text and "toy" in me.text
    assert 'class="account" href="/me">ada<' in me.text
    assert_no_server_path(me.text, services)

    # Cancel: refused without the CSRF token, done with it (the API's cancel code).
    refused = await client.post(f"/me/submissions/{sid}/cancel", data={})
    assert refused.status_code == 403 and "security token" in refused.text
    forged = await client.post(f"/me/submissions/{sid}/cancel", data={"csrf": "0" * 64})
    assert forged.status_code == 403
    done = await client.post(f"/me/submissions/{sid}/cancel", data={"csrf": csrf_of(me.text)})
    assert done.status_code == 303
    async with services.db.session() as session:
        s = await session.get(Submission, sid)
        assert s is not None and s.status == "cancelled"
    shown = await client.get(done.headers["location"])
    assert f"Submission {sid} is cancelled." in shown.text
    spoof = await client.get("/me?cancelled=call+0800+now")
    assert "0800" not in spoof.text and "is cancelled" not in spoof.text
    again = await client.post(f"/me/submissions/{sid}/cancel", data={"csrf": csrf_of(me.text)})
    assert again.status_code == 409 and "already cancelled" in again.text


async def test_someone_elses_submission_cannot_be_cancelled(
    client: httpx.AsyncClient, services: Services
) -> None:
    token = await _user(services)
    await _user(services, "bob")
    bobs = await _submission(services, "bob")
    await sign_in(client, token=token)
    me = await client.get("/me")
    assert bobs not in me.text
    refused = await client.post(f"/me/submissions/{bobs}/cancel", data={"csrf": csrf_of(me.text)})
    assert refused.status_code == 403 and "only your own" in refused.text


async def test_revoking_the_token_ends_the_session_and_sign_in_says_when(
    client: httpx.AsyncClient, services: Services
) -> None:
    token = await _user(services)
    await sign_in(client, token=token)
    tokens = await client.get("/me/tokens")
    assert tokens.status_code == 200 and "(this session)" in tokens.text
    row = re.search(r'data-token="(\d+)"', tokens.text)
    assert row is not None
    old = client.cookies.get(SESSION_COOKIE)
    assert old
    out = await client.post(
        f"/me/tokens/{row.group(1)}/revoke", data={"csrf": csrf_of(tokens.text)}
    )
    assert out.status_code == 303 and out.headers["location"] == "/signin"
    # The browser may keep the old cookie: the site refuses it all the same.
    client.cookies.set(SESSION_COOKIE, old)
    gone = await client.get("/me")
    assert gone.status_code == 303
    page = await client.get("/signin")
    assert "this token was revoked on 20" in page.text
    again = await sign_in(client, token=token)
    assert again.status_code == 401 and "this token was revoked on" in again.text
    api = await client.get("/api/v1/tokens", headers={"Authorization": f"Bearer {token}"})
    assert api.status_code == 401 and "revoked" in api.json()["error"]["message"]
    bearer_page = await client.get("/me", headers={"Authorization": f"Bearer {token}"})
    assert bearer_page.status_code == 401 and "revoked" in bearer_page.text


async def test_an_expired_token_ends_the_session_and_is_refused_at_sign_in(
    client: httpx.AsyncClient, services: Services
) -> None:
    token = await _user(services)
    await sign_in(client, token=token)
    assert (await client.get("/me")).status_code == 200
    async with services.db.session() as session:
        await session.execute(
            sa.update(ApiToken).values(expires_at=utcnow() - timedelta(seconds=1))
        )
    assert (await client.get("/me")).status_code == 303
    assert "this token expired on 20" in (await client.get("/signin")).text
    refused = await sign_in(client, token=token)
    assert refused.status_code == 401 and "this token expired on" in refused.text


async def test_password_sign_in_wrong_details_say_nothing_more_and_are_throttled(
    client: httpx.AsyncClient, services: Services
) -> None:
    await _user(services)
    async with services.db.session() as session:
        user = await get_user(session, "ada")
        assert user is not None
        await set_password(session, user, "correct horse battery")
        stored = user.password_hash
    assert stored is not None and stored.startswith("scrypt$") and "horse" not in stored

    wrong_password = await sign_in(client, name="ada", password="wrong password!")
    wrong_name = await sign_in(client, name="nobody", password="correct horse battery")
    assert wrong_password.status_code == wrong_name.status_code == 401
    message = "those details were not accepted: check them and try again"
    assert message in wrong_password.text and message in wrong_name.text
    assert "SESSION" not in str(wrong_password.headers).upper()

    ok = await sign_in(client, name="ada", password="correct horse battery")
    assert ok.status_code == 303
    me = await client.get("/me")
    assert me.status_code == 200
    # The password session holds a token of its own, listed; signing out revokes it.
    tokens = await client.get("/me/tokens")
    assert "web sign-in" in tokens.text
    out = await client.post("/signout", data={"csrf": csrf_of(me.text)})
    assert out.status_code == 303 and SESSION_COOKIE in out.headers["set-cookie"]
    async with services.db.session() as session:
        web = await session.scalar(sa.select(ApiToken).where(ApiToken.label == "web sign-in"))
        assert web is not None and web.revoked_at is not None

    for _ in range(3):
        await sign_in(client, name="ada", password="still wrong!!")
    blocked = await sign_in(client, name="ada", password="correct horse battery")
    assert blocked.status_code == 429 and "too many failed sign-in attempts" in blocked.text
    assert int(blocked.headers["retry-after"]) > 0


async def test_signin_without_csrf_is_refused(
    client: httpx.AsyncClient, services: Services
) -> None:
    token = await _user(services)
    refused = await client.post("/signin", data={"token": token})
    assert refused.status_code == 403 and "security token" in refused.text
    assert SESSION_COOKIE not in refused.headers.get("set-cookie", "")


async def test_admin_page_is_for_admins_and_moderates(
    client: httpx.AsyncClient, services: Services
) -> None:
    token = await _user(services)
    admin_token = await _user(services, "boss", admin=True)
    sid = await _submission(services, "ada", status="done")
    assert (await client.get("/admin")).status_code == 303
    await sign_in(client, token=token)
    denied = await client.get("/admin")
    assert denied.status_code == 403 and "admins only" in denied.text and "<h1>" in denied.text

    client.cookies.clear()
    await sign_in(client, token=admin_token)
    page = await client.get("/admin")
    assert page.status_code == 200 and "<h1>Admin</h1>" in page.text and sid in page.text
    assert "No dead letters." in page.text
    saved = await client.post(
        f"/admin/submissions/{sid}/moderation",
        data={"csrf": csrf_of(page.text), "hidden": "on", "flagged": "on", "flag_reason": "dup"},
    )
    assert saved.status_code == 303
    async with services.db.session() as session:
        s = await session.get(Submission, sid)
        assert s is not None and (s.hidden, s.flagged, s.flag_reason, s.baseline) == (
            True,
            True,
            "dup",
            False,
        )
    assert f"Done: moderated {sid}." in (await client.get(saved.headers["location"])).text
    assert "Done:" not in (await client.get("/admin?done=send+money")).text
    no_csrf = await client.post(f"/admin/submissions/{sid}/moderation", data={"hidden": "on"})
    assert no_csrf.status_code == 403


def test_the_session_cookie_is_signed_and_expires() -> None:
    value = session_value("k", token_id=3, user_id=4, kind="t", now=1000)
    claims = read_session("k", value, now=1001)
    assert claims is not None and (claims.token_id, claims.user_id) == (3, 4)
    assert read_session("other key", value, now=1001) is None
    tampered = value.replace("v1.3.4.", "v1.5.4.", 1)
    assert read_session("k", tampered, now=1001) is None
    assert read_session("k", value, now=1000 + 15 * 24 * 3600) is None


def test_the_throttle_lets_tries_through_again_after_the_window() -> None:
    throttle = SignInThrottle(limit=2, window=60)
    throttle.fail(["ip:x"], now=0)
    throttle.fail(["ip:x"], now=1)
    with pytest.raises(Exception, match="try again in 60 seconds"):
        throttle.check(["ip:x"], now=1)
    throttle.check(["ip:y"], now=1)
    throttle.check(["ip:x"], now=61)


async def test_the_cookie_is_secure_behind_https(services: Services) -> None:
    services.settings.public_url = "https://weighbridge.example.org"
    token = await _user(services)
    transport = httpx.ASGITransport(app=create_app(services))
    # The browser sends a Secure cookie back over https only.
    async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as c:
        page = await c.get("/signin")
        assert page.status_code == 200, page.text
        assert "Secure" in page.headers["set-cookie"]  # the CSRF cookie
        signed = await c.post("/signin", data={"csrf": csrf_of(page.text), "token": token})
        assert signed.status_code == 303 and "Secure" in signed.headers["set-cookie"]


async def test_sign_in_goes_back_only_to_a_page_of_this_site(
    client: httpx.AsyncClient, services: Services
) -> None:
    token = await _user(services)
    for target in ("https://evil.example/", "//evil.example/x", "/\t/evil.example", "/\\evil"):
        client.cookies.clear()
        signed = await sign_in(client, token=token, next=target)
        assert signed.status_code == 303 and signed.headers["location"] == "/me", target
    client.cookies.clear()
    signed = await sign_in(client, token=token, next="/tasks/toy?weights=accuracy%3D1")
    assert signed.headers["location"] == "/tasks/toy?weights=accuracy%3D1"
