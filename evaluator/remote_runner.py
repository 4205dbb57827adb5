"""The remote runner (WEIGHBRIDGE_RUNNER=remote): a dataset is run by a remote worker of the
task's fleet, which holds no database or storage credentials (evaluator.remote_worker).

For each dataset it writes the inputs-only JSON lines (uid and input fields: labels never
leave this side) under the job's own prefix, creates a `remote_jobs` row and waits for a
worker to claim and complete it (core.remote_jobs), then reads the predictions the worker
uploaded, checks them as the local runner checks a handler's answers, and returns the
DatasetRun the local runner would: references come from the hidden labels read here, so the
scoring around it is the same and stays on this side.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import remote_jobs
from core.db import Database
from core.errors import JobFailed
from core.models import RemoteJob, new_id
from core.settings import Settings
from core.storage import Storage
from core.taskconfig import DELTA_METRICS, TaskConfig
from evaluator.answers import InvalidAnswer, check_answers
from evaluator.runner import (
    DatasetRun,
    DatasetSpec,
    EvaluationCancelled,
    ModelSpec,
    StopCheck,
    labels_held_by_workers,
    load_examples,
    reference_of,
    results_prefix,
    write_result,
)

POLL_SECONDS = 0.5
STOP_CHECK_SECONDS = 1.0


def mar_key(submission_id: str) -> str:
    """Where the builder keeps a submission's model archive (the storage layout)."""
    return f"submissions/{submission_id}/build/model.mar"


def requirements_key(submission_id: str) -> str:
    """Where the builder keeps a model's requirements.txt, when the bundle has one."""
    return f"submissions/{submission_id}/build/requirements.txt"


def task_document(task: TaskConfig) -> dict[str, Any]:
    """What a worker needs of the task to run the handler as the local runner does: its
    fields, the eval settings (batch size, timeouts, memory); never dataset sources."""
    return {
        "slug": task.slug,
        "name": task.name,
        "input_fields": list(task.input_fields),
        "output_fields": dict(task.output_fields),
        "label_field": task.label_field,
        "metrics": [m.name for m in task.metrics],
        # What a worker holding a dataset's labels scores with (deltas are scored here).
        "metric_configs": [
            {"name": m.name, "options": dict(m.options)}
            for m in task.metrics
            if m.name not in DELTA_METRICS
        ],
        "eval": task.eval.model_dump(mode="json"),
    }


def inputs_only(rows: list[dict[str, Any]], task: TaskConfig) -> bytes:
    """The rows as JSON lines holding the uid and the task's input fields, nothing else."""
    lines = [
        json.dumps(
            {"uid": row.get("uid", i), **{f: row[f] for f in task.input_fields}},
            ensure_ascii=False,
        )
        for i, row in enumerate(rows)
    ]
    return ("\n".join(lines) + "\n").encode()


async def stored_sha256(storage: Storage, key: str) -> str:
    digest = hashlib.sha256()
    async for chunk in storage.read_stream(key):
        digest.update(chunk)
    return digest.hexdigest()


