"""Running a finished submission again through the real workers: a real model is uploaded,
built and evaluated, then re-run by its owner; it goes through every stage again as attempt 2,
ends done with the same scores (the same model on the same data), one leaderboard row, and
its owner is emailed for each attempt."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import httpx
import pytest

from api.app import create_app
from builder.worker import run_builder
from core.accounts import create_user
from core.boards import run_leaderboards
from core.context import start_services
from core.datasets import prepare_datasets
from core.notifications import run_mailer
from core.outbox import relay_forever
from evaluator.worker import run_evaluator
from tests.conftest import ROOT, make_settings
from tests.e2e.test_pipeline import pack, wait_done, wait_for_emails

pytestmark = pytest.mark.slow


async def test_a_done_model_runs_again_to_the_same_scores(
    tmp_path: Path, database_url: str, db, trained: dict
) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("one database is enough: re-running uses no backend-specific query")
    configs = tmp_path / "task_configs"
    configs.mkdir()
    shutil.copy(ROOT / "task_configs" / "digits.toml", configs / "digits.toml")
    settings = make_settings(tmp_path, database_url, task_configs=configs, lease_seconds=30.0)
    services = await start_services(settings, migrate=False)
    stop = asyncio.Event()
    workers = []
    try:
        await prepare_datasets(services)
        async with services.db.session() as session:
            _, token = await create_user(session, "ada", email="ada@example.org")
        workers = [
            asyncio.create_task(run_builder(services, stop)),
            asyncio.create_task(run_evaluator(services, ["default"], stop)),
            asyncio.create_task(run_leaderboards(services, stop, poll_seconds=0.1)),
            asyncio.create_task(run_mailer(services, stop)),
            asyncio.create_task(relay_forever(services.outbox, stop, every=0.2)),
        ]
        transport = httpx.ASGITransport(app=create_app(services))
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://test",
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        ) as client:
            created = await client.post(
                "/api/v1/submissions",
                data={"task": "digits", "name": "digits-linear"},
                files={"file": ("m.tar.gz", pack(trained["digits-linear"].folder))},
            )
            assert created.status_code == 201, created.text
            sid = created.json()["id"]
            first = (await wait_done(client, [sid]))[sid]
            assert first["status"] == "done", first["error"]

            async def scores() -> dict:
                body = (await client.get(f"/api/v1/submissions/{sid}/results")).json()
                return {
                    (s["dataset"], s["metric"]): s["value"]
                    for s in body["scores"]
                    if s["metric"] == "accuracy"
                }

            before = await scores()
            assert before
            again = await client.post(f"/api/v1/submissions/{sid}/rerun")
            assert again.status_code == 200, again.text
            second = (await wait_done(client, [sid]))[sid]
            assert second["status"] == "done", second["error"]
            statuses = [e["status"] for e in second["events"] if e["status"]]
            stages = ["uploaded", "building", "built", "evaluating", "done"]
            assert statuses == stages + stages
            assert sum(e["type"] == "receipt" for e in second["events"]) == 2
            assert await scores() == before
            page = (await client.get(f"/submissions/{sid}")).text
            assert "attempt 2" in page
            async with asyncio.timeout(30):
                while True:
                    board = (await client.get("/api/v1/tasks/digits/leaderboard")).json()
                    if board.get("rows"):
                        break
                    await asyncio.sleep(0.2)
            assert [r["submission_id"] for r in board["rows"]] == [sid]
            # Each attempt tells its owner: two emails, one per done.
            emails = await wait_for_emails(settings.home / "outbox", 2)
            assert len(emails) == 2
    finally:
        stop.set()
        await asyncio.gather(*workers, return_exceptions=True)
        await services.close()
