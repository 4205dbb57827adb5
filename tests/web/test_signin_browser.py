"""In headless Chromium: sign in with a token, cancel one's own submission from "My
submissions", make and revoke tokens; a revoked or expired session is refused; no page shows
a server path. Each test saves a screenshot in its own output folder."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from core.accounts import create_user, hash_token
from core.db import Database
from core.models import ApiToken, utcnow
from tests.conftest import FIXTURES, free_port
from tests.web.test_pages import CHROMIUM, FLAGS

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="Debian's chromium is not installed (apt-get install chromium)",
)
SERVER_PATHS = ("/root", "/tmp/", "/home/", ".venv", "site-packages", "/work/")
# The storage layout (a page links to /submissions/<id>, never to a stored file of one).
STORAGE_KEY = re.compile(r"submissions/[0-9a-f]{32}/(?:build|results|bundle|incoming)")


def _run(coroutine):
    """Run a coroutine to its end on a thread of its own (Playwright's loop holds this one)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    """`weighbridge serve api` (no builder: an upload stays unfinished); each test makes its
    own user with `_seed`."""
    tmp_path = tmp_path_factory.mktemp("signin")
    home = tmp_path / "home"
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("WEIGHBRIDGE_")},
        "WEIGHBRIDGE_HOME": str(home),
        "WEIGHBRIDGE_TASK_CONFIGS": str(FIXTURES / "task_configs"),
        "WEIGHBRIDGE_PUBLIC_URL": f"http://127.0.0.1:{port}",
    }
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "serve", "api", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            pytest.fail("the API did not start")
        yield url, f"sqlite+aiosqlite:///{home / 'weighbridge.db'}"
    finally:
        proc.terminate()
        proc.wait(10)


async def _seed(url: str, name: str) -> str:
    db = Database(url)
    async with db.session() as session:
        _, token = await create_user(session, name, email=f"{name}@example.org")
    await db.dispose()
    return token


async def _expire(url: str, token: str) -> None:
    db = Database(url)
    async with db.session() as session:
        await session.execute(
            sa.update(ApiToken)
            .where(ApiToken.token_sha256 == hash_token(token))
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    await db.dispose()


@pytest.fixture
def browser():
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield chromium
        chromium.close()


def _no_server_path(html: str) -> None:
    for leak in SERVER_PATHS:
        assert leak not in html, f"{leak!r} is on the page"
    assert STORAGE_KEY.search(html) is None


def _sign_in(page, url: str, token: str) -> None:
    page.goto(url + "/signin")
    page.get_by_label("API token").fill(token)
    page.locator("#signin-token button[type=submit]").click()


def test_sign_in_and_cancel_my_own_submission(site, browser, tmp_path: Path) -> None:
    url, db_url = site
    token = _run(_seed(db_url, "ada"))
    created = httpx.post(
        f"{url}/api/v1/submissions",
        data={"task": "toy", "name": "my-live-model"},
        files={"file": ("m.tar.gz", b"bundle bytes")},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert created.status_code == 201, created.text
    sub_id = created.json()["id"]
    page = browser.new_page()
    page.goto(url + "/me")
    assert page.url.startswith(url + "/signin")  # signed out: sent to sign in first
    page.get_by_label("API token").fill(token)
    page.locator("#signin-token button[type=submit]").click()
    page.wait_for_url(url + "/me")
    row = page.locator(f"#my-submissions tr[data-submission='{sub_id}']")
    assert "uploaded" in row.inner_text() and "toy" in row.inner_text()
    page.screenshot(path=str(tmp_path / "my-submissions.png"), full_page=True)
    row.get_by_role("button", name="Cancel my-live-model").click()
    page.wait_for_selector("[role=status]")
    assert f"Submission {sub_id} is cancelled" in page.locator("[role=status]").inner_text()
    assert "cancelled" in page.locator(f"tr[data-submission='{sub_id}']").inner_text()
    assert page.locator(f"tr[data-submission='{sub_id}'] button").count() == 0
    page.screenshot(path=str(tmp_path / "cancelled.png"), full_page=True)
    detail = httpx.get(
        f"{url}/api/v1/submissions/{sub_id}", headers={"Authorization": f"Bearer {token}"}
    )
    assert detail.json()["status"] == "cancelled"
    _no_server_path(page.content())


def test_a_revoked_session_is_refused_by_the_site_and_the_api(site, browser, tmp_path) -> None:
    url, db_url = site
    token = _run(_seed(db_url, "bea"))
    page = browser.new_page()
    _sign_in(page, url, token)
    page.wait_for_url(url + "/me")
    page.goto(url + "/me/tokens")
    page.get_by_label("Name").fill("laptop")
    page.locator("#create-token button[type=submit]").click()
    new = page.locator("#new-token-value").input_value()
    assert new.startswith("wb_")
    page.screenshot(path=str(tmp_path / "tokens.png"), full_page=True)
    _no_server_path(page.content())
    # Revoke the token this session was opened with, elsewhere (the API, with the new token):
    # the session ends at once.
    mine = httpx.get(f"{url}/api/v1/tokens", headers={"Authorization": f"Bearer {new}"})
    session_token = next(t for t in mine.json()["tokens"] if t["name"] == "default")
    gone = httpx.delete(
        f"{url}/api/v1/tokens/{session_token['id']}", headers={"Authorization": f"Bearer {new}"}
    )
    assert gone.status_code == 200
    page.goto(url + "/me")
    assert page.url.startswith(url + "/signin")
    assert "this token was revoked on" in page.locator("#session-notice").inner_text()
    page.screenshot(path=str(tmp_path / "revoked.png"), full_page=True)
    api = httpx.get(f"{url}/api/v1/tokens", headers={"Authorization": f"Bearer {token}"})
    assert api.status_code == 401 and "this token was revoked on" in api.text
    _sign_in(page, url, token)
    page.wait_for_selector("#signin-error")
    assert "this token was revoked on" in page.locator("#signin-error").inner_text()
    # The new token signs in; revoking it on the tokens page signs this browser out.
    _sign_in(page, url, new)
    page.wait_for_url(url + "/me")
    page.goto(url + "/me/tokens")
    page.locator("tr:has-text('(this session)') button").click()
    page.wait_for_url(url + "/signin")
    page.goto(url + "/me")
    assert page.url.startswith(url + "/signin")
    api = httpx.get(f"{url}/api/v1/tokens", headers={"Authorization": f"Bearer {new}"})
    assert api.status_code == 401
    _no_server_path(page.content())


def test_an_expired_session_is_refused_and_csrf_is_required(site, browser, tmp_path) -> None:
    url, db_url = site
    token = _run(_seed(db_url, "cai"))
    page = browser.new_page()
    _sign_in(page, url, token)
    page.wait_for_url(url + "/me")
    # A form posted without this browser's CSRF token (another site's form) is refused.
    forged = page.request.post(url + "/me/tokens", form={"name": "evil"})
    assert forged.status == 403 and "security token" in forged.text()
    _run(_expire(db_url, token))
    page.goto(url + "/me")
    assert page.url.startswith(url + "/signin")
    assert "this token expired on" in page.locator("#session-notice").inner_text()
    page.get_by_label("API token").fill(token)
    page.locator("#signin-token button[type=submit]").click()
    page.wait_for_selector("#signin-error")
    assert "this token expired on" in page.locator("#signin-error").inner_text()
    page.screenshot(path=str(tmp_path / "expired.png"), full_page=True)
    api = httpx.get(f"{url}/api/v1/tokens", headers={"Authorization": f"Bearer {token}"})
    assert api.status_code == 401 and "this token expired on" in api.text
    _no_server_path(page.content())


async def _admin_and_done_submission(url: str) -> tuple[str, str]:
    from core.models import Submission, Task

    db = Database(url)
    async with db.session() as session:
        admin, token = await create_user(session, "dee", email="dee@example.org", is_admin=True)
        task = await session.scalar(sa.select(Task).where(Task.slug == "toy"))
        assert task is not None
        s = Submission(task_id=task.id, user_id=admin.id, name="reference", status="done")
        session.add(s)
        await session.flush()
        sid = s.id
    await db.dispose()
    return token, sid


def test_an_admin_flags_a_submission_from_the_admin_page(site, browser, tmp_path) -> None:
    url, db_url = site
    user_token = _run(_seed(db_url, "eve"))
    page = browser.new_page()
    _sign_in(page, url, user_token)
    page.wait_for_url(url + "/me")
    refused = page.goto(url + "/admin")
    assert refused is not None and refused.status == 403
    assert "this page is for admins only" in page.locator("[role=alert]").inner_text()
    page.context.clear_cookies()
    token, sid = _run(_admin_and_done_submission(db_url))
    _sign_in(page, url, token)
    page.wait_for_url(url + "/me")
    page.goto(url + "/admin")
    row = page.locator(f"#moderation-table tr[data-submission='{sid}']")
    row.get_by_label("flagged").check()
    row.get_by_label("reason").fill("trained on the test set")
    row.get_by_label("baseline").check()
    row.get_by_role("button", name="Save moderation of reference").click()
    page.wait_for_selector("[role=status]")
    row = page.locator(f"#moderation-table tr[data-submission='{sid}']")
    assert row.get_by_label("flagged").is_checked() and row.get_by_label("baseline").is_checked()
    assert row.get_by_label("reason").input_value() == "trained on the test set"
    page.screenshot(path=str(tmp_path / "admin.png"), full_page=True)
    _no_server_path(page.content())
    detail = httpx.get(
        f"{url}/api/v1/submissions/{sid}/events", headers={"Authorization": f"Bearer {token}"}
    )
    assert any("moderated by dee" in e["message"] for e in detail.json()["events"])
