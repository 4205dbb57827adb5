"""The submission and benchmark pages in headless Chromium, against a real `weighbridge serve
api`: a running submission's page follows it to done through its event stream without a
reload, while the test moves it on in the database; a benchmark history's chart shows the
alert a regression raised. Each test saves a screenshot under its tmp_path."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa

from core.accounts import create_user
from core.context import start_services
from core.db import Database
from core.models import Run, Score, Submission, Task
from core.states import RunStatus, Status, move_run, record_event, transition
from scheduler.histories import record_done_benchmarks
from tests.conftest import make_settings
from tests.scheduler.conftest import make_owner
from tests.scheduler.test_histories import STEP_AT, step_history
from tests.web.conftest import serve_api
from tests.web.test_pages import CHROMIUM, FLAGS

T = TypeVar("T")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="Debian's chromium is not installed (apt-get install chromium)",
)


def in_thread(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to its end on a thread of its own (Playwright's sync API holds an
    event loop on the test's thread)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    """`weighbridge serve api` on SQLite; yields its URL, home and database URL."""
    home = tmp_path_factory.mktemp("web-live")
    with serve_api(home) as url:
        yield url, home, f"sqlite+aiosqlite:///{home / 'weighbridge.db'}"


@pytest.fixture
def page():
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser.new_page()
        browser.close()


async def _running_submission(db_url: str) -> str:
    """A model of the toy task being evaluated: both datasets' runs queued."""
    db = Database(db_url)
    async with db.session() as session:
        user, _ = await create_user(session, "ada", email="ada@example.org")
        task = await session.scalar(sa.select(Task).where(Task.slug == "toy"))
        assert task is not None and user.id is not None
        s = Submission(task_id=task.id, user_id=user.id, name="live-one", status="evaluating")
        session.add(s)
        await session.flush()
        record_event(session, s, "status.evaluating", service="evaluator", status="evaluating")
        for name in ("examples", "test"):
            session.add(Run(submission_id=s.id, name=name, status="queued"))
        sub_id = s.id
    await db.dispose()
    return sub_id


async def _start_runs(db_url: str, sub_id: str) -> None:
    db = Database(db_url)
    async with db.session() as session:
        s = await session.get(Submission, sub_id)
        assert s is not None
        for run in await session.scalars(sa.select(Run).where(Run.submission_id == sub_id)):
            move_run(run, RunStatus.RUNNING)
        record_event(session, s, "dataset.started", service="evaluator", message="examples, test")
    await db.dispose()


async def _finish(db_url: str, sub_id: str) -> None:
    db = Database(db_url)
    async with db.session() as session:
        s = await session.get(Submission, sub_id)
        assert s is not None
        for run in await session.scalars(sa.select(Run).where(Run.submission_id == sub_id)):
            move_run(run, RunStatus.DONE)
            run.summary = {"performance": {"examples_per_second": 2500.0}}
        for dataset in ("examples", "test"):
            session.add(
                Score(
                    submission_id=sub_id,
                    dataset=dataset,
                    metric="accuracy",
                    value=0.91,
                    ci_low=0.88,
                    ci_high=0.94,
                )
            )
        transition(session, s, Status.DONE, service="evaluator", message="scored")
        record_event(
            session,
            s,
            "receipt",
            service="evaluator",
            message="receipt",
            payload={"bundle_sha256": "e" * 64, "mar_sha256": "f" * 64, "runner": "local"},
        )
    await db.dispose()


def test_a_running_submissions_page_follows_it_to_done_without_a_reload(site, page, tmp_path):
    url, _, db_url = site
    sub_id = in_thread(_running_submission(db_url))
    page.goto(f"{url}/submissions/{sub_id}")
    assert page.locator("#status").inner_text() == "evaluating"
    assert page.locator("#runs .status").all_inner_texts() == ["queued", "queued"]
    # A reload would lose this: it must still be there at the end.
    page.evaluate("window.__stayed = 'no reload'")
    events_before = page.locator("#timeline li").count()

    in_thread(_start_runs(db_url, sub_id))
    page.wait_for_function(
        "[...document.querySelectorAll('#runs .status')].every(e => e.textContent === 'running')",
        timeout=15_000,
    )
    in_thread(_finish(db_url, sub_id))
    page.wait_for_function(
        "document.querySelector('#status').textContent === 'done'", timeout=15_000
    )
    page.wait_for_selector("#receipt", timeout=15_000)
    page.screenshot(path=str(tmp_path / "submission-live-done.png"), full_page=True)
    assert page.evaluate("window.__stayed") == "no reload"
    assert page.locator("#runs .status").all_inner_texts() == ["done", "done"]
    assert "0.9100" in page.locator("#scores").inner_text()
    assert "0.8800 \u2013 0.9400" in page.locator("#scores").inner_text()
    assert "2,500" in page.locator("#performance").inner_text()
    assert page.locator("#timeline li").count() >= events_before + 3
    assert "e" * 64 in page.locator("#receipt").inner_text()


async def _history(home: Path, db_url: str) -> list[str]:
    services = await start_services(
        make_settings(home.parent, db_url, home=home), migrate=False, sync=False
    )
    try:
        owner = await make_owner(services, name="grace")
        ids = await step_history(services, owner=owner)
        await record_done_benchmarks(services)
        return ids
    finally:
        await services.close()


def test_a_benchmark_history_chart_shows_the_injected_alert(site, page, tmp_path):
    url, home, db_url = site
    ids = in_thread(_history(home, db_url))
    page.goto(f"{url}/benchmarks/history/tiny")
    chart = page.locator("figure.history svg")
    assert chart.count() == 1
    assert chart.locator("circle.point").count() == len(ids)
    marker = chart.locator("path.alert-marker")
    assert marker.count() == 1
    assert marker.get_attribute("data-kind") == "fired"
    assert "alert: elapsed moved to" in marker.locator("title").text_content()
    assert marker.is_visible()
    page.screenshot(path=str(tmp_path / "benchmark-history-alert.png"), full_page=True)
    # The marker's run is the run of the step, linked from the alerts table.
    page.click(f"table.alerts a[href='/benchmarks/{ids[STEP_AT]}']")
    page.wait_for_selector("#bench-runs")
    assert page.locator("h1").count() == 1
