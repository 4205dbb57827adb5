"""Remote evaluator workers: a worker holding only a worker token completes a submission over
the HTTP API (presigned links, signed reports) and the scores equal the local runner's; a
cancelled submission stops its worker; the worker's module needs no database."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlmodel import col

from api.app import create_app
from core.aws import AwsClients
from core.context import Services, start_services
from core.db import Database
from core.models import RemoteJob, Submission
from core.settings import Settings
from core.submissions import list_scores
from core.worker_tokens import create_worker_token
from evaluator.remote_worker import RemoteWorker, WorkerRefused
from tests.conftest import ROOT, make_settings
from tests.evaluator.factories import (
    FLEET,
    events_of,
    get_submission,
    make_built_submission,
    make_user,
    store_dataset,
    toy_rows,
    wait_for,
    wait_terminal,
)
from tests.evaluator.models import pack_mar, write_folder
from tests.evaluator.test_worker import evaluator

# Right on about half the examples, so the scores (and their intervals) say something.
HALF_RIGHT = """
def handle(data, context):
    if data is None:
        return None
    return [{"label": (item["body"]["x"] // 3) % 2} for item in data]
"""
SLOW = """
import time


def handle(data, context):
    if data is None:
        return None
    time.sleep(30)
    return [{"label": 0} for item in data]
"""
TASK_METRICS = {"accuracy", "macro_f1"}


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    # The API's presigned links point at the in-process app the worker talks to.
    return make_settings(
        tmp_path, database_url, public_url="http://testserver", worker_lease_seconds=3.0
    )


@asynccontextmanager
async def remote_worker(
    services: Services,
    tmp_path: Path,
    *,
    fleet: str = FLEET,
    labels: Path | None = None,
    envs: Path | None = None,
) -> AsyncIterator[RemoteWorker]:
    """A worker of `fleet` with a fresh worker token, talking HTTP to the API app; it is given
    nothing of the services but the URL and the token (and its own envs folder)."""
    async with services.db.session() as session:
        _row, token = await create_worker_token(session, fleet=fleet, fleets=[fleet])
    transport = httpx.ASGITransport(app=create_app(services))
    client = httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=60)
    worker = RemoteWorker(
        "http://testserver",
        token,
        fleet,
        client=client,
        labels=labels,
        envs=envs or tmp_path / "worker-envs",
    )
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
        await worker.close()


async def task_scores(services: Services, sid: str) -> dict[tuple[str, str], tuple]:
    async with services.db.session() as session:
        return {
            (s.dataset, s.metric): (s.value, s.ci_low, s.ci_high, s.n_examples)
            for s in await list_scores(session, sid)
            if s.metric in TASK_METRICS
        }


async def test_a_remote_worker_completes_a_submission_as_the_local_runner_would(
    services: Services, tmp_path: Path
) -> None:
    rows = toy_rows(40)
    dataset = await store_dataset(services, rows)
    user = await make_user(services)
    mar = pack_mar(write_folder(tmp_path / "model", HALF_RIGHT), tmp_path / "m.mar")

    local_sid, _ = await make_built_submission(services, user, mar, [dataset], name="local")
    async with evaluator(services):
        await wait_terminal(services, [local_sid], within=90)

    services.settings.runner = "remote"  # the fleet's evaluator hands the datasets out
    remote_sid, _ = await make_built_submission(services, user, mar, [dataset], name="remote")
    async with evaluator(services), remote_worker(services, tmp_path) as worker:
        await wait_terminal(services, [remote_sid], within=90)
        assert worker.jobs_done == 1

    local = await get_submission(services, local_sid)
    remote = await get_submission(services, remote_sid)
    assert local.status == "done", local.error
    assert remote.status == "done", remote.error
    expected = await task_scores(services, local_sid)
    assert set(expected) == {("test", "accuracy"), ("test", "macro_f1")}
    assert 0.2 < expected[("test", "accuracy")][0] < 0.8
    assert await task_scores(services, remote_sid) == expected

    def results(sid: str) -> str:
        return f"submissions/{sid}/results/test"

    predictions = [
        await services.storage.read_bytes(f"{results(s)}/predictions.jsonl")
        for s in (local_sid, remote_sid)
    ]
    assert predictions[0] == predictions[1]
    result = json.loads(await services.storage.read_bytes(f"{results(remote_sid)}/result.json"))
    assert result["worker"]["remote"]["fleet"] == FLEET
    assert result["worker"]["machine"]["pid"] > 0
    assert result["performance"]["examples_per_second"] > 0
    log = (await services.storage.read_bytes(f"{results(remote_sid)}/log")).decode()
    assert "starting the handler worker" in log  # the run's log, uploaded by the worker
    receipt = [e for e in await events_of(services, remote_sid) if e.type == "receipt"][-1]
    assert receipt.envelope["payload"]["runner"] == "remote"
    async with services.db.session() as session:
        jobs = list(await session.scalars(sa.select(RemoteJob)))
    assert [(j.submission_id, j.status, j.attempts) for j in jobs] == [(remote_sid, "done", 1)]
    # The inputs-only copy was removed once the job ended.
    assert await services.storage.list("remote/") == []


async def test_a_cancelled_submission_stops_its_remote_worker(
    services: Services, tmp_path: Path
) -> None:
    from core.states import cancel

    services.settings.runner = "remote"
    dataset = await store_dataset(services, toy_rows(20))
    user = await make_user(services)
    mar = pack_mar(write_folder(tmp_path / "model", SLOW), tmp_path / "slow.mar")
    sid, _ = await make_built_submission(services, user, mar, [dataset])

    async def claimed() -> bool:
        async with services.db.session() as session:
            return (
                await session.scalar(
                    sa.select(col(RemoteJob.status)).where(col(RemoteJob.submission_id) == sid)
                )
            ) == "claimed"

    async with evaluator(services), remote_worker(services, tmp_path) as worker:
        await wait_for(claimed, within=60)
        async with services.db.session() as session:
            submission = await session.get(Submission, sid)
            assert submission is not None
            await cancel(session, submission, service="test")
        await wait_terminal(services, [sid], within=30)

        async def job_cancelled() -> bool:
            async with services.db.session() as session:
                return (
                    await session.scalar(
                        sa.select(col(RemoteJob.status)).where(col(RemoteJob.submission_id) == sid)
                    )
                ) == "cancelled"

        await wait_for(job_cancelled, within=30)

        # The worker's next heartbeat is refused and it stops the handler (asleep for 30 s)
        # at once: it is idle again well before the handler would have answered.
        async def idle() -> bool:
            return worker.current is None

        await wait_for(idle, within=15)
        assert worker.jobs_done == 0
    assert (await get_submission(services, sid)).status == "cancelled"


async def test_a_worker_started_for_another_fleet_is_refused(
    services: Services, tmp_path: Path
) -> None:
    async with services.db.session() as session:
        _row, token = await create_worker_token(session, fleet="south", fleets=["south"])
    transport = httpx.ASGITransport(app=create_app(services))
    client = httpx.AsyncClient(transport=transport, base_url="http://testserver")
    worker = RemoteWorker("http://testserver", token, FLEET, client=client)
    try:
        assert await worker.claim() is None  # no job waits: nothing to tell yet
        user_token = "wb_not-a-worker-token"
        refused = RemoteWorker("http://testserver", user_token, FLEET, client=client)
        with pytest.raises(WorkerRefused, match="worker token"):
            await refused.claim()
    finally:
        await worker.close()


def test_the_worker_module_needs_no_database() -> None:
    """A remote worker holds no database credentials; its code does not even load a driver."""
    code = (
        "import sys, evaluator.remote_worker; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('sqlalchemy', 'sqlmodel', 'asyncpg', 'aiomysql', 'aiosqlite', 'aioboto3') "
        "or m in ('core.db', 'core.models')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_serve_evaluator_with_api_and_token_runs_a_fleets_jobs(tmp_path: Path) -> None:
    """The processes an operator runs: `serve api`, `serve builder`, the fleet's evaluator with
    WEIGHBRIDGE_RUNNER=remote, and on "another machine" `serve evaluator --api --token --fleet`
    with its own empty home: no database URL, no storage, only the worker token."""
    from tests.cli.conftest import WEIGHBRIDGE, clean_env, free_port
    from tests.e2e.stack import (
        create_token,
        stack_env,
        start,
        stop,
        tail,
        upload,
        wait_healthy,
        wait_settled,
        write_task,
    )

    configs = tmp_path / "task_configs"
    write_task(configs, "toy", fleet=FLEET)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = stack_env(tmp_path, configs, url)
    remote_env = {**env, "WEIGHBRIDGE_RUNNER": "remote", "WEIGHBRIDGE_WORKER_LEASE_SECONDS": "6"}
    worker_home = tmp_path / "elsewhere"
    worker_env = clean_env(worker_home, WEIGHBRIDGE_TASK_CONFIGS=str(worker_home / "none"))
    logs = {name: tmp_path / f"{name}.log" for name in ("api", "builder", "evaluator", "worker")}
    processes: dict[str, subprocess.Popen] = {}
    try:
        processes["api"] = start(["serve", "api", "--port", str(port)], env, logs["api"])
        wait_healthy(url, processes["api"], logs["api"])
        processes["builder"] = start(["serve", "builder"], env, logs["builder"])
        processes["evaluator"] = start(
            ["serve", "evaluator", "--fleet", FLEET], remote_env, logs["evaluator"]
        )
        made = subprocess.run(
            [WEIGHBRIDGE, "admin", "worker-token", "create", "--fleet", FLEET, "--json"],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=60,
        )
        assert made.returncode == 0, made.stderr
        worker_token = json.loads(made.stdout)["token"]
        worker_home.mkdir()
        processes["worker"] = start(
            ["serve", "evaluator", "--api", url, "--token", worker_token, "--fleet", FLEET],
            worker_env,
            logs["worker"],
        )
        user = create_token(env, tmp_path, "remote")
        sid = upload(url, user, task="toy", name="parity")
        watch = [(processes[name], logs[name]) for name in processes]
        state = wait_settled(url, user, [sid], timeout=120, watch=watch)[sid]
        results = httpx.get(
            f"{url}/api/v1/submissions/{sid}/results",
            headers={"Authorization": f"Bearer {user}"},
            timeout=30,
        ).json()
    finally:
        for process in processes.values():
            stop(process)
    assert state["status"] == "done", (
        state["error"],
        tail(logs["worker"]),
        tail(logs["evaluator"]),
    )
    accuracy = [s for s in results["scores"] if s["metric"] == "accuracy"]
    assert accuracy and all(s["value"] == 1.0 for s in accuracy)
    assert "job" in logs["worker"].read_text() and "done" in logs["worker"].read_text()
    # The worker made nothing of a server's in its home: no database, no storage folder.
    assert not (worker_home / "home" / "weighbridge.db").exists()
    assert not (worker_home / "home" / "storage").exists()


def held_by_workers(services: Services, labels_sha256: str = "") -> None:
    """The toy task with its `test` labels held by the organiser's workers."""
    task = services.tasks["toy"]
    datasets = [
        d.model_copy(update={"labels": "worker", "labels_sha256": labels_sha256})
        if d.name == "test"
        else d
        for d in task.datasets
    ]
    services.tasks["toy"] = task.model_copy(update={"datasets": datasets})


async def test_an_organisers_worker_scores_with_the_labels_it_keeps(
    services: Services, tmp_path: Path
) -> None:
    """The server stores the dataset without labels; the worker started with --labels holds
    them, scores there and sends back only scores, which equal the local runner's."""
    rows = toy_rows(40)
    user = await make_user(services)
    mar = pack_mar(write_folder(tmp_path / "model", HALF_RIGHT), tmp_path / "m.mar")
    labelled = await store_dataset(services, rows)
    local_sid, _ = await make_built_submission(services, user, mar, [labelled], name="local")
    async with evaluator(services):
        await wait_terminal(services, [local_sid], within=90)

    labels_file = tmp_path / "labels" / "toy" / "test.jsonl"
    labels_file.parent.mkdir(parents=True)
    labels_file.write_text(
        "".join(json.dumps({"uid": r["uid"], "label": r["label"]}) + "\n" for r in rows)
    )
    sha = hashlib.sha256(labels_file.read_bytes()).hexdigest()
    held_by_workers(services, sha)
    services.settings.runner = "remote"
    unlabelled = await store_dataset(
        services, [{"uid": r["uid"], "x": r["x"]} for r in rows], name="test"
    )
    remote_sid, _ = await make_built_submission(services, user, mar, [unlabelled], name="remote")
    async with evaluator(services), remote_worker(services, tmp_path, labels=tmp_path / "labels"):
        await wait_terminal(services, [remote_sid], within=90)

    remote = await get_submission(services, remote_sid)
    assert remote.status == "done", remote.error
    expected = await task_scores(services, local_sid)
    assert 0.2 < expected[("test", "accuracy")][0] < 0.8
    assert await task_scores(services, remote_sid) == expected
    async with services.db.session() as session:
        job = await session.scalar(sa.select(RemoteJob))
    assert job is not None and job.spec["dataset"]["labels"] == "worker"
    assert job.result is not None and {s["metric"] for s in job.result["scores"]} == TASK_METRICS
    # What came back is scores and the run's description: no labels.
    assert set(job.result) <= {"performance", "timings", "worker", "scores", "error"}
    assert "label" not in json.dumps(job.result["scores"])


def test_held_labels_are_declared_on_a_hidden_dataset_and_kept_out_of_its_rows() -> None:
    from core.datasets import DatasetError, _check_rows
    from core.taskconfig import TaskConfig

    base = {
        "slug": "t",
        "name": "T",
        "input_fields": ["x"],
        "output_fields": {"label": "int"},
        "metrics": [{"name": "accuracy"}],
    }

    def task(**dataset: object) -> TaskConfig:
        return TaskConfig.model_validate(
            {**base, "datasets": [{"name": "d", "source": "generator:toy", **dataset}]}
        )

    with pytest.raises(ValueError, match="only a hidden dataset's labels"):
        task(labels="worker", access="public")
    with pytest.raises(ValueError, match='set only with labels = "worker"'):
        task(labels_sha256="a" * 64)
    held = task(labels="worker", labels_sha256="a" * 64)
    _check_rows([{"uid": 1, "x": 3}], held, held.datasets[0])
    with pytest.raises(DatasetError, match="held by the remote workers"):
        _check_rows([{"uid": 1, "x": 3, "label": 1}], held, held.datasets[0])


async def test_held_labels_need_the_workers_labels_and_the_remote_runner(
    services: Services, tmp_path: Path
) -> None:
    held_by_workers(services)
    rows = [{"uid": r["uid"], "x": r["x"]} for r in toy_rows(20)]
    user = await make_user(services)
    mar = pack_mar(write_folder(tmp_path / "model", HALF_RIGHT), tmp_path / "m.mar")
    # The local runner has no labels to score with: it says which runner the fleet needs.
    dataset = await store_dataset(services, rows)
    local_sid, _ = await make_built_submission(services, user, mar, [dataset], name="local")
    async with evaluator(services):
        await wait_terminal(services, [local_sid], within=90)
    local = await get_submission(services, local_sid)
    assert local.status == "failed"
    assert "WEIGHBRIDGE_RUNNER=remote" in (local.error or "")

    # A worker started without --labels fails the job, saying so.
    services.settings.runner = "remote"
    remote_sid, _ = await make_built_submission(services, user, mar, [dataset], name="remote")
    async with evaluator(services), remote_worker(services, tmp_path):
        await wait_terminal(services, [remote_sid], within=90)
    remote = await get_submission(services, remote_sid)
    assert remote.status == "failed"
    assert "started without --labels DIR" in (remote.error or "")


@pytest.fixture
async def s3_services(
    tmp_path: Path, database_url: str, db: Database, moto_url: str
) -> AsyncIterator[Services]:
    """Storage on S3 (moto's server over HTTP), the fleet's evaluator on the remote runner."""
    bucket = f"wb-remote-{uuid.uuid4().hex[:12]}"
    clients = AwsClients(endpoint_url=moto_url)
    await (await clients.client("s3")).create_bucket(Bucket=bucket)
    await clients.close()
    settings = make_settings(
        tmp_path,
        database_url,
        storage_url=f"s3://{bucket}/wb",
        aws_endpoint_url=moto_url,
        runner="remote",
        public_url="http://testserver",
    )
    started = await start_services(settings, migrate=False)
    yield started
    await started.close()


async def test_a_remote_worker_reads_and_writes_s3_through_presigned_links_only(
    s3_services: Services, tmp_path: Path
) -> None:
    """On S3 the job's links are S3's own presigned URLs: the worker (no AWS credentials
    used: it only follows the links) downloads the archive and inputs from moto's server and
    PUTs its results there. moto checks neither signatures nor expiry (the folder storage's
    links are checked for both in tests/api/test_worker_api.py)."""
    services = s3_services
    dataset = await store_dataset(services, toy_rows(30))
    user = await make_user(services)
    mar = pack_mar(write_folder(tmp_path / "model", HALF_RIGHT), tmp_path / "m.mar")
    sid, _ = await make_built_submission(services, user, mar, [dataset])
    async with services.db.session() as session:
        _row, token = await create_worker_token(session, fleet=FLEET, fleets=[FLEET])
    app = httpx.ASGITransport(app=create_app(services))
    # The API through the app; anything else (the presigned S3 links) over the network.
    client = httpx.AsyncClient(mounts={"http://testserver": app}, timeout=60)
    seen: list[dict[str, Any]] = []

    class Watching(RemoteWorker):
        async def run_job(self, job: dict[str, Any]) -> None:
            seen.append(job)
            await super().run_job(job)

    worker = Watching("http://testserver", token, FLEET, client=client)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        async with evaluator(services):
            await wait_terminal(services, [sid], within=90)
    finally:
        stop.set()
        await asyncio.wait_for(running, 60)
        await worker.close()

    submission = await get_submission(services, sid)
    assert submission.status == "done", submission.error
    links = [seen[0]["model"]["archive_url"], seen[0]["dataset"]["inputs_url"]]
    links += list(seen[0]["upload"].values())
    assert all(link.startswith(services.settings.aws_endpoint_url or "") for link in links)
    assert all("X-Amz-Signature=" in link and "X-Amz-Expires=900" in link for link in links)
    lines = (
        await services.storage.read_bytes(f"submissions/{sid}/results/test/predictions.jsonl")
    ).splitlines()
    assert len(lines) == 30
    async with services.db.session() as session:
        scores = {s.metric for s in await list_scores(session, sid)}
    assert scores >= TASK_METRICS
    assert await services.storage.list("remote/") == []


async def test_a_broken_handler_fails_the_submission_with_its_reason_and_log(
    services: Services, tmp_path: Path
) -> None:
    """The worker reports the failure the local runner would raise (the reason the owner
    reads) and uploads the run's log, which the evaluator moves to the dataset's results."""
    from tests.evaluator.models import BROKEN

    source, words = BROKEN["exits"]
    services.settings.runner = "remote"
    dataset = await store_dataset(services, toy_rows(20))
    user = await make_user(services)
    mar = pack_mar(write_folder(tmp_path / "model", source), tmp_path / "broken.mar")
    sid, _ = await make_built_submission(services, user, mar, [dataset])
    async with evaluator(services), remote_worker(services, tmp_path) as worker:
        await wait_terminal(services, [sid], within=90)
        assert worker.jobs_done == 0
    submission = await get_submission(services, sid)
    assert submission.status == "failed"
    assert submission.error is not None
    assert "the remote worker (fleet toy-fleet) could not run dataset test" in submission.error
    for word in words:
        assert word in submission.error
    log = (await services.storage.read_bytes(f"submissions/{sid}/results/test/log")).decode()
    assert "[evaluator] failed:" in log
    assert await services.storage.list("remote/") == []


async def test_the_digits_example_answers_the_same_through_a_remote_worker(
    services: Services, tmp_path: Path
) -> None:
    """The runner contract on the shipped digits-linear example and the digits heldout set:
    the remote runner (a job, a worker over HTTP) gives the local runner's answers, uids and
    references, and so the same scores. The digits task has a delta metric (robustness), which
    the worker's view of the task leaves to the evaluator."""
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    from core.datasets import generate_rows
    from core.examples import __file__ as examples_init
    from core.taskconfig import load_task_config
    from evaluator.remote_runner import RemoteRunner
    from evaluator.runner import DatasetSpec, ModelSpec, prediction_values
    from evaluator.runners import LocalRunner
    from evaluator.scoring import score_metrics
    from task_configs import FOLDER

    task = load_task_config(FOLDER / "digits.toml")
    rows = list(generate_rows("digits", {"split": "heldout"}))
    data = b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in rows)
    sha = hashlib.sha256(data).hexdigest()
    await services.storage.write_bytes(f"datasets/{sha}/heldout.jsonl", data)
    dataset = DatasetSpec(name="heldout", key=f"datasets/{sha}/heldout.jsonl", sha256=sha)
    model_dir = tmp_path / "digits-linear"
    shutil.copytree(Path(examples_init).parent / "digits-linear", model_dir)
    model = ModelSpec(model_dir=model_dir, handler="handler.py", manifest={})
    await services.storage.write_file(
        "submissions/remote-1/build/model.mar", pack_mar(model_dir, tmp_path / "digits.mar")
    )

    local = await LocalRunner().run_dataset(
        services.storage,
        submission_id="local-1",
        task=task,
        dataset=dataset,
        model=model,
        scratch=tmp_path / "local",
    )
    async with remote_worker(services, tmp_path, fleet=task.eval.eval_server_id) as worker:
        remote = await RemoteRunner.from_settings(services.settings).run_dataset(
            services.storage,
            submission_id="remote-1",
            task=task,
            dataset=dataset,
            model=model,
            scratch=tmp_path / "remote",
        )
        assert worker.jobs_done == 1

    assert remote.uids == local.uids
    assert remote.answers == local.answers
    assert remote.references == local.references
    with ThreadPoolExecutor(2) as pool:
        scored = [
            await score_metrics(
                pool,
                task.metrics[:2],
                prediction_values(task, run.answers),
                run.references,
                confidence=0.95,
                resamples=50,
            )
            for run in (local, remote)
        ]
    assert scored[0] == scored[1]
    assert scored[1][0]["value"] > 0.85  # the example's documented heldout accuracy is 0.900
