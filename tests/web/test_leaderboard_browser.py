"""The home page and a task leaderboard in headless Chromium (Debian's, driven by Playwright):
seeded models ranked, a weight change that reorders the board and stays in the address, the
CSV export equal to the table, sorting from the keyboard, the per-dataset columns, a phone.
Each test saves a screenshot in its own output folder (tmp_path)."""

from __future__ import annotations

import asyncio
import csv
import io
import shutil
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

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

# (owner, model, accuracy on the hidden set, macro-F1, marks): `accurate` leads with the task's
# weights (accuracy 4, macro_f1 1); a heavy macro_f1 weight puts `balanced` first.
MODELS = [
    ("ada", "accurate", 0.95, 0.52, {}),
    ("ada", "accurate-v0", 0.80, 0.45, {}),
    ("bob", "balanced", 0.90, 0.97, {"flagged": True, "flag_reason": "same weights as v2"}),
    ("cyd", "cheap", 0.70, 0.66, {}),
    ("org", "majority-class", 0.51, 0.34, {"baseline": True}),
]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    """`weighbridge serve api` on SQLite with the fixture task `toy` and the seeded models."""
    home = tmp_path_factory.mktemp("board")
    with serve_api(home) as url:
        asyncio.run(_seed(f"sqlite+aiosqlite:///{home / 'weighbridge.db'}"))
        yield url


async def _seed(url: str) -> None:
    db = Database(url)
    async with db.session() as session:
        task = (await session.execute(Task.__table__.select().where(Task.slug == "toy"))).first()
        users = {}
        for owner in dict.fromkeys(m[0] for m in MODELS):
            users[owner], _ = await create_user(session, owner, email=f"{owner}@example.org")
        for owner, name, acc, f1, marks in MODELS:
            s = Submission(
                task_id=task.id, user_id=users[owner].id, name=name, status="done", **marks
            )
            session.add(s)
            await session.flush()
            for metric, value in (("accuracy", acc), ("macro_f1", f1)):
                session.add(
                    Score(
                        submission_id=s.id,
                        dataset="test",
                        metric=metric,
                        value=value,
                        ci_low=value - 0.02,
                        ci_high=value + 0.02,
                    )
                )
        # What the background loop of `up` / `serve scheduler` does after a change.
        await rebuild_leaderboard(session, await session.get(Task, task.id), storage=None)
    await db.dispose()


@pytest.fixture
def browser():
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    return browser.new_page(viewport={"width": 1280, "height": 900})


def models_shown(page) -> list[str]:
    return page.locator("#leaderboard tbody tr td:nth-child(2) a").all_inner_texts()


def test_home_page_shows_each_task_with_its_leader_and_how_to_take_part(site, page, tmp_path):
    page.goto(site + "/")
    assert page.locator("h1").count() == 1
    card = page.locator("[data-task-card=toy]")
    assert card.locator(".leader").inner_text() == "accurate by ada"
    assert card.locator(".models").inner_text() == "5"
    assert "UTC" in card.locator(".activity").inner_text()
    assert page.locator("#take-part").is_visible()
    assert page.locator("#alerts").inner_text().count("No benchmark has raised an alert") == 1
    page.screenshot(path=str(tmp_path / "home.png"), full_page=True)
    card.locator("a[data-task=toy]").click()
    page.wait_for_url("**/tasks/toy")
    assert page.locator("h1").inner_text() == "Toy classification"


