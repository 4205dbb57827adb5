"""The whole loop on each database: upload two real models through the API, build, evaluate
on the hidden sets, rank, email — with the real workers running as they do in `up`."""

from __future__ import annotations

import asyncio
import email
import io
import json
import tarfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from api.app import create_app
from builder.worker import run_builder
from core.accounts import create_user
from core.boards import run_leaderboards
from core.context import start_services
from core.datasets import prepare_datasets
from core.models import new_id
from core.notifications import run_mailer
from core.outbox import relay_forever
from core.settings import Settings
from evaluator.worker import run_evaluator
from tests.conftest import ROOT, make_settings
from tests.notifications.test_mailer_contract import from_moto

pytestmark = pytest.mark.slow


def pack(folder: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(folder.iterdir()):
            if path.is_file():
                tar.add(path, arcname=path.name)
    return buf.getvalue()


async def wait_done(client: httpx.AsyncClient, ids: list[str], *, seconds: float = 240) -> dict:
    async def poll() -> dict:
        while True:
            states = {i: (await client.get(f"/api/v1/submissions/{i}")).json() for i in ids}
            if all(s["status"] in ("done", "failed", "cancelled") for s in states.values()):
                return states
            await asyncio.sleep(0.2)

    async with asyncio.timeout(seconds):
        return await poll()


async def wait_for_emails(outbox: Path, count: int, *, seconds: float = 30) -> list[Path]:
    async def poll() -> list[Path]:
        while True:
            files = await asyncio.to_thread(lambda: sorted(outbox.glob("*.eml")))
            if len(files) >= count:
                return files
            await asyncio.sleep(0.2)

    async with asyncio.timeout(seconds):
        return await poll()


async def test_two_models_are_built_evaluated_ranked_and_emailed(
    tmp_path: Path, database_url: str, db, trained: dict
):
    settings = make_settings(
        tmp_path, database_url, task_configs=ROOT / "task_configs", lease_seconds=30.0
    )

    async def emailed() -> None:
        # One email per model, delivered from the outbox as files.
        files = await wait_for_emails(settings.home / "outbox", 2)
        check_emails([p.read_bytes() for p in files])

    await pipeline(settings, trained, emailed)


async def test_the_whole_loop_on_s3_sqs_and_ses(
    tmp_path: Path, database_url: str, db, trained: dict, moto_url: str
):
    """The same loop with every AWS backend on moto's server over HTTP: bundles, builds,
    datasets and results on S3, the queues on SQS (staged in the outbox, relayed after
    commit), the emails through SES (read back from moto); the local builder and runner."""
    if not database_url.startswith("sqlite"):
        pytest.skip("the AWS loop runs once, on SQLite (the databases have their own loop)")
    import boto3

    bucket = f"wb-{new_id()[:12]}"
    boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1").create_bucket(Bucket=bucket)
    settings = make_settings(
        tmp_path,
        database_url,
        task_configs=ROOT / "task_configs",
        lease_seconds=30.0,
        storage_url=f"s3://{bucket}/loop",
        queue_url=f"sqs://?prefix=t{new_id()[:8]}-&wait=1",
        email_url="ses://",
        aws_endpoint_url=moto_url,
        email_from="Weighbridge <noreply@example.org>",
    )
    ses = boto3.client("sesv2", endpoint_url=moto_url, region_name="us-east-1")
    ses.create_email_identity(EmailIdentity="noreply@example.org")

    async def stored_and_emailed() -> None:
        s3 = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1")
        listed = s3.list_objects_v2(Bucket=bucket, Prefix="loop/submissions/")
        keys = [o["Key"] for o in listed.get("Contents", [])]
        assert sum(k.endswith("/build/model.mar") for k in keys) == 2
        assert sum(k.endswith("/results/heldout/predictions.jsonl") for k in keys) == 2
        # The emails went through SES (moto keeps what it was sent).
        raw: list[bytes] = []
        async with asyncio.timeout(30):
            while len(raw) < 2:
                raw = await asyncio.to_thread(sent_since)
                await asyncio.sleep(0.2)
        check_emails(raw)

    sent_since = from_moto(moto_url)
    await pipeline(settings, trained, stored_and_emailed)


def check_emails(raw: list[bytes]) -> None:
    messages = [email.message_from_bytes(r) for r in raw]
    subjects = sorted(m["Subject"] for m in messages)
    assert len(messages) == 2, subjects
    assert any("digits-cnn" in s and "rank 1 of 2" in s for s in subjects), subjects
    assert any("digits-linear" in s for s in subjects), subjects
    assert all(m["To"] == "ada@example.org" for m in messages)


async def pipeline(settings: Settings, trained: dict, then: Callable[[], Awaitable[None]]) -> None:
    """Upload the two example models, wait until they are done and ranked, check the
    results and the board, then `then` (with the workers still running)."""
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
            asyncio.create_task(run_mailer(services, stop)),
            asyncio.create_task(run_leaderboards(services, stop, poll_seconds=0.1)),
            # Messages staged for a transport outside the database are relayed after commit.
            asyncio.create_task(relay_forever(services.outbox, stop, every=0.2)),
        ]
        transport = httpx.ASGITransport(app=create_app(services))
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", headers=headers, timeout=60
        ) as client:
            ids = {}
            for name in ("digits-linear", "digits-cnn"):
                response = await client.post(
                    "/api/v1/submissions",
                    data={"task": "digits", "name": name},
                    files={"file": (f"{name}.tar.gz", pack(trained[name].folder))},
                )
                assert response.status_code == 201, response.text
                ids[name] = response.json()["id"]
            states = await wait_done(client, list(ids.values()))
            for name, sid in ids.items():
                assert states[sid]["status"] == "done", (name, states[sid]["error"])
                statuses = [e["status"] for e in states[sid]["events"] if e["status"]]
                assert statuses == ["uploaded", "building", "built", "evaluating", "done"]
                assert {r["name"]: r["status"] for r in states[sid]["runs"]} == {
                    "heldout": "done",
                    "heldout-noisy": "done",
                }
                assert any(e["type"] == "receipt" for e in states[sid]["events"])
                key = f"submissions/{sid}/results/heldout/result.json"
                result = json.loads(await services.storage.read_bytes(key))
                # digits.toml's eval.max_concurrent_transforms: two handler workers shared it
                assert result["worker"]["workers"] == 2
                assert (
                    result["n_examples"] == 450 and result["performance"]["examples_per_second"] > 0
                )

            results = {
                n: (await client.get(f"/api/v1/submissions/{i}/results")).json()
                for n, i in ids.items()
            }
            for body in results.values():
                assert set(body) >= {"id", "status", "scores", "runs"}
                accuracy = {
                    s["dataset"]: s["value"] for s in body["scores"] if s["metric"] == "accuracy"
                }
                assert set(accuracy) == {"heldout", "heldout-noisy"}
                for s in body["scores"]:
                    assert {"dataset", "metric", "value"} <= set(s)
                    if s["metric"] == "accuracy":
                        assert s["ci_low"] <= s["value"] <= s["ci_high"]
            linear = results["digits-linear"]["scores"]
            cnn = results["digits-cnn"]["scores"]

            def acc(scores: list[dict]) -> float:
                return next(
                    s["value"]
                    for s in scores
                    if s["metric"] == "accuracy" and s["dataset"] == "heldout"
                )

            # Real scores: both models are well above chance (0.1), the CNN clearly better.
            assert 0.8 < acc(linear) < acc(cnn) <= 1.0

            # The stored board is rebuilt in the background after each submission is done.
            async with asyncio.timeout(30):
                while True:
                    board = (await client.get("/api/v1/tasks/digits/leaderboard")).json()
                    if len(board["rows"]) == 2 and not board["board"]["stale"]:
                        break
                    await asyncio.sleep(0.1)
            assert board["task"] == "digits"
            assert [r["model"] for r in board["rows"]] == ["digits-cnn", "digits-linear"]
            for rank, row in enumerate(board["rows"], start=1):
                assert row["rank"] == rank
                assert {"rank", "model", "submission_id", "score", "metrics"} <= set(row)
                assert set(row["metrics"]) >= {"accuracy", "macro_f1", "robustness"}
                assert 0.5 < row["metrics"]["robustness"] <= 1.0
            assert board["rows"][0]["submission_id"] == ids["digits-cnn"]
        await then()
    finally:
        stop.set()
        await asyncio.gather(*workers, return_exceptions=True)
        await services.close()
