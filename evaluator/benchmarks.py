"""One benchmark's (or inspection's) evaluation: `run.count` sandboxed runs, their results,
scores, timeline events, the outcome and the receipt.

Each run n has a `runs` row `run-<n>` (queued -> running -> done | failed, as core.states moves
it) and its files under `submissions/<id>/results/<n>/`: `log`, `stdout`, `stderr`,
`hwinfo.json` and `result.json` (evaluator/benchmark_run.py says what each holds). Its metric
series become scores on the dataset `run-<n>` (the median, the bootstrap interval, the number
of values); once every run is done, each metric's values over all runs become the dataset
`all`. Every run is tried: a run that fails (non-zero exit, timeout, out of memory) is kept
with its files, and the submission then fails naming each failed run, how it ended and the end
of its log. A metric that matched nothing in a successful run is a warning in the timeline.

Resumable: a redelivered message skips the runs that are done (their scores stored) or failed,
and runs the rest; the builder's warnings go to the timeline once. A cancel ends the runs
itself (core.states.cancel); the run in progress is killed within a second.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

from core.context import Services
from core.envelope import Envelope
from core.errors import JobFailed, RetryableError
from core.messages import BenchmarkMessage
from core.models import Submission
from core.states import (
    TERMINAL,
    RunStatus,
    Status,
    move_run,
    record_event,
    transition,
)
from core.version import __version__
from evaluator import hwinfo, records
from evaluator.benchmark_job import STAGE, BenchmarkJob, prepare_job
from evaluator.benchmark_run import RunOutcome, extract_metrics, read_text, run_command
from evaluator.evaluation import (
    SERVICE,
    STAGE_CHARS,
    fail_submission,
    note_stopped,
    queue_email,
)
from evaluator.receipt import evaluator_identity
from evaluator.runner import EvaluationCancelled
from sandbox.jail import Job, Limits, current_jail
from sandbox.jobs import jobs_root
from sandbox.worker import read_tail

log = logging.getLogger(__name__)

ALL = "all"  # the dataset of the scores over every run
CONFIDENCE = 0.95
RESAMPLES = 2000
TAIL_CHARS = 2000  # of a failed run's log, in the failure's reason
BULKY = ("metrics", "log_tail", "sandbox")  # kept out of a finished run's event


def run_name(n: int) -> str:
    return f"run-{n}"


def run_prefix(submission_id: str, n: int) -> str:
    return f"submissions/{submission_id}/results/{n}"


def summarise_series(values: list[float]) -> dict[str, Any]:
    """metrics.series' summary as a plain dict (median, min, max, n, mean, interval)."""
    from metrics.series import summarise

    summary = summarise(values, confidence=CONFIDENCE, resamples=RESAMPLES)
    return {
        "median": summary.median,
        "min": summary.min,
        "max": summary.max,
        "n": summary.n,
        "mean": summary.mean,
        "ci_low": summary.ci_low,
        "ci_high": summary.ci_high,
        "confidence": CONFIDENCE,
    }


def score_rows(
    summaries: dict[str, dict[str, Any]], units: dict[str, str], *, runs: int
) -> list[dict[str, Any]]:
    """One score per summarised metric: the median, its interval, the count of values."""
    return [
        {
            "metric": name,
            "value": s["median"],
            "ci_low": s["ci_low"],
            "ci_high": s["ci_high"],
            "n_examples": s["n"],
            "extra": {
                "kind": "benchmark",
                "unit": units.get(name, ""),
                "min": s["min"],
                "max": s["max"],
                "mean": s["mean"],
                "runs": runs,
                "confidence": CONFIDENCE,
                "resamples": RESAMPLES,
            },
        }
        for name, s in summaries.items()
    ]