@dataclass
class RemoteRunner:
    """Hands each dataset to a remote worker of the task's fleet and waits for it."""

    database_url: str
    name: str = "remote"
    # The handler runs on the worker, which builds the model's environment itself from the
    # build's requirements.txt: the evaluation looks up no environment on this host.
    handler_runs_here: bool = False
    describes: str = (
        "the evaluator that handed the job out; the remote worker that ran the handler "
        "describes itself in result.json"
    )
    poll_seconds: float = POLL_SECONDS

    @classmethod
    def from_settings(cls, settings: Settings) -> RemoteRunner:
        return cls(database_url=settings.database_url)

    async def run_dataset(
        self,
        storage: Storage,
        *,
        submission_id: str,
        task: TaskConfig,
        dataset: DatasetSpec,
        model: ModelSpec,
        scratch: Path,
        should_stop: StopCheck | None = None,
    ) -> DatasetRun:
        stage = f"evaluate:{dataset.name}"
        prefix = results_prefix(submission_id, dataset.name)
        keys = {
            "predictions": f"{prefix}/predictions.jsonl",
            "log": f"{prefix}/log",
            "result": f"{prefix}/result.json",
        }
        rows = await load_examples(storage, dataset)
        if not rows:
            raise JobFailed(stage, f"dataset {dataset.name} has no examples")
        job_id = new_id()
        job_prefix = f"remote/{job_id}/"
        inputs = inputs_only(rows, task)
        inputs_key = f"{job_prefix}inputs.jsonl"
        await storage.write_bytes(inputs_key, inputs)
        # Its own short-lived engine: the runner protocol has no close, and a dataset's wait
        # is long next to opening one.
        db = Database(self.database_url)
        try:
            archive = mar_key(submission_id)
            spec = {
                "task": task_document(task),
                "model": {
                    "mar_key": archive,
                    "sha256": await stored_sha256(storage, archive),
                    "handler": model.handler,
                    "name": model.name,
                    **await _requirements_of(storage, submission_id, task),
                },
                "dataset": {
                    "name": dataset.name,
                    "n_examples": len(rows),
                    "inputs_key": inputs_key,
                    "sha256": hashlib.sha256(inputs).hexdigest(),
                    **_labels_of(task, dataset.name),
                },
                # Where the results end up (the worker uploads under the job's own prefix).
                "results": keys,
            }
            fleet = task.eval.eval_server_id
            async with db.session() as session:
                await remote_jobs.create_job(
                    session,
                    job_id=job_id,
                    fleet=fleet,
                    submission_id=submission_id,
                    dataset=dataset.name,
                    spec=spec,
                )
            job = await self.wait(db, job_id, task, dataset=dataset.name, should_stop=should_stop)
            # The uploads of the claim that finished (never a worker's that lost the job).
            for name, key in remote_jobs.upload_keys(job).items():
                if await storage.exists(key):
                    await storage.move(key, keys[name])
        finally:
            await asyncio.shield(storage.delete_prefix(job_prefix))
            await asyncio.shield(db.dispose())
        if job.status == remote_jobs.FAILED:
            raise JobFailed(
                stage,
                f"the remote worker (fleet {fleet}) could not run dataset {dataset.name}: "
                f"{job.error}",
                log_tail=await _tail(storage, keys["log"]),
                log_key=keys["log"] if await storage.exists(keys["log"]) else "",
            )
        return await self.collected(storage, job, rows, task, dataset, keys, stage=stage)

    async def wait(
        self,
        db: Database,
        job_id: str,
        task: TaskConfig,
        *,
        dataset: str,
        should_stop: StopCheck | None,
    ) -> RemoteJob:
        """The job once done or failed; lost leases are put back (or failed) on the way. A
        stop (the submission was cancelled) cancels the job: its worker's next heartbeat is
        refused and it stops."""
        seconds = task.eval.dataset_timeout_seconds
        deadline = time.monotonic() + seconds
        next_stop_check = 0.0
        while True:
            async with db.session() as session:
                await remote_jobs.expire_leases(session, job_id=job_id)
            async with db.session() as session:
                job = await remote_jobs.get_job(session, job_id)
            if job is None:
                raise RuntimeError(f"remote job {job_id} vanished")
            if job.status in (remote_jobs.DONE, remote_jobs.FAILED):
                return job
            now = time.monotonic()
            stop = job.status == remote_jobs.CANCELLED
            if not stop and should_stop is not None and now >= next_stop_check:
                next_stop_check = now + STOP_CHECK_SECONDS
                stop = await should_stop()
            if stop:
                async with db.session() as session:
                    await remote_jobs.cancel_job(session, job_id)
                raise EvaluationCancelled(dataset)
            if now > deadline:
                async with db.session() as session:
                    await remote_jobs.cancel_job(session, job_id)
                waiting = "no worker claimed it" if job.attempts == 0 else "it did not finish"
                raise JobFailed(
                    f"evaluate:{dataset}",
                    f"dataset {dataset}: {waiting} within {seconds:g} s (the task's "
                    f"eval.dataset_timeout_seconds) on fleet {job.fleet}'s remote workers; "
                    "it was stopped",
                )
            await asyncio.sleep(self.poll_seconds)

    async def collected(
        self,
        storage: Storage,
        job: RemoteJob,
        rows: list[dict[str, Any]],
        task: TaskConfig,
        dataset: DatasetSpec,
        keys: dict[str, str],
        *,
        stage: str,
    ) -> DatasetRun:
        """The run from the worker's uploads, checked here: the uids in dataset order and every
        answer of the task's output schema (a worker's claims are not taken on trust)."""
        report = job.result or {}
        uids = [row.get("uid", i) for i, row in enumerate(rows)]
        where = f"dataset {dataset.name} (remote job {job.id})"
        try:
            data = await storage.read_bytes(keys["predictions"])
        except FileNotFoundError:
            raise JobFailed(
                stage, f"{where}: the worker reported done but uploaded no predictions"
            ) from None
        try:
            lines = [json.loads(line) for line in data.splitlines() if line.strip()]
            got = [line["uid"] for line in lines]
            outputs = [line["outputs"] for line in lines]
        except (ValueError, KeyError, TypeError) as exc:
            raise JobFailed(
                stage, f"{where}: the uploaded predictions are malformed: {exc}"
            ) from None
        if got != uids:
            raise JobFailed(
                stage,
                f"{where}: the uploaded predictions hold {len(got)} answers whose uids are not "
                f"the dataset's {len(uids)} in order",
            )
        try:
            answers = check_answers(outputs, uids, task.output_fields, where=where)
        except InvalidAnswer as exc:
            raise JobFailed(stage, str(exc), log_key=keys["log"]) from None
        performance = report.get("performance") or {}
        if "examples_per_second" not in performance:
            raise JobFailed(stage, f"{where}: the worker's report has no performance summary")
        worker = dict(report.get("worker") or {})
        worker["remote"] = {"job_id": job.id, "fleet": job.fleet, "attempts": job.attempts}
        held = labels_held_by_workers(task, dataset.name)
        run = DatasetRun(
            dataset=dataset.name,
            sha256=dataset.sha256,
            uids=uids,
            answers=answers,
            # Labels held by the worker never come here: it sends the task metrics instead.
            references=[None if held else reference_of(row, task.label_field) for row in rows],
            performance={k: float(v) for k, v in performance.items()},
            timings={k: float(v) for k, v in (report.get("timings") or {}).items()},
            worker=worker,
            keys=keys,
            task_scores=worker_scores(report, task, where=where, stage=stage) if held else None,
        )
        await write_result(storage, run)
        return run


