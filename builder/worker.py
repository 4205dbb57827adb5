"""The `build` queue's worker: builds each uploaded model and hands it to its task's fleet.

Idempotent: a message for a submission already past `building` is acknowledged and skipped; a
redelivered message for one still `building` (the last worker died) builds again. The work runs
off the event loop (a thread driving subprocesses). Success marks `built` and stages the
`evaluate` message on `eval-<eval_server_id>` in one transaction; a JobFailed marks `failed`
(stage "build", the reason, the log key) and queues the owner's email in the same transaction.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from builder.archives import safe_model_name
from builder.backends import Builder, builder_from_settings
from builder.benchmarks import build_benchmark_submission
from builder.builds import LOG, BuildOptions, BuildResult
from builder.bundle import BundleLimits
from builder.processes import BuildLog
from core.context import Services
from core.errors import JobFailed, WeighbridgeError
from core.messages import (
    BuildMessage,
    BuildRef,
    EvaluateMessage,
    MessageRefused,
    payload_of,
    read_message,
)
from core.models import Dataset, Submission, Task, new_id
from core.notifications import queue_submission_email
from core.queue import BUILD_QUEUE, Delivery, eval_queue
from core.states import Status, fail, transition
from core.taskconfig import TaskConfig
from core.worker import Consumer
from sandbox.jail import configure as configure_sandbox
from sandbox.jobs import jobs_root
from sandbox.zygote import warm_interpreter

log = logging.getLogger(__name__)

SERVICE = "builder"
STAGE = "build"
PAST_BUILDING = frozenset(
    {Status.BUILT, Status.EVALUATING, Status.DONE, Status.FAILED, Status.CANCELLED}
)


# The `build` message, as its sender (core/submissions.py) writes it.
BuildPayload = BuildMessage


def build_key(submission_id: str, name: str) -> str:
    return f"submissions/{submission_id}/build/{name}"


async def _queue_email(session: AsyncSession, services: Services, submission: Submission) -> None:
    await queue_submission_email(session, services.storage, submission, settings=services.settings)


async def _locked_submission(session: AsyncSession, submission_id: str) -> Submission | None:
    return await session.get(
        Submission, submission_id, with_for_update=True, populate_existing=True
    )


async def _mark_failed(
    session: AsyncSession,
    services: Services,
    submission: Submission,
    reason: str,
    *,
    delivery: Delivery | None,
    log_key: str | None = None,
    payload: dict[str, Any] | None = None,
) -> None:
    await fail(
        session,
        submission,
        service=SERVICE,
        stage=STAGE,
        error=reason,
        log_key=log_key,
        payload=payload,
        parent=delivery.envelope if delivery else None,
    )
    await _queue_email(session, services, submission)


async def _fail(
    services: Services,
    submission_id: str,
    reason: str,
    *,
    delivery: Delivery | None,
    log_key: str | None = None,
    payload: dict[str, Any] | None = None,
) -> bool:
    """Mark the submission failed at the build stage (if it still can be) and queue the email;
    False when there is no such submission."""
    async with services.db.session() as session:
        submission = await _locked_submission(session, submission_id)
        if submission is None:
            return False
        if Status(submission.status) in PAST_BUILDING:
            return True
        await _mark_failed(
            session,
            services,
            submission,
            reason,
            delivery=delivery,
            log_key=log_key,
            payload=payload,
        )
    return True


async def handle_build(
    services: Services,
    delivery: Delivery,
    *,
    builder: Builder | None = None,
    options: BuildOptions | None = None,
) -> None:
    """Build one submission; see the module docstring for the contract."""
    envelope = delivery.envelope
    submission_id = envelope.action_id
    try:
        payload = read_message(envelope, BuildMessage)
    except MessageRefused as exc:
        reason = f"internal error: the build message is refused: {exc.reason}"
        if not await _fail(services, submission_id, reason, delivery=delivery):
            raise  # no submission to fail: the Consumer dead-letters it with the reason
        return

    async with services.db.session() as session:
        submission = await _locked_submission(session, submission_id)
        if submission is None:
            log.warning("build message for unknown submission %s; dropped", submission_id)
            return
        if Status(submission.status) in PAST_BUILDING:
            log.info("submission %s is already %s; skipped", submission_id, submission.status)
            return
        refusal, config = _refusal(submission, payload)
        if refusal is not None or (config is None and submission.kind in NEEDS_TASK):
            await _mark_failed(
                session, services, submission, refusal or "no task config", delivery=delivery
            )
            return
        transition(
            session,
            submission,
            Status.BUILDING,
            service=SERVICE,
            message=f"building (attempt {delivery.attempts})",
            payload={"attempt": delivery.attempts},
            parent=envelope,
        )
        kind = submission.kind
    await KINDS[kind](
        services,
        delivery,
        payload,
        config,
        builder=builder or builder_from_settings(services),
        options=options,
    )


async def build_model_submission(
    services: Services,
    delivery: Delivery,
    payload: BuildPayload,
    config: TaskConfig,
    *,
    builder: Builder,
    options: BuildOptions | None,
) -> None:
    """A model: fetch the bundle, build it, store the artifacts, hand it to its fleet."""
    submission_id = delivery.envelope.action_id
    work = jobs_root() / "builds" / f"{submission_id}-{new_id()[:8]}"
    work.mkdir(parents=True)
    build_log = BuildLog(work / "build" / LOG)
    try:
        try:
            result = await _build(services, builder, payload, config, work, build_log, options)
        except JobFailed as exc:
            build_log.step(f"build failed: {exc.reason}")
            build_log.close()
            log_key = build_key(submission_id, LOG)
            await services.storage.write_file(log_key, build_log.path)
            await _fail(
                services,
                submission_id,
                exc.reason,
                delivery=delivery,
                log_key=log_key,
                payload={"log_tail": exc.log_tail[-4000:]} if exc.log_tail else None,
            )
            return
        build_log.close()
        await _store_and_hand_off(services, delivery, payload, config, result)
    finally:
        build_log.close()
        await asyncio.to_thread(shutil.rmtree, work, True)


# The build of each kind of submission: the one dispatch point. A benchmark and an
# inspection are the same job (an inspection is a benchmark made from an Amun request).
KINDS: dict[str, Callable[..., Awaitable[None]]] = {
    "model": build_model_submission,
    "benchmark": build_benchmark_submission,
    "inspection": build_benchmark_submission,
}
# Kinds whose build needs a task (its build settings and hidden datasets).
NEEDS_TASK = frozenset({"model"})


def _refusal(submission: Submission, payload: BuildPayload) -> tuple[str | None, TaskConfig | None]:
    """Why this submission cannot be built here (None: go ahead), and its task's config
    (None for kinds that need no task)."""
    if submission.kind not in KINDS:
        return (
            f"{submission.kind} submissions are not built by this builder (it builds: "
            f"{', '.join(sorted(KINDS))})",
            None,
        )
    if not payload.submission.upload_key:
        return "the submission has nothing uploaded to build", None
    if submission.kind not in NEEDS_TASK:
        return None, None
    if payload.task is None:
        return "a model submission needs a task; upload it with --task", None
    try:
        return None, TaskConfig.model_validate(payload.task.config)
    except ValidationError as exc:
        return f"internal error: the task config of {payload.task.slug!r} is invalid: {exc}", None


async def _build(
    services: Services,
    builder: Builder,
    payload: BuildPayload,
    config: TaskConfig,
    work: Path,
    build_log: BuildLog,
    options: BuildOptions | None,
) -> BuildResult:
    ref = payload.submission
    filename = Path(ref.upload_filename or "").name or "upload"
    if filename in (".", ".."):
        filename = "upload"
    source = work / "upload" / filename
    assert ref.upload_key is not None
    build_log.step(f"fetching {ref.upload_key}")
    try:
        await services.storage.download(ref.upload_key, source)
    except FileNotFoundError:
        raise JobFailed(
            STAGE, f"the uploaded bundle {ref.upload_key} is no longer in storage; upload again"
        ) from None
    if options is None:
        max_archive = config.limits.max_upload_bytes or services.settings.max_upload_bytes
        options = BuildOptions(limits=BundleLimits(max_archive_bytes=max_archive))
    return await builder.build(
        source,
        source_name=filename,
        submission_id=ref.id,
        model_name=safe_model_name(ref.name),
        build=config.build,
        work=work,
        log=build_log,
        options=options,
        task=config,
    )


async def _store_and_hand_off(
    services: Services,
    delivery: Delivery,
    payload: BuildPayload,
    config: TaskConfig,
    result: BuildResult,
) -> None:
    submission_id = payload.submission.id
    keys = {}
    for name in [*result.files(), LOG]:
        keys[name] = build_key(submission_id, name)
        await services.storage.write_file(keys[name], result.folder / name)
    spec = result.specification
    # Keys and hashes only: the evaluator finds the env by its key (core/environments.py).
    build = BuildRef(
        mar_key=keys["model.mar"],
        env_key=result.env.key if result.env else None,
        requirements_sha256=result.requirements_sha256,
        handler=result.handler.handler,
        handler_entry=result.handler.entry,
        bundle_sha256=result.bundle.sha256,
        model_name=spec["model_name"],
        dockerfile_key=keys["Dockerfile"],
        specification_key=keys["specification.json"],
        log_key=keys[LOG],
    )
    build_info = build.model_dump(mode="json")
    await _ensure_datasets(services, config)
    async with services.db.session() as session:
        submission = await _locked_submission(session, submission_id)
        if submission is None or submission.status != Status.BUILDING:
            state = submission.status if submission else "gone"
            log.info(
                "submission %s became %s during its build; not handed on", submission_id, state
            )
            return
        datasets = await _hidden_datasets(session, submission.task_id)
        try:
            evaluate = EvaluateMessage.model_validate(
                {
                    **payload.model_dump(mode="json", exclude={"schema_version"}),
                    "build": build_info,
                    "datasets": datasets,
                }
            )
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            reason = f"internal error: the evaluate message does not validate: {where}"
            await _mark_failed(
                session, services, submission, f"{reason}: {first['msg']}", delivery=delivery
            )
            return
        transition(
            session,
            submission,
            Status.BUILT,
            service=SERVICE,
            message=(
                f"built {spec['model_name']}.mar ({len(result.bundle.files)} files, "
                f"handler {result.handler.entry}) in {spec['timings']['total_s']:.1f} s"
                # What a builder wants on the timeline (the docker builder: an image not built).
                + "".join(f"; {w}" for w in spec.get("warnings", []))
            ),
            payload={**build_info, "timings": spec["timings"]},
            parent=delivery.envelope,
        )
        message = delivery.envelope.follow(
            EvaluateMessage.TYPE, payload_of(evaluate), service=SERVICE
        )
        await services.outbox.stage(session, eval_queue(config.eval.eval_server_id), message)


async def _ensure_datasets(services: Services, config: TaskConfig) -> None:
    """Prepare the task's hidden datasets that have no stored file yet (idempotent)."""
    from core.datasets import DatasetError, prepare_dataset

    async with services.db.session() as session:
        task = await session.scalar(sa.select(Task).where(col(Task.slug) == config.slug))
        ready = (
            {
                row.name
                for row in await session.scalars(
                    sa.select(Dataset).where(
                        col(Dataset.task_id) == task.id, col(Dataset.uri) != ""
                    )
                )
            }
            if task
            else set()
        )
    for dataset in config.datasets:
        if dataset.access == "hidden" and dataset.name not in ready:
            try:
                await prepare_dataset(services, config, dataset)
            except (DatasetError, WeighbridgeError) as exc:
                raise JobFailed(
                    STAGE,
                    f"dataset {dataset.name!r} of task {config.slug!r} could not be prepared: "
                    f"{exc}; an operator must fix the task's dataset source",
                ) from None


