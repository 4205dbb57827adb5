"""One submission's evaluation: per-dataset runs, scores, timeline events, the receipt.

Resumable: each dataset has a `runs` row (queued -> running -> done | failed | cancelled, as
core.states moves it). A redelivered message skips datasets whose run is done and whose scores
exist, and redoes the rest. Every state change and its event (and the email, on done or failed)
share one transaction. A cancel (core.states.cancel) ends the runs itself; the evaluation
notices it within a second, stops the handler workers and leaves the runs cancelled.

Each run also writes `hwinfo.json` (evaluator/hwinfo.py). Once every dataset is done, each
perturbed dataset (`perturbation_of` in the task config) gets its Dynaboard delta, stored as a
score on the perturbed dataset named `robustness` or `fairness`: the primary metric of the
model's answers on the perturbed copies against its own answers on the originals, read back
from the stored predictions (so a redelivery that skipped the original still has them); a
delta already stored is not recomputed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from core.context import Services
from core.envelope import Envelope
from core.environments import local_env_python
from core.errors import JobFailed, RetryableError
from core.kinds import policy_of
from core.messages import DatasetRef, EvaluateMessage
from core.models import Submission
from core.notifications import queue_submission_email
from core.states import (
    TERMINAL,
    RunStatus,
    Status,
    can_move_run,
    fail,
    move_run,
    record_event,
    transition,
)
from core.submissions import list_scores
from core.taskconfig import DELTA_METRICS, TaskConfig
from evaluator import hwinfo, records
from evaluator.archive import fetch_model
from evaluator.receipt import build_receipt, evaluator_identity
from evaluator.runner import (
    DatasetRun,
    DatasetSpec,
    EvaluationCancelled,
    ModelSpec,
    labels_held_by_workers,
    prediction_values,
    results_prefix,
    write_result,
)
from evaluator.runners import Runner, runner_from_settings
from evaluator.scoring import PERFORMANCE_UNITS, score_delta, score_metrics
from sandbox.jobs import jobs_root

log = logging.getLogger(__name__)

SERVICE = "evaluator"
STAGE_CHARS = 32  # submissions.failed_stage


# The `evaluate` message, as its sender (builder/worker.py) writes it.
EvaluatePayload = EvaluateMessage


async def queue_email(session: AsyncSession, services: Services, submission: Submission) -> None:
    """The completion email, written in the caller's transaction (the outbox sends it)."""
    await queue_submission_email(session, services.storage, submission, settings=services.settings)


async def fail_submission(
    services: Services,
    submission_id: str,
    failure: JobFailed,
    *,
    parent: Envelope | None = None,
    dataset: str | None = None,
) -> bool:
    """Mark the submission failed with its stage, reason and log; queue the email.
    False when there is no such submission."""
    async with services.db.session() as session:
        submission = await records.lock_submission(session, submission_id)
        if submission is None:
            return False
        if Status(submission.status) in TERMINAL:
            return True
        if dataset is not None:
            run = await records.get_run(session, submission_id, dataset)
            if run is not None and can_move_run(run.status, RunStatus.FAILED):
                move_run(run, RunStatus.FAILED, error=failure.reason)
                session.add(run)
            record_event(
                session,
                submission,
                "dataset.failed",
                service=SERVICE,
                message=f"{dataset}: {failure.reason}",
                payload={"dataset": dataset, "reason": failure.reason, "log_key": failure.log_key},
                parent=parent,
            )
        await fail(
            session,
            submission,
            service=SERVICE,
            stage=failure.stage[:STAGE_CHARS],
            error=failure.reason,
            log_key=failure.log_key or None,
            payload={"stage": failure.stage, "log_tail": failure.log_tail[-4000:]},
            parent=parent,
        )
        await queue_email(session, services, submission)
    return True