class BenchmarkEvaluation:
    """Runs one benchmark or inspection from its (validated) benchmark message."""

    def __init__(
        self,
        services: Services,
        envelope: Envelope,
        payload: BenchmarkMessage,
        *,
        attempt: int = 1,
        fleet: str | None = None,
    ) -> None:
        self.services = services
        self.envelope = envelope
        self.payload = payload
        self.attempt = attempt
        self.evaluator = evaluator_identity(fleet or "default")
        self.submission_id = payload.submission.id or envelope.action_id
        self.kind = payload.submission.kind
        self.settings = services.settings

    # -- the whole job ---------------------------------------------------------------------

    async def run(self) -> None:
        if await self.stopped():
            log.info("submission %s is gone or ended; skipping", self.submission_id)
            return
        try:
            with tempfile.TemporaryDirectory(prefix="bench-", dir=jobs_root()) as tmp:
                job = await prepare_job(
                    self.payload,
                    storage=self.services.storage,
                    home=self.settings.home,
                    folder=Path(tmp) / "job",
                    jail=current_jail(),
                    on_sagemaker=self.settings.runner == "sagemaker",
                )
                if not await self.begin(job):
                    return
                hwinfo.prefetch()
                await self.run_all(job)
        except EvaluationCancelled as stopped:
            await self.note_cancelled(str(stopped) or None)
        except JobFailed as failure:
            await fail_submission(self.services, self.submission_id, failure, parent=self.envelope)

    async def stopped(self) -> bool:
        """True when the submission was cancelled (or ended, or removed) elsewhere."""
        async with self.services.db.session() as session:
            status = await records.submission_status(session, self.submission_id)
        return status is None or Status(status) in TERMINAL

    async def begin(self, job: BenchmarkJob) -> bool:
        """built -> evaluating (evaluating -> evaluating on redelivery), the runs' rows, and
        the builder's warnings once; False: nothing to do."""
        count = job.descriptor.run.count
        names = [run_name(n) for n in range(1, count + 1)]
        async with self.services.db.session() as session:
            submission = await records.lock_submission(session, self.submission_id)
            if submission is None:
                log.warning("benchmark message for unknown submission %s", self.submission_id)
                return False
            status = Status(submission.status)
            if status in TERMINAL:
                return False
            if status not in (Status.BUILT, Status.EVALUATING):
                raise RetryableError(f"submission {submission.id} is still {status.value}")
            resumed = status is Status.EVALUATING
            fleet = self.evaluator["fleet"]
            timeout = job.descriptor.run.timeout
            transition(
                session,
                submission,
                Status.EVALUATING,
                service=SERVICE,
                message=(
                    f"resuming the {self.kind} (delivery {self.attempt}) on fleet {fleet}"
                    if resumed
                    else f"running the {self.kind} {count} time(s), at most {timeout} s each, "
                    f"on fleet {fleet}"
                ),
                payload={
                    "runs": names,
                    "fleet": fleet,
                    "attempt": self.attempt,
                    "evaluator": self.evaluator,
                    "command": job.command,
                    "timeout": timeout,
                },
                parent=self.envelope,
            )
            warnings = self.payload.benchmark.warnings
            if warnings and not resumed:
                record_event(
                    session,
                    submission,
                    "benchmark.warnings",
                    service=SERVICE,
                    message="not honoured on this machine: " + "; ".join(warnings),
                    payload={"warnings": warnings},
                    parent=self.envelope,
                )
            await records.ensure_runs(session, submission.id, names)
        return True

    async def run_all(self, job: BenchmarkJob) -> None:
        count = job.descriptor.run.count
        results: dict[int, dict[str, Any]] = {}
        for n in range(1, count + 1):
            if await self.stopped():
                raise EvaluationCancelled(run_name(n))
            ended = await self.completed(n)
            if ended is None:
                ended = await self.run_one(job, n, count)
            results[n] = ended
        failed = [r for r in results.values() if r.get("status") == RunStatus.FAILED.value]
        if failed:
            raise self.failure(failed, count)
        if await self.stopped():
            raise EvaluationCancelled()
        await self.finish(job, results)

    def failure(self, failed: list[dict[str, Any]], count: int) -> JobFailed:
        """The submission's failure: each failed run, how it ended, the end of its log."""
        parts = [f"{r['run']} {r['failure']}" for r in failed]
        first = failed[0]
        tail = (first.get("log_tail") or "").strip()
        shown = f"; the end of {first['run']}'s log:\n{tail[-TAIL_CHARS:]}" if tail else ""
        stage = f"run:{first['run']}" if len(failed) == 1 else "run"
        kept = count - len(failed)
        return JobFailed(
            stage[:STAGE_CHARS],
            f"{len(failed)} of {count} run(s) failed: {'; '.join(parts)} "
            f"(the other {kept} run(s)' results are kept){shown}",
            log_tail=first.get("log_tail") or "",
            log_key=(first.get("files") or {}).get("log", ""),
        )

    # -- one run ---------------------------------------------------------------------------

    async def completed(self, n: int) -> dict[str, Any] | None:
        """The summary of run n if it already ended (done with its scores stored, or failed),
        else None: it is run (again)."""
        name = run_name(n)
        async with self.services.db.session() as session:
            run = await records.get_run(session, self.submission_id, name)
            if run is None or not run.summary:
                return None
            if run.status == RunStatus.DONE.value:
                stored = await records.score_names(session, self.submission_id, name)
                if not set(run.summary.get("scores") or []) <= stored:
                    return None
            elif run.status != RunStatus.FAILED.value:
                return None
            submission = await session.get(Submission, self.submission_id)
            if submission is not None:
                record_event(
                    session,
                    submission,
                    "run.skipped",
                    service=SERVICE,
                    message=f"{name}: already {run.status} before a restart",
                    payload={"run": name, "status": run.status},
                    parent=self.envelope,
                )
            return dict(run.summary)

    async def start_run(self, n: int, count: int) -> None:
        name = run_name(n)
        async with self.services.db.session() as session:
            submission = await records.lock_submission(session, self.submission_id)
            run = await records.get_run(session, self.submission_id, name)
            if submission is None or Status(submission.status) in TERMINAL:
                raise EvaluationCancelled(name)
            if run is None:
                raise RuntimeError(f"the run {name} of {self.submission_id} vanished")
            move_run(run, RunStatus.RUNNING)
            session.add(run)
            record_event(
                session,
                submission,
                "run.started",
                service=SERVICE,
                message=f"{name}: started ({n} of {count})",
                payload={"run": name, "n": n, "count": count, "attempt": run.attempt},
                parent=self.envelope,
            )

    async def run_one(self, job: BenchmarkJob, n: int, count: int) -> dict[str, Any]:
        name = run_name(n)
        await self.start_run(n, count)
        if self.on_sagemaker(job):
            summary = await self.run_on_sagemaker(job, n, count)
            return await self.end_run(job, n, summary, count=count)
        jail = current_jail()
        limits = Limits(
            memory_mb=self.settings.benchmark_memory_mb,
            scratch_mb=self.settings.benchmark_scratch_mb,
        )
        sandbox_job = Job(
            python=job.python,
            mounts=job.mounts,
            network=False,
            limits=limits,
            env=job.run_env(n, count),
        )
        scratch = job.scratch / name  # /scratch's stand-in without a sandbox
        await asyncio.to_thread(scratch.mkdir, parents=True, exist_ok=True)
        timeout = float(job.descriptor.run.timeout)
        outcome = await run_command(
            jail,
            sandbox_job,
            job.argv(n, count),
            n=n,
            folder=job.folder / "results" / str(n),
            scratch=scratch,
            seconds=timeout,
            should_stop=self.stopped,
            on_sample=partial(self.note_sample, name),
        )
        summary = await self.store_run(job, outcome, count=count)
        if outcome.cancelled:
            raise EvaluationCancelled(name)
        return await self.end_run(job, n, summary, count=count)

    def on_sagemaker(self, job: BenchmarkJob) -> bool:
        """A descriptor asking for the SageMaker engine, on an evaluator set up for SageMaker."""
        engine = job.descriptor.info.execution_engine
        return engine == "aws.sagemaker" and self.settings.runner == "sagemaker"

    def sagemaker_hardware(self, job: BenchmarkJob) -> dict[str, Any]:
        """What a SageMaker run ran on, for the receipt (the evaluator's machine ran nothing)."""
        from evaluator.sagemaker_training import instance_type, message_region

        distributed = job.descriptor.hardware.distributed
        return {
            "instance_type": instance_type(job.descriptor),
            "instance_count": (distributed.num_instances if distributed else None) or 1,
            "region": message_region(job.descriptor, default=self.settings.aws_region),
        }

    async def run_on_sagemaker(self, job: BenchmarkJob, n: int, count: int) -> dict[str, Any]:
        """Run n as a SageMaker training job (evaluator/sagemaker_training.py)."""
        from core.aws import AwsClients
        from evaluator.sagemaker_training import run_benchmark_run

        clients = AwsClients(
            endpoint_url=self.settings.aws_endpoint_url, region=self.settings.aws_region
        )
        try:
            return await run_benchmark_run(
                clients=clients,
                storage=self.services.storage,
                settings=self.settings,
                job=job,
                message=self.payload,
                submission_id=self.submission_id,
                kind=self.kind,
                n=n,
                count=count,
                fleet=self.evaluator["fleet"],
                should_stop=self.stopped,
            )
        finally:
            await clients.close()

    async def note_sample(self, name: str, sample: dict[str, Any]) -> None:
        """The running run's newest CPU/memory sample on its row (`live`), which /metrics
        exports while it runs; the run's final summary replaces it."""
        async with self.services.db.session() as session:
            run = await records.get_run(session, self.submission_id, name)
            if run is not None and run.status == RunStatus.RUNNING:
                run.summary = {**(run.summary or {}), "live": {**sample, "at": time.time()}}

    async def store_run(
        self, job: BenchmarkJob, outcome: RunOutcome, *, count: int
    ) -> dict[str, Any]:
        """The run's files in storage; returns its summary (the runs row keeps it)."""
        storage = self.services.storage
        prefix = run_prefix(self.submission_id, outcome.n)
        keys = {
            name: f"{prefix}/{name}"
            for name in ("log", "stdout", "stderr", "hwinfo.json", "result.json")
        }
        for name, path in (
            ("log", outcome.log_path),
            ("stdout", outcome.stdout_path),
            ("stderr", outcome.stderr_path),
        ):
            await storage.write_file(keys[name], path)  # bounded when captured
        extracted = extract_metrics(
            job.descriptor.output.metrics,
            log=await asyncio.to_thread(read_text, outcome.log_path),
            stdout=await asyncio.to_thread(read_text, outcome.stdout_path),
        )
        summaries = {
            metric: await asyncio.to_thread(summarise_series, values)
            for metric, values in extracted.series.items()
            if values
        }
        info = await hwinfo.write_hwinfo(
            storage,
            keys["hwinfo.json"],
            submission_id=self.submission_id,
            run=outcome.n,
            runner="local",
            describes="the evaluator machine the benchmark ran on",
        )
        timeout = float(job.descriptor.run.timeout)
        failure = outcome.failure(timeout)
        result = {
            "submission_id": self.submission_id,
            "kind": self.kind,
            "run": outcome.n,
            "count": count,
            "command": job.command,
            "exit_code": outcome.exit_code,
            "timed_out": outcome.timed_out,
            "timeout": timeout,
            "oom": outcome.oom,
            "cancelled": outcome.cancelled,
            "failure": failure,
            "start_datetime": outcome.start.isoformat(),
            "end_datetime": outcome.end.isoformat(),
            "seconds": round(outcome.seconds, 6),
            "script_sha256": job.script_sha256,
            "descriptor_sha256": self.payload.benchmark.descriptor_sha256,
            "usage": outcome.usage,
            "usage_of": outcome.usage_of,
            "metrics": extracted.series,
            "summary": summaries,
            "metric_warnings": extracted.warnings,
            "samples": outcome.samples,
            "peak": outcome.peak(),
            "values": self.payload.values,
            "data": job.files,
            "hostname": info.get("hostname") or socket.gethostname(),
            "os_release": info.get("os"),
            "sandbox": outcome.sandbox,
            "limits": {
                "memory_mb": self.settings.benchmark_memory_mb,
                "scratch_mb": self.settings.benchmark_scratch_mb,
                "timeout_seconds": timeout,
                "network": "none",
            },
            "truncated": {k: v for k, v in outcome.dropped.items() if v},
            "files": keys,
        }
        await storage.write_bytes(
            keys["result.json"], json.dumps(result, indent=2, sort_keys=True).encode()
        )
        return {
            "run": run_name(outcome.n),
            "n": outcome.n,
            "status": RunStatus.DONE.value if failure is None else RunStatus.FAILED.value,
            "exit_code": outcome.exit_code,
            "timed_out": outcome.timed_out,
            "oom": outcome.oom,
            "seconds": round(outcome.seconds, 3),
            "failure": failure,
            "log_tail": read_tail(outcome.log_path, TAIL_CHARS) if failure else "",
            "metrics": extracted.series,
            "summary": summaries,
            "metric_warnings": extracted.warnings,
            "peak": outcome.peak(),
            "files": keys,
            "sandbox": outcome.sandbox,
            "scores": sorted(summaries) if failure is None else [],
        }

    async def end_run(
        self, job: BenchmarkJob, n: int, summary: dict[str, Any], *, count: int
    ) -> dict[str, Any]:
        """done (with its scores) or failed, its event, and a warning for each declared metric
        that found nothing in a successful run."""
        name = run_name(n)
        units = {m.name: m.units for m in job.descriptor.output.metrics}
        succeeded = summary["status"] == RunStatus.DONE.value
        async with self.services.db.session() as session:
            submission = await records.lock_submission(session, self.submission_id)
            row = await records.get_run(session, self.submission_id, name)
            if submission is None or Status(submission.status) in TERMINAL:
                raise EvaluationCancelled(name)
            if row is None:
                raise RuntimeError(f"the run {name} of {self.submission_id} vanished")
            if succeeded:
                rows = score_rows(summary["summary"], units, runs=1)
                await records.insert_scores(session, self.submission_id, name, rows)
                move_run(row, RunStatus.DONE)
            else:
                move_run(row, RunStatus.FAILED, error=summary["failure"])
            row.summary = summary
            session.add(row)
            shown = ", ".join(
                f"{metric} {s['median']:.4g}{units.get(metric, '') and ' ' + units[metric]}"
                for metric, s in summary["summary"].items()
            )
            if succeeded:
                record_event(
                    session,
                    submission,
                    "run.finished",
                    service=SERVICE,
                    message=f"{name}: exit code 0 in {summary['seconds']:.2f} s"
                    + (f"; {shown}" if shown else ""),
                    # The series stay in result.json and the runs row: events stay small.
                    payload={k: v for k, v in summary.items() if k not in BULKY},
                    parent=self.envelope,
                )
                missing = [m for m in units if not summary["metrics"].get(m)]
                problems = [f"metric {m} matched nothing in the log" for m in missing]
                problems += summary["metric_warnings"]
                if problems:
                    record_event(
                        session,
                        submission,
                        "run.warning",
                        service=SERVICE,
                        message=f"{name}: " + "; ".join(problems),
                        payload={"run": name, "missing": missing, "warnings": problems},
                        parent=self.envelope,
                    )
            else:
                record_event(
                    session,
                    submission,
                    "run.failed",
                    service=SERVICE,
                    message=f"{name}: {summary['failure']} after {summary['seconds']:.2f} s",
                    payload={k: v for k, v in summary.items() if k not in ("metrics", "sandbox")},
                    parent=self.envelope,
                )
        return summary

    # -- the end ---------------------------------------------------------------------------

    async def finish(self, job: BenchmarkJob, results: dict[int, dict[str, Any]]) -> None:
        """The `all` scores, done, the receipt (the last event) and the email, together."""
        units = {m.name: m.units for m in job.descriptor.output.metrics}
        series: dict[str, list[float]] = {}
        for n in sorted(results):
            for metric, values in (results[n].get("metrics") or {}).items():
                series.setdefault(metric, []).extend(values)
        overall = {
            metric: await asyncio.to_thread(summarise_series, values)
            for metric, values in series.items()
            if values
        }
        receipt = await self.receipt(job, results, overall)
        async with self.services.db.session() as session:
            submission = await records.lock_submission(session, self.submission_id)
            if submission is None or Status(submission.status) in TERMINAL:
                return
            await records.insert_scores(
                session,
                self.submission_id,
                ALL,
                score_rows(overall, units, runs=len(results)),
            )
            shown = ", ".join(f"{m} median {s['median']:.4g}" for m, s in overall.items())
            transition(
                session,
                submission,
                Status.DONE,
                service=SERVICE,
                message=f"{len(results)} run(s) finished" + (f": {shown}" if shown else ""),
                payload={"runs": [run_name(n) for n in sorted(results)], "summary": overall},
                parent=self.envelope,
            )
            record_event(
                session,
                submission,
                "receipt",
                service=SERVICE,
                message="receipt: what ran, where, with which versions",
                payload=receipt,
                parent=self.envelope,
            )
            await queue_email(session, self.services, submission)

    async def receipt(
        self,
        job: BenchmarkJob,
        results: dict[int, dict[str, Any]],
        overall: dict[str, dict[str, Any]],
    ) -> dict[str, Any]:
        info = await asyncio.to_thread(hwinfo.machine_info)
        ref = self.payload.benchmark
        sandbox: dict[str, Any] = {}
        for summary in results.values():
            sandbox = summary.get("sandbox") or sandbox
        return {
            "submission_id": self.submission_id,
            "kind": self.kind,
            "descriptor_key": ref.descriptor_key,
            "descriptor_sha256": ref.descriptor_sha256,
            "scripts_sha256": ref.scripts_sha256,
            "script_sha256": job.script_sha256,
            "requirements_sha256": ref.requirements_sha256,
            "env_key": ref.env_key,
            "command": job.command,
            "data": [d.model_dump() for d in self.payload.data],
            "values": self.payload.values,
            "warnings": ref.warnings,
            "runs": {
                run_name(n): {
                    "exit_code": r.get("exit_code"),
                    "seconds": r.get("seconds"),
                    "hwinfo": (r.get("files") or {}).get("hwinfo.json"),
                    "result": (r.get("files") or {}).get("result.json"),
                }
                for n, r in sorted(results.items())
            },
            "summary": overall,
            "hardware": (
                hwinfo.summary(info) if not self.on_sagemaker(job) else self.sagemaker_hardware(job)
            ),
            "packages": {
                "weighbridge": __version__,
                "python": sys.version.split()[0],
                "interpreter": job.python,
            },
            "runner": "sagemaker" if self.on_sagemaker(job) else "local",
            "evaluator": self.evaluator,
            "sandbox": {
                **sandbox,
                "network": "none",
                "limits": {
                    "memory_mb": self.settings.benchmark_memory_mb,
                    "scratch_mb": self.settings.benchmark_scratch_mb,
                    "timeout_seconds": job.descriptor.run.timeout,
                },
            },
        }

    async def note_cancelled(self, name: str | None) -> None:
        """The timeline says where the work stopped (the cancel ended the runs itself)."""
        await note_stopped(self.services, self.submission_id, self.envelope, "run", name, self.kind)


__all__ = ["ALL", "STAGE", "BenchmarkEvaluation", "run_name", "run_prefix"]