async def _requirements_of(
    storage: Storage, submission_id: str, task: TaskConfig
) -> dict[str, Any]:
    """The build's requirements.txt (key, sha256, the build's time limit) when the model has
    one: the worker builds that environment itself, as the builder did."""
    key = requirements_key(submission_id)
    if not await storage.exists(key):
        return {}
    return {
        "requirements": {
            "key": key,
            "sha256": await stored_sha256(storage, key),
            "timeout_seconds": task.build.timeout_seconds,
        }
    }


def _labels_of(task: TaskConfig, dataset: str) -> dict[str, Any]:
    """Where the dataset's labels are: here ("evaluator"), or with the workers ("worker":
    the worker scores, against the labels file whose sha256 the task names, if it does)."""
    if not labels_held_by_workers(task, dataset):
        return {"labels": "evaluator"}
    return {"labels": "worker", "labels_sha256": task.dataset(dataset).labels_sha256 or None}


def worker_scores(
    report: dict[str, Any], task: TaskConfig, *, where: str, stage: str
) -> list[dict[str, Any]]:
    """The task metrics a worker holding the labels computed, checked: each of the task's
    (non-delta) metrics once, a finite number or none (a non-number kept as detail)."""
    expected = [m.name for m in task.metrics if m.name not in DELTA_METRICS]
    scores = report.get("scores")
    if not isinstance(scores, list):
        raise JobFailed(
            stage, f"{where}: the dataset's labels are held by the worker, which sent no scores"
        )
    checked: list[dict[str, Any]] = []
    for score in scores:
        if not isinstance(score, dict) or score.get("metric") not in expected:
            raise JobFailed(stage, f"{where}: the worker sent a score that is no task metric")
        row: dict[str, Any] = {"metric": score["metric"]}
        if "error" in score:
            row["error"] = str(score["error"])[:1000]
        else:
            for name in ("value", "ci_low", "ci_high"):
                value = score.get(name)
                if value is not None and (
                    isinstance(value, bool)
                    or not isinstance(value, int | float)
                    or not math.isfinite(value)
                ):
                    raise JobFailed(
                        stage,
                        f"{where}: the worker's {score['metric']} {name} is not a finite number",
                    )
                row[name] = None if value is None else float(value)
            if score.get("ci_error"):
                row["ci_error"] = str(score["ci_error"])[:1000]
            if row["value"] is None:
                row["detail"] = score.get("detail")
        checked.append(row)
    if sorted(r["metric"] for r in checked) != sorted(expected):
        raise JobFailed(
            stage,
            f"{where}: the worker's scores are {sorted(r['metric'] for r in checked)}, "
            f"not the task's metrics {sorted(expected)}",
        )
    return checked


async def _tail(storage: Storage, key: str, chars: int = 4000) -> str:
    try:
        return (await storage.read_bytes(key)).decode(errors="replace")[-chars:]
    except FileNotFoundError:
        return ""