class Evaluation:
    """Evaluates one submission from its (validated) evaluate message."""

    def __init__(
        self,
        services: Services,
        envelope: Envelope,
        payload: EvaluatePayload,
        task: TaskConfig,
        *,
        pool: Executor,
        attempt: int = 1,
        runner: Runner | None = None,
        fleet: str | None = None,
    ) -> None:
        self.services = services
        self.envelope = envelope
        self.payload = payload
        self.task = task
        self.pool = pool
        self.attempt = attempt
        # The fleet whose queue delivered the message (the task's, unless called directly).
        self.evaluator = evaluator_identity(fleet or task.eval.eval_server_id)
        self.runner = runner or runner_from_settings(services.settings)
        self.submission_id = payload.submission.id or envelope.action_id

    # -- the whole job ---------------------------------------------------------------------

    async def run(self) -> None:
        if not await self.begin():
            return
        self.current: str | None = None
        try:
            if not self.payload.datasets:
                raise JobFailed("evaluate", "the task has no prepared hidden dataset to run on")
            hwinfo.prefetch()  # collected once per process, while the model is fetched
            await self.run_within_budget()
        except EvaluationCancelled:
            await self.note_cancelled(self.current)
        except JobFailed as failure:
            await fail_submission(
                self.services,
                self.submission_id,
                failure,
                parent=self.envelope,
                dataset=self.current,
            )

    async def run_within_budget(self) -> None:
        """Every dataset, then the deltas and the receipt, within eval.total_timeout_seconds
        (a redelivered message starts the budget again)."""
        seconds = self.task.eval.total_timeout_seconds
        try:
            async with asyncio.timeout(seconds):
                await self.run_datasets()
        except TimeoutError:
            raise JobFailed(
                "evaluate",
                f"the evaluation took longer than {seconds:g} s in all (the task's "
                "eval.total_timeout_seconds); it was stopped",
            ) from None

    def env_python(self) -> str | None:
        """The interpreter of the model's env on this host (None: the evaluator's own).

        The message names the env by key; the local evaluator shares its host (and envs root)
        with the local builder, so the key resolves to the env the builder made."""
        key = self.payload.build.env_key
        if key is None or not getattr(self.runner, "handler_runs_here", True):
            # No env, or a runner whose handler runs elsewhere (SageMaker's container holds
            # the model's packages): nothing to look up on this host.
            return None
        try:
            python = local_env_python(
                key, storage=self.services.storage, home=self.services.settings.home
            )
        except ValueError as exc:
            raise JobFailed("evaluate", f"internal error: build.env_key: {exc}") from None
        if python is None:
            raise JobFailed(
                "evaluate",
                f"the model's environment {key} (its requirements.txt) is not on this "
                "evaluator's host; it is built by a builder sharing the host's storage",
            )
        return str(python)

    async def run_datasets(self) -> None:
        # In the jobs folder: the warm interpreter forks workers only for models there.
        with tempfile.TemporaryDirectory(prefix="eval-", dir=jobs_root()) as tmp:
            scratch = Path(tmp)
            build = self.payload.build
            model, mar_sha256 = await fetch_model(
                self.services.storage,
                mar_key=build.mar_key,
                scratch=scratch,
                python=self.env_python(),
                handler=build.handler,
                name=self.payload.submission.name or "model",
            )
            summaries: dict[str, dict[str, Any]] = {}
            for ref in self.payload.datasets:
                if await self.stopped():
                    raise EvaluationCancelled(ref.name)
                done = await self.completed(ref)
                if done is not None:
                    summaries[ref.name] = done
                    continue
                self.current = ref.name
                summaries[ref.name] = await self.evaluate_dataset(ref, model, scratch)
                self.current = None
            if await self.stopped():
                raise EvaluationCancelled()
            deltas = await self.score_perturbations()
            await self.finish(summaries, mar_sha256, deltas)

    async def stopped(self) -> bool:
        """True when the submission was cancelled (or ended) elsewhere: stop working on it."""
        async with self.services.db.session() as session:
            status = await records.submission_status(session, self.submission_id)
        return status is None or Status(status) in TERMINAL

    # -- steps -----------------------------------------------------------------------------

    async def begin(self) -> bool:
        """built -> evaluating (or evaluating -> evaluating on redelivery); False: nothing to do."""
        names = [d.name for d in self.payload.datasets]
        async with self.services.db.session() as session:
            submission = await records.lock_submission(session, self.submission_id)
            if submission is None:
                log.warning("evaluate message for unknown submission %s", self.submission_id)
                return False
            status = Status(submission.status)
            if status in TERMINAL:
                log.info("submission %s is already %s; skipping", submission.id, status.value)
                return False
            if status not in (Status.BUILT, Status.EVALUATING):
                raise RetryableError(f"submission {submission.id} is still {status.value}")
            resumed = status is Status.EVALUATING
            fleet = self.evaluator["fleet"]
            transition(
                session,
                submission,
                Status.EVALUATING,
                service=SERVICE,
                message=(
                    f"resuming evaluation (delivery {self.attempt}) on fleet {fleet}"
                    if resumed
                    else f"evaluating on {len(names)} dataset(s) on fleet {fleet}"
                ),
                payload={
                    "datasets": names,
                    "fleet": fleet,
                    "attempt": self.attempt,
                    "evaluator": self.evaluator,
                },
                parent=self.envelope,
            )
            await records.ensure_runs(session, submission.id, names)
        return True

    async def completed(self, ref: DatasetRef) -> dict[str, Any] | None:
        """The summary of a dataset already done (run done, its scores stored), else None."""
        async with self.services.db.session() as session:
            run = await records.get_run(session, self.submission_id, ref.name)
            if run is None or run.status != "done":
                return None
            stored = await records.score_names(session, self.submission_id, ref.name)
            expected = set(run.summary.get("scores") or [])
            if not expected or not expected <= stored:
                return None
            submission = await session.get(Submission, self.submission_id)
            if submission is not None:
                record_event(
                    session,
                    submission,
                    "dataset.skipped",
                    service=SERVICE,
                    message=f"{ref.name}: already evaluated before a restart",
                    payload={"dataset": ref.name},
                    parent=self.envelope,
                )
            return dict(run.summary)

    async def evaluate_dataset(
        self, ref: DatasetRef, model: ModelSpec, scratch: Path
    ) -> dict[str, Any]:
        await self.start_dataset(ref)
        run = await self.runner.run_dataset(
            self.services.storage,
            submission_id=self.submission_id,
            task=self.task,
            dataset=DatasetSpec(
                name=ref.name, key=ref.key, sha256=ref.sha256, n_examples=ref.n_examples
            ),
            model=model,
            scratch=scratch,
            should_stop=self.stopped,
        )
        run.keys["hwinfo"] = f"{results_prefix(self.submission_id, ref.name)}/hwinfo.json"
        await hwinfo.write_hwinfo(
            self.services.storage,
            run.keys["hwinfo"],
            submission_id=self.submission_id,
            dataset=ref.name,
            runner=self.runner.name,
            describes=self.runner.describes,
        )
        scores = await self.score(ref, run)
        await write_result(self.services.storage, run, scores=scores)
        return await self.finish_dataset(ref, run, scores)

    async def start_dataset(self, ref: DatasetRef) -> None:
        async with self.services.db.session() as session:
            submission = await records.lock_submission(session, self.submission_id)
            run = await records.get_run(session, self.submission_id, ref.name)
            if submission is None or Status(submission.status) in TERMINAL:
                raise EvaluationCancelled(ref.name)  # cancelled since the last look
            if run is None:
                raise RuntimeError(f"the run {ref.name} of {self.submission_id} vanished")
            move_run(run, RunStatus.RUNNING)
            session.add(run)
            n = f" ({ref.n_examples} examples)" if ref.n_examples else ""
            record_event(
                session,
                submission,
                "dataset.started",
                service=SERVICE,
                message=f"{ref.name}: evaluating{n}",
                payload={"dataset": ref.name, "attempt": run.attempt, "n_examples": ref.n_examples},
                parent=self.envelope,
            )

    async def score(self, ref: DatasetRef, run: DatasetRun) -> list[dict[str, Any]]:
        """Task metrics (with CIs, in the pool) and the run's performance, as score rows."""
        config = self.task.eval
        if run.task_scores is not None:
            # The labels are held by the remote worker that ran the dataset: it scored there.
            results = run.task_scores
        elif labels_held_by_workers(self.task, ref.name):
            raise JobFailed(
                f"evaluate:{ref.name}",
                f"dataset {ref.name}: its labels are held by the organiser's remote workers, "
                f"and the runner {self.runner.name!r} does not use them: the fleet's evaluator "
                "must run with WEIGHBRIDGE_RUNNER=remote",
            )
        else:
            results = await score_metrics(
                self.pool,
                # Deltas compare two datasets' answers: score_perturbations computes them.
                [m for m in self.task.metrics if m.name not in DELTA_METRICS],
                prediction_values(self.task, run.answers),
                run.references,
                confidence=config.confidence,
                resamples=config.bootstrap_resamples,
            )
        rows: list[dict[str, Any]] = []
        for result in results:
            if "error" in result:
                raise JobFailed(
                    f"evaluate:{ref.name}",
                    f"dataset {ref.name}: metric {result['metric']} cannot be computed from the "
                    f"model's answers: {result['error']}",
                    log_key=run.keys["log"],
                )
            if result["value"] is None:
                continue  # not a single number (e.g. a confusion matrix): result.json only
            extra: dict[str, Any] = {"kind": "task"}
            if result.get("ci_low") is not None:
                extra.update(confidence=config.confidence, resamples=config.bootstrap_resamples)
            if result.get("ci_error"):
                extra["ci_error"] = result["ci_error"]
            rows.append({**result, "n_examples": run.n_examples, "extra": extra})
        for name, value in run.performance.items():
            rows.append(
                {
                    "metric": name,
                    "value": float(value),
                    "n_examples": run.n_examples,
                    "extra": {"kind": "performance", "unit": PERFORMANCE_UNITS.get(name, "")},
                }
            )
        return rows

    async def finish_dataset(
        self, ref: DatasetRef, run: DatasetRun, scores: list[dict[str, Any]]
    ) -> dict[str, Any]:
        summary = {
            "dataset": ref.name,
            "sha256": ref.sha256,
            "n_examples": run.n_examples,
            "performance": run.performance,
            "timings": run.timings,
            "worker": run.worker,
            "files": run.keys,
            "scores": [s["metric"] for s in scores],
        }
        values = {s["metric"]: s["value"] for s in scores}
        async with self.services.db.session() as session:
            submission = await records.lock_submission(session, self.submission_id)
            row = await records.get_run(session, self.submission_id, ref.name)
            if submission is None or Status(submission.status) in TERMINAL:
                raise EvaluationCancelled(ref.name)  # no scores for a cancelled submission
            if row is None:
                raise RuntimeError(f"the run {ref.name} of {self.submission_id} vanished")
            await records.insert_scores(session, self.submission_id, ref.name, scores)
            move_run(row, RunStatus.DONE)
            row.summary = summary
            session.add(row)
            primary = self.task.primary_metric.name
            shown = f"{primary} {values[primary]:.4g}, " if primary in values else ""
            record_event(
                session,
                submission,
                "dataset.finished",
                service=SERVICE,
                message=(
                    f"{ref.name}: {shown}{run.performance['examples_per_second']:.1f} "
                    f"examples/s on {run.n_examples} examples"
                ),
                payload={**summary, "values": values},
                parent=self.envelope,
            )
        return summary

    # -- robustness and fairness ---------------------------------------------------------

    def perturbation_pairs(self) -> list[tuple[DatasetRef, DatasetRef, str]]:
        """(perturbed, original, delta metric) for each evaluated perturbed dataset."""
        refs = {r.name: r for r in self.payload.datasets}
        pairs = []
        for ref in self.payload.datasets:
            try:
                config = self.task.dataset(ref.name)
            except KeyError:
                config = None
            # The task config says which delta; the message's copy of the link is the fallback.
            original = (config.perturbation_of if config else None) or ref.perturbation_of
            if not original:
                continue
            kind = (config.delta_metric if config else None) or "robustness"
            if original not in refs:
                log.warning(
                    "submission %s: %s perturbs %s, which was not evaluated; no %s",
                    self.submission_id,
                    ref.name,
                    original,
                    kind,
                )
                continue
            pairs.append((ref, refs[original], kind))
        return pairs

    async def score_perturbations(self) -> list[dict[str, Any]]:
        """Each perturbed dataset's delta, stored once (a redelivery finds it and moves on)."""
        deltas = []
        for perturbed, original, kind in self.perturbation_pairs():
            async with self.services.db.session() as session:
                stored = {
                    (s.dataset, s.metric): s for s in await list_scores(session, self.submission_id)
                }
            score = stored.get((perturbed.name, kind))
            if score is None:
                row = await self.score_delta(perturbed, original, kind)
                await self.store_delta(perturbed, original, row)
                value, low, high = row["value"], row.get("ci_low"), row.get("ci_high")
            else:
                value, low, high = score.value, score.ci_low, score.ci_high
            deltas.append(
                {
                    "dataset": perturbed.name,
                    "original": original.name,
                    "metric": kind,
                    "of": self.task.primary_metric.name,
                    "value": value,
                    "ci_low": low,
                    "ci_high": high,
                }
            )
        return deltas

    async def predictions_of(self, ref: DatasetRef) -> tuple[list[Any], list[Any]]:
        """(uids, the values the metrics compare) of the stored predictions on `ref`."""
        key = f"{results_prefix(self.submission_id, ref.name)}/predictions.jsonl"
        data = await self.services.storage.read_bytes(key)
        lines = [json.loads(line) for line in data.splitlines() if line.strip()]
        uids = [line["uid"] for line in lines]
        return uids, prediction_values(self.task, [line["outputs"] for line in lines])

    async def score_delta(
        self, perturbed: DatasetRef, original: DatasetRef, kind: str
    ) -> dict[str, Any]:
        """The delta as a score row: each perturbed example is paired, by its `original_uid`
        (or its own uid when the dataset has none), with the original's prediction."""
        from core.datasets import read_examples

        stage = f"evaluate:{perturbed.name}"
        log_key = f"{results_prefix(self.submission_id, perturbed.name)}/log"
        rows = await read_examples(self.services.storage, perturbed.key, perturbed.sha256)
        links = {row["uid"]: row.get("original_uid", row["uid"]) for row in rows}
        uids, answers = await self.predictions_of(perturbed)
        original_uids, original_answers = await self.predictions_of(original)
        position = {uid: i for i, uid in enumerate(original_uids)}
        groups = [position.get(links.get(uid)) for uid in uids]
        unpaired = [uid for uid, g in zip(uids, groups, strict=True) if g is None]
        if unpaired:
            raise JobFailed(
                stage,
                f"dataset {perturbed.name} perturbs {original.name}, but {len(unpaired)} of its "
                f"{len(uids)} examples have no original there (first: uid {unpaired[0]!r}, "
                f"original_uid {links.get(unpaired[0])!r}); the task's datasets disagree: "
                "an operator must fix the perturbed dataset's `original_uid`s",
                log_key=log_key,
            )
        config = self.task.eval
        primary = self.task.primary_metric
        result = await score_delta(
            self.pool,
            kind,
            primary,
            answers,
            original_answers,
            [g for g in groups if g is not None],
            confidence=config.confidence,
            resamples=config.bootstrap_resamples,
        )
        if "error" in result:
            raise JobFailed(
                stage,
                f"dataset {perturbed.name}: {kind} ({primary.name} of the answers here against "
                f"the model's own answers on {original.name}) cannot be computed: "
                f"{result['error']}",
                log_key=log_key,
            )
        extra: dict[str, Any] = {
            "kind": "delta",
            "original": original.name,
            "of": primary.name,
            "originals": result["n_groups"],
        }
        if result.get("ci_low") is not None:
            extra.update(confidence=config.confidence, resamples=config.bootstrap_resamples)
        if result.get("ci_error"):
            extra["ci_error"] = result["ci_error"]
        return {
            "metric": kind,
            "value": result["value"],
            "ci_low": result["ci_low"],
            "ci_high": result["ci_high"],
            "n_examples": len(uids),
            "extra": extra,
        }

    async def store_delta(
        self, perturbed: DatasetRef, original: DatasetRef, row: dict[str, Any]
    ) -> None:
        """Add the delta to the perturbed run's result.json, then store it with its event."""
        key = f"{results_prefix(self.submission_id, perturbed.name)}/result.json"
        try:
            result = json.loads(await self.services.storage.read_bytes(key))
        except FileNotFoundError:
            result = None
        if isinstance(result, dict):
            kept = [s for s in result.get("scores") or [] if s.get("metric") != row["metric"]]
            result["scores"] = [*kept, row]
            await self.services.storage.write_bytes(
                key, json.dumps(result, indent=2, sort_keys=True).encode()
            )
        async with self.services.db.session() as session:
            submission = await records.lock_submission(session, self.submission_id)
            if submission is None or Status(submission.status) in TERMINAL:
                raise EvaluationCancelled()  # no scores for a cancelled submission
            await records.insert_scores(session, self.submission_id, perturbed.name, [row])
            low, high = row.get("ci_low"), row.get("ci_high")
            interval = f" [{low:.4g}, {high:.4g}]" if low is not None and high is not None else ""
            record_event(
                session,
                submission,
                "dataset.delta",
                service=SERVICE,
                message=(
                    f"{perturbed.name}: {row['metric']} {row['value']:.4g}{interval} "
                    f"({row['extra']['of']} of its answers against its own on {original.name})"
                ),
                payload={
                    "dataset": perturbed.name,
                    "original": original.name,
                    "metric": row["metric"],
                    "value": row["value"],
                    "ci_low": low,
                    "ci_high": high,
                    "n_examples": row["n_examples"],
                },
                parent=self.envelope,
            )

    # -- the end ---------------------------------------------------------------------------

    async def finish(
        self,
        summaries: dict[str, dict[str, Any]],
        mar_sha256: str,
        deltas: list[dict[str, Any]] | None = None,
    ) -> None:
        """done, its receipt (the last event) and the email, in one transaction."""
        receipt = build_receipt(
            submission=self.payload.submission.model_dump(mode="json"),
            build=self.payload.build.model_dump(),
            mar_sha256=mar_sha256,
            datasets=[d.model_dump() for d in self.payload.datasets],
            summaries=summaries,
            runner=self.runner.name,
            hwinfo=await asyncio.to_thread(hwinfo.machine_info),
            deltas=deltas or [],
            evaluator=self.evaluator,
        )
        async with self.services.db.session() as session:
            submission = await records.lock_submission(session, self.submission_id)
            if submission is None or Status(submission.status) in TERMINAL:
                return
            transition(
                session,
                submission,
                Status.DONE,
                service=SERVICE,
                message=f"evaluated on {len(summaries)} dataset(s)",
                payload={"datasets": list(summaries)},
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
            if submission.task_id is not None and policy_of(submission.kind).ranked:
                # The board is rebuilt after this commits (core.boards), not in here.
                from core.boards import mark_leaderboard_stale

                await mark_leaderboard_stale(session, submission.task_id)
            await queue_email(session, self.services, submission)

    async def note_cancelled(self, dataset: str | None) -> None:
        """The timeline says where the work stopped; the runs were ended by the cancel
        (core.states.cancel) and are left as they are."""
        await note_stopped(
            self.services, self.submission_id, self.envelope, "dataset", dataset, "evaluation"
        )


async def note_stopped(
    services: Services,
    submission_id: str,
    parent: Envelope,
    unit: str,
    name: str | None,
    whole: str,
) -> None:
    """A `<unit>.stopped` event: the work on `name` (or on the `whole`) stopped because the
    submission was cancelled or ended elsewhere (the cancel ended its runs itself)."""
    async with services.db.session() as session:
        submission = await session.get(Submission, submission_id)
        if submission is not None:
            record_event(
                session,
                submission,
                f"{unit}.stopped",
                service=SERVICE,
                message=f"{name or whole}: stopped because the submission was {submission.status}",
                payload={unit: name},
                parent=parent,
            )