async def _hidden_datasets(session: AsyncSession, task_id: int | None) -> list[dict[str, Any]]:
    rows = await session.scalars(
        sa.select(Dataset)
        .where(col(Dataset.task_id) == task_id, col(Dataset.access) == "hidden")
        .order_by(col(Dataset.id))
    )
    datasets = []
    for row in rows:
        if not row.uri:
            log.warning("dataset %s of task %s is not prepared (no uri)", row.name, task_id)
        datasets.append(
            {
                "name": row.name,
                "key": row.uri or None,
                "sha256": row.sha256 or None,
                "access": row.access,
                "split": row.split,
                "weight": row.weight,
                "perturbation_of": row.perturbation_of,
                "n_examples": row.n_examples,
            }
        )
    return datasets


async def record_dead_build(services: Services, delivery: Delivery, error: str) -> None:
    """`on_dead`: the message failed every attempt with unexpected errors; fail the build."""
    first = next((line for line in error.splitlines() if line.strip()), "unknown error")
    await _fail(
        services,
        delivery.envelope.action_id,
        f"internal error after {delivery.attempts} attempts: {first}",
        delivery=delivery,
        payload={"detail": error[-4000:]},
    )


def build_consumer(
    services: Services, *, options: BuildOptions | None = None, builder: Builder | None = None
) -> Consumer:
    """The Consumer of the `build` queue (one build at a time per process)."""
    if builder is None:
        builder = builder_from_settings(services)  # refuses one this build does not have
    return Consumer(
        services.queue,
        [BUILD_QUEUE],
        partial(handle_build, services, builder=builder, options=options),
        name=SERVICE,
        on_dead=partial(record_dead_build, services),
        concurrency=1,
        lease_seconds=services.settings.lease_seconds,
    )


async def run_builder(services: Services, stop: asyncio.Event) -> None:
    """Build until `stop` is set. Handler checks fork from a warm interpreter (shared with
    the evaluator in `weighbridge up`)."""
    configure_sandbox(services.settings.sandbox)  # refuses to start without one
    builder = builder_from_settings(services)
    consumer = build_consumer(services, builder=builder)
    try:
        async with warm_interpreter():
            await consumer.run(stop)
    finally:
        close = getattr(builder, "close", None)  # a builder holding clients (docker: AWS)
        if close is not None:
            await close()