def test_leaderboard_ranks_the_seeded_models_with_marks_legend_and_dataset_columns(
    site, page, tmp_path
):
    page.goto(site + "/tasks/toy")
    # Each owner's best by default (ada's older model left out), the baseline marked.
    assert models_shown(page) == ["accurate", "balanced", "cheap", "majority-class"]
    rows = page.locator("#leaderboard tbody tr")
    assert "⚑ flagged: same weights as v2" in rows.nth(1).inner_text()
    assert "baseline" in rows.nth(3).locator(".mark").inner_text()
    legend = page.locator("#legend").inner_text()
    assert "≈" in legend and "95% CI (low, high): the 95% bootstrap interval of accuracy" in legend
    assert page.locator(".explain-short").is_visible()
    # The per-dataset columns are collapsed until asked for (a checkbox: no script needed).
    dataset_header = page.locator("#leaderboard thead th[data-key='test/accuracy']")
    assert not dataset_header.is_visible()
    page.get_by_label("Show the columns per dataset").check()
    assert dataset_header.is_visible()
    assert rows.nth(0).locator("td").last.is_visible()
    page.click("#toggle-all")
    page.wait_for_url("**/tasks/toy?all=1")
    assert models_shown(page) == ["accurate", "balanced", "accurate-v0", "cheap", "majority-class"]
    page.screenshot(path=str(tmp_path / "leaderboard.png"), full_page=True)


def test_a_weight_change_reorders_the_board_and_the_address_keeps_it(site, browser, page, tmp_path):
    page.goto(site + "/tasks/toy")
    assert models_shown(page)[0] == "accurate"
    page.get_by_label("Weights").fill("accuracy=1,macro_f1=10")
    page.get_by_role("button", name="Re-rank").click()
    page.wait_for_url("**weights=*")
    assert parse_qs(urlsplit(page.url).query)["weights"] == ["accuracy=1,macro_f1=10"]
    assert models_shown(page)[0] == "balanced"
    page.screenshot(path=str(tmp_path / "reweighted.png"), full_page=True)
    # The address is the view: opened again (shared), it shows the same order.
    shared = page.url
    other = browser.new_page()
    other.goto(shared)
    assert models_shown(other) == models_shown(page)
    assert other.get_by_label("Weights").input_value() == "accuracy=1,macro_f1=10"


def test_the_csv_export_equals_the_table(site, page, tmp_path):
    page.goto(site + "/tasks/toy?all=1&weights=accuracy%3D2%2Cmacro_f1%3D1")
    page.get_by_label("Show the columns per dataset").check()
    page.screenshot(path=str(tmp_path / "table.png"), full_page=True)
    headers = page.locator("#leaderboard thead th").evaluate_all(
        "ths => ths.map(th => th.dataset.key)"
    )
    table = page.locator("#leaderboard tbody tr").evaluate_all(
        "trs => trs.map(tr => Array.from(tr.cells).map(td => td.innerText.trim()))"
    )
    href = page.locator("#export-csv").get_attribute("href")
    assert href is not None and "weights=" in href and "all=1" in href
    response = page.request.get(site + href)
    assert response.ok and response.headers["content-type"].startswith("text/csv")
    records = list(csv.DictReader(io.StringIO(response.text())))
    assert len(records) == len(table) == 5
    for record, cells in zip(records, table, strict=True):
        shown = dict(zip(headers, cells, strict=True))
        assert shown["rank"].split()[0] == record["rank"]
        assert shown["model"].split()[0] == record["model"]
        assert shown["owner"] == record["owner"]
        assert shown["submitted"] == record["submitted"][:10]
        for key in headers[4:]:
            assert shown[key] == f"{float(record[key]):.4f}", key


def test_columns_sort_from_the_keyboard_and_the_page_fits_a_phone(site, browser, tmp_path):
    phone = browser.new_page(viewport={"width": 375, "height": 740}, is_mobile=True)
    phone.goto(site + "/tasks/toy?all=1")
    # The page itself does not scroll sideways: the wide table scrolls in its own box.
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, width
    assert phone.locator("h1").is_visible() and phone.get_by_label("Weights").is_visible()
    phone.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
    # Sort by model name with the keyboard only: tab to the header's button, press Enter.
    sort = phone.get_by_role("button", name="Sort by Model")
    sort.focus()
    phone.keyboard.press("Enter")
    names = models_shown(phone)
    assert names == sorted(names, key=str.lower)
    assert phone.locator("th[data-key=model]").get_attribute("aria-sort") == "ascending"
    phone.keyboard.press("Enter")
    assert models_shown(phone) == sorted(names, key=str.lower, reverse=True)
    phone.screenshot(path=str(tmp_path / "phone-sorted.png"), full_page=True)
