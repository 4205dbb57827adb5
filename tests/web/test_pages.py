"""The website in headless Chromium: tasks, a ranked leaderboard, a live submission timeline."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from core.accounts import create_user
from core.boards import rebuild_leaderboard
from core.db import Database
from core.models import Score, Submission, Task
from tests.web.conftest import serve_api

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="Debian's chromium is not installed (apt-get install chromium)",
)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    """`weighbridge serve api` on SQLite, with a user and two finished, scored submissions."""
    home = tmp_path_factory.mktemp("web")
    with serve_api(home) as url:
        token = asyncio.run(_seed(f"sqlite+aiosqlite:///{home / 'weighbridge.db'}"))
        yield url, token


async def _seed(url: str) -> str:
    db = Database(url)
    async with db.session() as session:
        user, token = await create_user(session, "ada", email="ada@example.org")
        task = (await session.execute(Task.__table__.select())).first()
        for name, acc in (("weak", 0.61), ("strong", 0.93)):
            s = Submission(task_id=task.id, user_id=user.id, name=name, status="done")
            session.add(s)
            await session.flush()
            for metric, value in (("accuracy", acc), ("macro_f1", acc - 0.02)):
                session.add(
                    Score(
                        submission_id=s.id,
                        dataset="test",
                        metric=metric,
                        value=value,
                        ci_low=value - 0.03,
                        ci_high=value + 0.03,
                    )
                )
        # What the background loop of `up` / `serve scheduler` does after a change.
        await rebuild_leaderboard(session, await session.get(Task, task.id), storage=None)
    await db.dispose()
    return token


@pytest.fixture
def page():
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser.new_page()
        browser.close()


def test_index_lists_tasks_and_leaderboard_ranks_the_better_model_first(site, page):
    url, _ = site
    page.goto(url + "/")
    page.click("a[data-task=toy]")
    page.wait_for_selector("#leaderboard")
    # Both models are ada's: the board shows each owner's best unless asked for every one.
    rows = page.locator("#leaderboard tbody tr")
    assert rows.count() == 1
    assert rows.nth(0).locator("td").nth(1).inner_text() == "strong"
    page.click("#toggle-all")
    page.wait_for_url("**/tasks/toy?all=1")
    assert rows.count() == 2
    assert rows.nth(0).locator("td").nth(1).inner_text() == "strong"
    assert rows.nth(1).locator("td").nth(1).inner_text() == "weak"
    # The primary metric's interval: its low and high ends.
    assert "0.9000\t0.9600" in rows.nth(0).inner_text()


def test_bad_weights_show_a_readable_error(site, page):
    url, _ = site
    page.goto(url + "/tasks/toy?all=1&weights=accuracy=heavy")
    alert = page.locator("[role=alert]")
    assert "accuracy" in alert.inner_text()
    assert page.locator("#leaderboard tbody tr").count() == 2


def test_submission_timeline_updates_live(site, page):
    url, token = site
    headers = {"Authorization": f"Bearer {token}"}
    created = httpx.post(
        f"{url}/api/v1/submissions",
        data={"task": "toy", "name": "live"},
        files={"file": ("m.tar.gz", b"bundle bytes")},
        headers=headers,
    )
    assert created.status_code == 201, created.text
    sub_id = created.json()["id"]
    page.goto(f"{url}/submissions/{sub_id}")
    assert page.locator("#status").inner_text() == "uploaded"
    assert page.locator("#timeline li").count() == 1
    # The page polls the events API: a cancel made elsewhere appears without a manual reload.
    httpx.post(f"{url}/api/v1/submissions/{sub_id}/cancel", headers=headers).raise_for_status()
    page.wait_for_function(
        "document.querySelector('#status').textContent === 'cancelled'", timeout=10_000
    )
    page.wait_for_selector("#timeline li >> nth=1")
    assert "cancelled by ada" in page.locator("#timeline").inner_text()


def test_unknown_pages_answer_404(site):
    url, _ = site
    assert httpx.get(f"{url}/tasks/nope").status_code == 404
    assert httpx.get(f"{url}/submissions/{'0' * 32}").status_code == 404


def test_docs_and_pages_render_with_every_outside_request_blocked(site, page):
    url, _ = site
    blocked: list[str] = []

    def only_this_site(route):
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    page.route("**/*", only_this_site)
    page.goto(url + "/docs")
    # Swagger UI drew the API's operations from /openapi.json with its own, local assets.
    page.wait_for_selector(".opblock", timeout=15_000)
    assert page.locator(".opblock-summary-path", has_text="/api/v1/submissions").count() >= 1
    assert page.locator(".swagger-ui .info .title").inner_text().startswith("Weighbridge")
    for path in ("/", "/tasks/toy", "/no/such/page"):
        page.goto(url + path)
        assert page.locator("header nav").is_visible(), path
    assert blocked == []
