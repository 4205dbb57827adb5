"""A remote evaluator worker: `weighbridge serve evaluator --api URL --token T --fleet F`.

It holds a worker token of one fleet and nothing else: no database, no storage credentials.
It claims that fleet's jobs over the HTTP API, downloads the model archive and the dataset's
inputs (no labels) through the presigned links the job carries, checks both against their
sha256, runs the handler with the local runner's own sandboxed code (evaluator.runner) on a
small folder storage under its scratch, uploads the predictions, the log and result.json
through the job's presigned PUT links, and reports done or failed, each report signed with
the job's secret. A heartbeat every third of the lease keeps the job; a refused heartbeat
(the lease was lost, the submission cancelled) stops the handler at once.

A model with a requirements.txt runs in an environment the worker builds itself, with the
builder's own code (core.environments: pip in the sandbox, network for the package index
only, no secrets), kept under `envs` (`$WEIGHBRIDGE_HOME/envs/<requirements sha256>/`) and
reused by every later job with the same requirements.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

import httpx

from core.environments import ensure_env
from core.errors import JobFailed
from core.processes import BuildLog
from core.report_signatures import SIGNATURE_HEADER, sign_report
from core.storage import LocalStorage
from core.taskconfig import DELTA_METRICS, TaskConfig
from evaluator.archive import extract_mar
from evaluator.runner import (
    DatasetSpec,
    EvaluationCancelled,
    ModelSpec,
    run_dataset,
)
from sandbox.jobs import jobs_root

log = logging.getLogger(__name__)

IDLE_SECONDS = (1.0, 5.0)  # back-off between empty claims: from 1 s, doubling up to 5 s
REQUEST_SECONDS = 60.0
ERROR_CHARS = 4000
ENV_SECONDS = 1800.0  # a build's default limit, when the job names none (BuildConfig's)
PIP_TAIL_CHARS = 1500  # of pip's output, quoted in a failed environment build's reason


class WorkerRefused(Exception):
    """The API refused this worker (a bad, revoked or wrong-fleet token): it stops."""


def task_from_document(doc: dict[str, Any], dataset: str) -> TaskConfig:
    """The task as the job describes it, enough to run the handler (fields and eval)."""
    return TaskConfig.model_validate(
        {
            "slug": doc["slug"],
            "name": doc.get("name") or doc["slug"],
            "input_fields": doc["input_fields"],
            "output_fields": doc["output_fields"],
            "label_field": doc.get("label_field", "label"),
            "datasets": [{"name": dataset, "source": "remote"}],
            # The metrics scored on one dataset (deltas compare two, and are scored there).
            "metrics": doc.get("metric_configs")
            or [{"name": m} for m in doc.get("metrics") or [] if m not in DELTA_METRICS]
            or [{"name": "accuracy"}],
            "eval": doc.get("eval") or {},
        }
    )


def _who() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


class RemoteWorker:
    """Pulls one fleet's jobs from the API at `api` with the worker token `token`."""

    def __init__(
        self,
        api: str,
        token: str,
        fleet: str,
        *,
        client: httpx.AsyncClient | None = None,
        scratch_root: Path | None = None,
        labels: Path | None = None,
        envs: Path | None = None,
    ) -> None:
        self.api = api.rstrip("/")
        self.token = token
        self.fleet = fleet
        self.scratch_root = scratch_root
        # Labels the organiser keeps on this machine: <labels>/<task slug>/<dataset>.jsonl
        # ({"uid", <label field>} lines), for datasets whose labels are held by the workers.
        self.labels = labels
        # The models' environments, one folder per requirements sha256 (safe to delete while
        # the worker is stopped: each is built again when a job needs it).
        self.envs = envs if envs is not None else Path(".weighbridge", "envs").resolve()
        self.client = client or httpx.AsyncClient(timeout=REQUEST_SECONDS)
        self.headers = {"Authorization": f"Bearer {token}"}
        self.jobs_done = 0
        self.current: str | None = None  # the job in hand

    async def close(self) -> None:
        await self.client.aclose()

    # -- the loop --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and run jobs until `stop` is set (a job in hand is finished first)."""
        idle = IDLE_SECONDS[0]
        log.info("remote worker for fleet %s pulling jobs from %s", self.fleet, self.api)
        while not stop.is_set():
            try:
                job = await self.claim()
            except (httpx.TransportError, httpx.HTTPStatusError) as exc:
                # A passing fault (the API restarting, a 5xx): try again after the back-off.
                log.warning("claiming from %s failed (%s); trying again", self.api, exc)
                job = None
            if job is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), idle)
                idle = min(idle * 2, IDLE_SECONDS[1])
                continue
            idle = IDLE_SECONDS[0]
            await self.run_job(job)

    async def claim(self) -> dict[str, Any] | None:
        response = await self.client.post(
            f"{self.api}/api/v1/worker/jobs/claim", headers=self.headers
        )
        if response.status_code == 204:
            return None
        if response.status_code in (401, 403):
            raise WorkerRefused(_message(response))
        response.raise_for_status()
        job = dict(response.json())
        if job.get("fleet") != self.fleet:
            raise WorkerRefused(
                f"this worker token belongs to fleet {job.get('fleet')!r}, not {self.fleet!r}: "
                "start the worker with the token's --fleet"
            )
        return job

    # -- one job ---------------------------------------------------------------------------

    async def run_job(self, job: dict[str, Any]) -> None:
        job_id = self.current = job["job_id"]
        lost = asyncio.Event()
        upload = dict(job["upload"])
        beat = asyncio.create_task(self._heartbeat(job, upload, lost), name=f"heartbeat-{job_id}")
        log.info(
            "job %s: dataset %s of submission %s",
            job_id,
            job["dataset"]["name"],
            job["submission_id"],
        )
        try:
            with tempfile.TemporaryDirectory(
                prefix="remote-", dir=self.scratch_root or jobs_root()
            ) as tmp:
                await self._run_job(job, upload, lost, Path(tmp))
        except EvaluationCancelled:
            log.warning("job %s: the lease was lost or the job was cancelled; stopped", job_id)
        except JobFailed as failure:
            await self._report_failure(job, failure.reason)
        except WorkerRefused:
            raise
        except Exception as exc:  # a bad job must never stop the worker
            log.exception("job %s failed", job_id)
            await self._report_failure(job, f"the remote worker failed: {exc}")
        finally:
            beat.cancel()
            await asyncio.gather(beat, return_exceptions=True)
            self.current = None

    async def _run_job(
        self, job: dict[str, Any], upload: dict[str, str], lost: asyncio.Event, tmp: Path
    ) -> None:
        dataset = job["dataset"]
        name = dataset["name"]
        stage = f"evaluate:{name}"
        archive = tmp / "model.mar"
        await self._download(
            job["model"]["archive_url"], archive, job["model"]["sha256"], stage, "model archive"
        )
        model_dir = tmp / "model"
        model_dir.mkdir()
        manifest = await asyncio.to_thread(extract_mar, archive, model_dir)
        archive.unlink()
        found = manifest.get("model")
        described: dict[str, Any] = found if isinstance(found, dict) else {}
        python = await self.environment(job, upload, tmp, stage)
        model = ModelSpec(
            model_dir=model_dir,
            handler=str(described.get("handler") or job["model"].get("handler") or "handler.py"),
            manifest=manifest,
            python=python,
            name=str(described.get("modelName") or job["model"].get("name") or "model"),
        )
        # The local runner's own code reads its inputs from a storage: a folder under scratch.
        store = LocalStorage(tmp / "store")
        key = f"inputs/{name}.jsonl"
        inputs = store.local_path(key)
        assert inputs is not None
        inputs.parent.mkdir(parents=True, exist_ok=True)
        await self._download(
            dataset["inputs_url"], inputs, dataset["sha256"], stage, "dataset inputs"
        )
        task = task_from_document(job["task"], name)

        async def should_stop() -> bool:
            return lost.is_set()

        try:
            run = await run_dataset(
                store,
                submission_id=job["submission_id"],
                task=task,
                dataset=DatasetSpec(
                    name=name,
                    key=key,
                    sha256=dataset["sha256"],
                    n_examples=dataset.get("n_examples"),
                ),
                model=model,
                scratch=tmp / "scratch",
                should_stop=should_stop,
                server_name=f"weighbridge-remote-{self.fleet}",
            )
        except JobFailed as failure:
            # The owner reads why in the run's log: upload it before reporting the failure.
            if failure.log_key and (path := store.local_path(failure.log_key)) and path.exists():
                with contextlib.suppress(httpx.HTTPError, RuntimeError):
                    await self._put(upload["log_url"], path)
            raise
        if lost.is_set():
            raise EvaluationCancelled(name)
        scores = None
        if dataset.get("labels") == "worker":
            scores = await self.score_here(job, task, run.uids, run.answers)
        for part in ("predictions", "log", "result"):
            path = store.local_path(run.keys[part])
            assert path is not None
            await self._put(upload[f"{part}_url"], path)
        await self.report(
            job,
            "complete",
            {
                "performance": run.performance,
                "timings": run.timings,
                "worker": {**run.worker, "machine": _who()},
                **({"scores": scores} if scores is not None else {}),
            },
        )
        self.jobs_done += 1
        log.info("job %s: done (%d examples)", job["job_id"], run.n_examples)

    async def environment(
        self, job: dict[str, Any], upload: dict[str, str], tmp: Path, stage: str
    ) -> str | None:
        """The interpreter of the model's environment (None: the model needs none), built
        here from its requirements.txt or reused; a build that fails fails the job with pip's
        reason, its log uploaded as the run's log."""
        requirements = job["model"].get("requirements")
        if not requirements:
            return None
        path = tmp / "requirements.txt"
        await self._download(
            requirements["url"], path, requirements["sha256"], stage, "model's requirements.txt"
        )
        job_id = job["job_id"]
        log.info(
            "job %s: the model's environment (requirements sha256 %s…) under %s",
            job_id,
            requirements["sha256"][:12],
            self.envs,
        )
        env_log = _ProgressLog(tmp / "environment.log", job_id)
        try:
            env = await asyncio.to_thread(
                ensure_env,
                path,
                envs_root=self.envs,
                log=env_log,
                timeout=float(requirements.get("timeout_seconds") or ENV_SECONDS),
                verify=True,
            )
        except JobFailed as failure:
            env_log.close()
            with contextlib.suppress(httpx.HTTPError, RuntimeError):
                await self._put(upload["log_url"], env_log.path)
            tail = failure.log_tail.strip()[-PIP_TAIL_CHARS:]
            raise JobFailed(
                stage,
                "the model's environment could not be built from its requirements.txt on this "
                f"worker: {failure.reason}" + (f"\n{tail}" if tail else ""),
            ) from None
        finally:
            env_log.close()
        log.info(
            "job %s: environment %s (%s in %.1f s)",
            job_id,
            env.path,
            "reused" if env.reused else "built",
            env.seconds,
        )
        return str(env.python)

    async def _report_failure(self, job: dict[str, Any], reason: str) -> None:
        """Report the job failed; a report that cannot be sent is logged (the lease then runs
        out and the job goes back to the queue), never the end of the worker."""
        try:
            await self.report(job, "fail", {"error": reason[:ERROR_CHARS], "worker": _who()})
        except httpx.HTTPError as exc:
            log.error("job %s: the failure could not be reported (%s)", job["job_id"], exc)

    async def score_here(
        self, job: dict[str, Any], task: TaskConfig, uids: list[Any], answers: list[Any]
    ) -> list[dict[str, Any]]:
        """The task metrics against the labels this machine holds (they never leave it)."""
        name = job["dataset"]["name"]
        stage = f"evaluate:{name}"
        shown = f"<labels>/{task.slug}/{name}.jsonl"
        if self.labels is None:
            raise JobFailed(
                stage,
                f"dataset {name}'s labels are held by the fleet's workers, and this worker was "
                "started without --labels DIR (the folder holding <task>/<dataset>.jsonl)",
            )
        path = self.labels / task.slug / f"{name}.jsonl"
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except OSError:
            raise JobFailed(stage, f"this worker holds no labels file {shown}") from None
        expected = job["dataset"].get("labels_sha256")
        if expected and hashlib.sha256(data).hexdigest() != expected:
            raise JobFailed(
                stage,
                f"the labels file {shown} on this worker is not the one the task names "
                f"(labels_sha256 {expected})",
            )
        try:
            rows = [json.loads(line) for line in data.splitlines() if line.strip()]
            labels = {row["uid"]: row[task.label_field] for row in rows}
        except (ValueError, KeyError, TypeError) as exc:
            raise JobFailed(
                stage,
                f"the labels file {shown} must hold one {{'uid', {task.label_field!r}}} "
                f"object a line: {type(exc).__name__}: {exc}",
            ) from None
        missing = [uid for uid in uids if uid not in labels]
        if missing:
            raise JobFailed(
                stage,
                f"the labels file {shown} lacks {len(missing)} of the dataset's {len(uids)} uids "
                f"(first: {missing[0]!r})",
            )
        from concurrent.futures import ThreadPoolExecutor

        from evaluator.runner import prediction_values
        from evaluator.scoring import score_metrics

        with ThreadPoolExecutor(max_workers=1) as pool:
            return await score_metrics(
                pool,
                task.metrics,
                prediction_values(task, answers),
                [labels[uid] for uid in uids],
                confidence=task.eval.confidence,
                resamples=task.eval.bootstrap_resamples,
            )

    async def _download(self, url: str, path: Path, sha256: str, stage: str, what: str) -> None:
        digest = hashlib.sha256()
        async with self.client.stream("GET", url) as response:
            if response.status_code != 200:
                await response.aread()
                raise JobFailed(
                    stage,
                    f"the {what} could not be downloaded: HTTP {response.status_code} "
                    f"{_message(response)}",
                )
            with path.open("wb") as fh:
                async for chunk in response.aiter_bytes(1 << 20):
                    digest.update(chunk)
                    fh.write(chunk)
        if digest.hexdigest() != sha256:
            raise JobFailed(stage, f"the {what} downloaded does not match its sha256 {sha256}")

    async def _put(self, url: str, path: Path) -> None:
        body = await asyncio.to_thread(_read_or_empty, path)
        response = await self.client.put(url, content=body)
        if response.status_code not in (200, 201, 204):
            raise RuntimeError(
                f"uploading {path.name} was refused: HTTP {response.status_code} "
                f"{_message(response)}"
            )

    async def report(
        self, job: dict[str, Any], verb: str, payload: dict[str, Any]
    ) -> httpx.Response:
        """A signed POST to the job's `verb` route (heartbeat, complete, fail)."""
        body = json.dumps(payload, sort_keys=True, default=str).encode()
        headers = {
            **self.headers,
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign_report(job["secret"], body),
        }
        response = await self.client.post(
            f"{self.api}/api/v1/worker/jobs/{job['job_id']}/{verb}", content=body, headers=headers
        )
        if verb != "heartbeat" and response.status_code >= 400:
            log.error(
                "job %s: %s was refused: HTTP %d %s",
                job["job_id"],
                verb,
                response.status_code,
                _message(response),
            )
        return response

    async def _heartbeat(
        self, job: dict[str, Any], upload: dict[str, str], lost: asyncio.Event
    ) -> None:
        every = max(0.2, float(job["lease_seconds"]) / 3)
        while True:
            await asyncio.sleep(every)
            try:
                response = await self.report(job, "heartbeat", {})
            except httpx.TransportError as exc:
                log.warning("job %s: heartbeat did not reach the API (%s)", job["job_id"], exc)
                continue
            if response.status_code == 200:
                upload.update(response.json().get("upload") or {})  # renewed links
                continue
            log.warning(
                "job %s: heartbeat refused (HTTP %d): %s",
                job["job_id"],
                response.status_code,
                _message(response),
            )
            lost.set()
            return


class _ProgressLog(BuildLog):
    """The environment build's log file, its steps and notes also in the worker's own log."""

    def __init__(self, path: Path, job_id: str) -> None:
        super().__init__(path)
        self.job_id = job_id
        self.closed = False

    def write(self, text: str) -> None:
        super().write(text)
        for line in text.splitlines():
            if line.strip():
                log.info("job %s: %s", self.job_id, line.strip())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            super().close()


def _read_or_empty(path: Path) -> bytes:
    return path.read_bytes() if path.exists() else b""


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:300]


async def run_remote_worker(
    api: str,
    token: str,
    fleet: str,
    stop: asyncio.Event,
    *,
    labels: Path | None = None,
    envs: Path | None = None,
) -> None:
    """The worker loop of `serve evaluator --api --token --fleet [--labels DIR]`, until `stop`
    is set; models' environments are kept under `envs`."""
    worker = RemoteWorker(api, token, fleet, labels=labels, envs=envs)
    try:
        await worker.run(stop)
    finally:
        await worker.close()
