"""The `eval-<fleet>` worker: consumes evaluate and benchmark messages for its fleets.

The submission kind picks the handler (KINDS); each reads its own typed message.

A failed model (JobFailed) fails its submission and the message is acknowledged, so the
worker goes straight on to the next one; anything else is retried by the Consumer and, once
dead-lettered, recorded as an internal error on the submission.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import Protocol

from pydantic import ValidationError

from core.context import Services
from core.envelope import Envelope
from core.errors import JobFailed
from core.messages import BenchmarkMessage, EvaluateMessage, MessageRefused, read_message
from core.queue import Delivery, eval_queue, fleet_of_queue
from core.taskconfig import TaskConfig
from core.worker import Consumer
from evaluator.benchmarks import BenchmarkEvaluation
from evaluator.evaluation import Evaluation, fail_submission
from evaluator.runners import Runner, runner_from_settings
from evaluator.scoring import make_pool, pool_size, score_metric
from sandbox.jail import configure as configure_sandbox
from sandbox.zygote import warm_interpreter

log = logging.getLogger(__name__)


class KindHandler(Protocol):
    """Reads one kind's own typed message from the delivery and evaluates it; returns (ack)
    when the submission is done, failed, cancelled or skipped."""

    async def __call__(
        self,
        services: Services,
        delivery: Delivery,
        *,
        pool: Executor | None = None,
        runner: Runner | None = None,
    ) -> None: ...


async def evaluate_model(
    services: Services,
    delivery: Delivery,
    *,
    pool: Executor | None = None,
    runner: Runner | None = None,
) -> None:
    """A model: its evaluate message, its task, a run per hidden dataset (evaluation.py)."""
    envelope = delivery.envelope
    try:
        payload = read_message(envelope, EvaluateMessage)
    except MessageRefused as exc:
        await refuse(services, envelope, exc)
        return
    try:
        task = TaskConfig.model_validate(payload.task.config)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = "task.config." + ".".join(str(p) for p in first["loc"])
        await fail_submission(
            services,
            envelope.action_id,
            JobFailed(
                "evaluate", f"internal error: malformed evaluate message: {where}: {first['msg']}"
            ),
            parent=envelope,
        )
        return
    own_pool = pool is None
    metrics_pool = pool if pool is not None else make_pool(1)
    try:
        evaluation = Evaluation(
            services,
            envelope,
            payload,
            task,
            pool=metrics_pool,
            attempt=delivery.attempts,
            runner=runner,
            fleet=fleet_of_queue(delivery.queue),
        )
        await evaluation.run()
    finally:
        if own_pool:
            metrics_pool.shutdown(wait=False, cancel_futures=True)


async def evaluate_benchmark(
    services: Services,
    delivery: Delivery,
    *,
    pool: Executor | None = None,
    runner: Runner | None = None,
) -> None:
    """A benchmark or an inspection: its benchmark message, `run.count` sandboxed runs of its
    command (evaluator/benchmarks.py). The metric pool and the model runner are not used."""
    envelope = delivery.envelope
    try:
        payload = read_message(envelope, BenchmarkMessage)
    except MessageRefused as exc:
        await refuse(services, envelope, exc)
        return
    await BenchmarkEvaluation(
        services,
        envelope,
        payload,
        attempt=delivery.attempts,
        fleet=fleet_of_queue(delivery.queue),
    ).run()


# The evaluation of each kind of submission: the one dispatch point. The kind (the payload's
# submission.kind) picks the handler, and each handler reads its own typed message.
KINDS: dict[str, KindHandler] = {
    "model": evaluate_model,
    "benchmark": evaluate_benchmark,
    "inspection": evaluate_benchmark,
}
# The kind a message of each type carries, for a payload too broken to say so itself (its
# handler then refuses it, naming the field).
KIND_OF_TYPE = {EvaluateMessage.TYPE: "model", BenchmarkMessage.TYPE: "benchmark"}


def kind_of(envelope: Envelope) -> str | None:
    """The submission kind the message is about: the payload's submission.kind, else the one
    its message type implies (None when neither says)."""
    submission = envelope.payload.get("submission")
    if isinstance(submission, dict) and isinstance(submission.get("kind"), str):
        return submission["kind"]
    return KIND_OF_TYPE.get(envelope.type)


async def refuse(services: Services, envelope: Envelope, exc: MessageRefused) -> None:
    """A message its handler cannot read fails its submission once, naming the field; with no
    submission to fail, the Consumer dead-letters it with the reason."""
    reason = f"internal error: {envelope.type} message refused: {exc.reason}"
    failure = JobFailed("evaluate", reason)
    if not await fail_submission(services, envelope.action_id, failure, parent=envelope):
        raise exc


async def handle_evaluate(
    services: Services,
    delivery: Delivery,
    *,
    pool: Executor | None = None,
    runner: Runner | None = None,
) -> None:
    """Evaluate one submission with its kind's handler; returns (ack) when it is done,
    failed, cancelled or skipped."""
    envelope = delivery.envelope
    kind = kind_of(envelope)
    if kind is None:
        await refuse(
            services,
            envelope,
            MessageRefused(
                f"submission.kind is missing and message type {envelope.type!r} names no "
                f"kind (types: {', '.join(sorted(KIND_OF_TYPE))})",
                field="submission.kind",
            ),
        )
        return
    handler = KINDS.get(kind)
    if handler is None:
        await fail_submission(
            services,
            envelope.action_id,
            JobFailed(
                "evaluate",
                f"{kind} submissions are not evaluated by this evaluator (it evaluates: "
                f"{', '.join(sorted(KINDS))})",
            ),
            parent=envelope,
        )
        return
    await handler(services, delivery, pool=pool, runner=runner)


async def record_dead(services: Services, delivery: Delivery, error: str) -> None:
    """The message failed every attempt: the submission fails with an internal error."""
    first_line = (error.strip().splitlines() or ["unknown error"])[0]
    await fail_submission(
        services,
        delivery.envelope.action_id,
        JobFailed(
            "evaluate",
            f"internal error after {delivery.attempts} attempts: {first_line}",
        ),
        parent=delivery.envelope,
    )


async def run_evaluator(services: Services, fleets: list[str], stop: asyncio.Event) -> None:
    """Serve `eval-<fleet>` for each of `fleets` (and nothing else) until `stop` is set."""
    if not fleets:
        raise ValueError("an evaluator needs at least one fleet to serve")
    configure_sandbox(services.settings.sandbox)  # refuses to start without one
    runner = runner_from_settings(services.settings)  # refuses one this build does not have
    workers = pool_size()
    pool = make_pool(workers)
    warming = _warm_pool(pool, workers)
    consumer = Consumer(
        services.queue,
        [eval_queue(f) for f in fleets],
        functools.partial(handle_evaluate, services, pool=pool, runner=runner),
        name=f"evaluator[{','.join(fleets)}]",
        on_dead=functools.partial(record_dead, services),
        lease_seconds=services.settings.lease_seconds,
        concurrency=services.settings.evaluations_at_once(),
    )
    log.info(
        "evaluator serving %s, %d submissions at once",
        ", ".join(eval_queue(f) for f in fleets),
        consumer.concurrency,
    )
    try:
        # Handler workers fork from one warm interpreter (torch already imported).
        async with warm_interpreter():
            await consumer.run(stop)
    finally:
        warming.cancel()
        pool.shutdown(wait=False, cancel_futures=True)
        # Read the cancelled warm-up's outcome (at once: its jobs are cancelled): a gather
        # left unread is logged by asyncio as an error when it is collected, "exception was
        # never retrieved", whenever the evaluator stops before the pool is warm.
        await asyncio.gather(warming, return_exceptions=True)


def _warm_pool(pool: ProcessPoolExecutor, workers: int) -> asyncio.Future:
    """Start every pool worker now and import the metric library in it, so the first
    submission does not pay for spawning them (about half a second each)."""
    loop = asyncio.get_running_loop()
    jobs = [
        loop.run_in_executor(
            pool,
            functools.partial(
                score_metric, "accuracy", {}, [0, 1], [0, 1], confidence=0.95, resamples=10
            ),
        )
        for _ in range(workers)
    ]
    return asyncio.gather(*jobs, return_exceptions=True)
