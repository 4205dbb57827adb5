"""The local runner: one dataset through a sandboxed handler, checked, timed and stored.

Only the task's input fields reach the handler, in batches of `eval.batch_size`, as
TorchServe's `[{"body": {...}}, ...]`. Every answer is checked against the task's output
schema. Predictions, the handler's log and `result.json` go to
`submissions/<id>/results/<dataset>/`. Any failure is a JobFailed naming the dataset, the
batch and what to fix, with the log's key and tail.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from core.errors import JobFailed
from core.storage import Storage
from core.taskconfig import TaskConfig
from evaluator.answers import InvalidAnswer, check_answers
from evaluator.hwinfo import usable_cpus
from sandbox.failures import SandboxError, SandboxLimits
from sandbox.worker import Sandbox, batch_frame, read_tail

PIPELINE_DEPTH = 3  # batches in flight: the worker never waits for the evaluator
CANCEL_CHECK_SECONDS = 1.0
LOG_UPLOAD_LIMIT = 8 << 20

StopCheck = Callable[[], Awaitable[bool]]
T = TypeVar("T")


class EvaluationCancelled(Exception):
    """The submission was cancelled (or finished elsewhere) while its dataset ran."""


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset as the evaluate message names it."""

    name: str
    key: str
    sha256: str
    n_examples: int | None = None


@dataclass(frozen=True)
class ModelSpec:
    """An extracted model archive and how to start its handler."""

    model_dir: Path
    handler: str
    manifest: dict[str, Any]
    python: str | None = None
    name: str = "model"


@dataclass
class DatasetRun:
    """What one dataset's run produced (predictions stay here for the metrics)."""

    dataset: str
    sha256: str
    uids: list[Any]
    answers: list[dict[str, Any]]
    references: list[Any]
    performance: dict[str, float]
    timings: dict[str, float]
    worker: dict[str, Any]
    keys: dict[str, str]
    result: dict[str, Any] = field(default_factory=dict)
    # The task metrics, when whoever holds the labels computed them (a remote worker holding
    # a dataset's labels, evaluator.remote_runner); None: scored here against `references`.
    task_scores: list[dict[str, Any]] | None = None

    @property
    def n_examples(self) -> int:
        return len(self.uids)


def results_prefix(submission_id: str, dataset: str) -> str:
    return f"submissions/{submission_id}/results/{dataset}"


def labels_held_by_workers(task: TaskConfig, dataset: str) -> bool:
    """Whether the task's `dataset` keeps its labels with the remote workers only."""
    try:
        return task.dataset(dataset).labels == "worker"
    except KeyError:
        return False


def reference_of(row: dict[str, Any], label_field: str) -> Any:
    return row.get(label_field)


def prediction_values(task: TaskConfig, answers: Sequence[dict[str, Any]]) -> list[Any]:
    """What the metrics compare with the references, one per answer (TaskConfig.prediction_of)."""
    return [task.prediction_of(a) for a in answers]


async def load_examples(storage: Storage, dataset: DatasetSpec) -> list[dict[str, Any]]:
    """The dataset's rows, checksum verified (core.datasets owns the reading)."""
    from core.datasets import read_examples

    return list(await read_examples(storage, dataset.key, dataset.sha256))


def write_predictions(path: Path, uids: Sequence[Any], answers: Sequence[Any]) -> None:
    """predictions.jsonl: one `{"uid", "outputs"}` object per example, in dataset order."""
    with path.open("w", encoding="utf-8") as fh:
        for uid, answer in zip(uids, answers, strict=True):
            fh.write(json.dumps({"uid": uid, "outputs": answer}, ensure_ascii=False) + "\n")


def _log_bytes(path: Path) -> bytes:
    """The log to store: whole, or its head and tail when a handler printed without end."""
    if not path.exists():
        return b""
    size = path.stat().st_size
    with path.open("rb") as fh:
        if size <= LOG_UPLOAD_LIMIT:
            return fh.read()
        head = fh.read(LOG_UPLOAD_LIMIT // 8)
        fh.seek(size - LOG_UPLOAD_LIMIT // 2)
        tail = fh.read()
    skipped = size - len(head) - len(tail)
    return head + f"\n… [{skipped} bytes skipped] …\n".encode() + tail


async def _upload_log(storage: Storage, key: str, path: Path) -> None:
    await storage.write_bytes(key, await asyncio.to_thread(_log_bytes, path))


async def run_dataset(
    storage: Storage,
    *,
    submission_id: str,
    task: TaskConfig,
    dataset: DatasetSpec,
    model: ModelSpec,
    scratch: Path,
    should_stop: StopCheck | None = None,
    server_name: str = "weighbridge-local",
) -> DatasetRun:
    """Evaluate `model` on `dataset`; raises JobFailed (stage `evaluate:<dataset>`) or
    EvaluationCancelled. Nothing but the task's input fields ever reaches the handler."""
    stage = f"evaluate:{dataset.name}"
    prefix = results_prefix(submission_id, dataset.name)
    keys = {
        "predictions": f"{prefix}/predictions.jsonl",
        "log": f"{prefix}/log",
        "result": f"{prefix}/result.json",
    }
    # On a hidden dataset the handler's own output may echo the hidden examples: unless the
    # task shows it ([logs] hidden_output), it goes to a file of its own, kept for the
    # organisers, and a failure's reason (which may quote the handler) is cut short.
    withheld = withholds_output(task, dataset.name)
    keys_withheld = {"output": f"{prefix}/{HANDLER_OUTPUT}"} if withheld else {}
    rows = await _checked_rows(storage, dataset, task, stage=stage)
    folder = scratch / dataset.name
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / "log"
    log_path.write_text("")
    limits = SandboxLimits(timeout_seconds=task.eval.timeout_seconds, memory_mb=task.eval.memory_mb)
    sandboxes = _sandboxes(
        model, task, rows, folder, log_path, limits, server_name, withheld=withheld
    )
    n_workers = len(sandboxes)
    started_wall = time.time()
    work = _run_batches(sandboxes, rows, task, dataset)
    if should_stop is not None:
        work = _unless_stopped(work, should_stop, dataset=dataset.name)
    finished = False
    try:
        try:
            run = await _run_within(task.eval.dataset_timeout_seconds, work, dataset=dataset.name)
            finished = True
        finally:
            # Stopped (cancelled, failed, timed out): the workers are killed at once, not
            # asked to exit after a batch that may never end.
            await asyncio.gather(*(sandbox.close(graceful=finished) for sandbox in sandboxes))
            if n_workers > 1:
                await asyncio.to_thread(_merge_logs, log_path, [s.log_path for s in sandboxes])
            if withheld:
                await asyncio.shield(
                    _keep_output(storage, keys_withheld["output"], sandboxes, log_path)
                )
    except (SandboxError, InvalidAnswer) as exc:
        reason = exc.reason if isinstance(exc, SandboxError) else str(exc)
        if withheld:
            reason = cut_reason(reason)
        with log_path.open("a", encoding="utf-8") as fh:
            fh.write(f"[evaluator] failed: {reason}\n")
        await _upload_log(storage, keys["log"], log_path)
        raise JobFailed(stage, reason, log_tail=read_tail(log_path), log_key=keys["log"]) from None
    except BaseException:
        await asyncio.shield(_upload_log(storage, keys["log"], log_path))
        raise

    answers, inference_seconds, latencies, sizes, round_trips = run
    performance = summarize_performance(
        latencies,
        sizes,
        wall_time=max(inference_seconds, 1e-9),
        # Per worker (what the model needs), so a score does not depend on the parallelism.
        peak_memory_bytes=max(sandbox.peak_memory_bytes for sandbox in sandboxes),
    )
    uids = [row.get("uid", i) for i, row in enumerate(rows)]
    predictions_path = folder / "predictions.jsonl"
    await asyncio.to_thread(write_predictions, predictions_path, uids, answers)
    await storage.write_file(keys["predictions"], predictions_path)
    await _upload_log(storage, keys["log"], log_path)

    timings = {
        "init_seconds": round(max(float(s.ready.get("init_seconds", 0.0)) for s in sandboxes), 4),
        "inference_seconds": round(inference_seconds, 4),
        "wall_seconds": round(time.time() - started_wall, 4),
        "round_trip_p50_ms": round(_median(round_trips) * 1000, 3),
    }
    result = DatasetRun(
        dataset=dataset.name,
        sha256=dataset.sha256,
        uids=uids,
        answers=answers,
        references=[reference_of(row, task.label_field) for row in rows],
        performance=performance,
        timings=timings,
        worker=_worker_record(sandboxes, limits, task),
        keys=keys,
    )
    await write_result(storage, result)
    return result


async def _checked_rows(
    storage: Storage, dataset: DatasetSpec, task: TaskConfig, *, stage: str
) -> list[dict[str, Any]]:
    """The dataset's rows, refused when empty or without the task's input fields."""
    rows = await load_examples(storage, dataset)
    if not rows:
        raise JobFailed(stage, f"dataset {dataset.name} has no examples")
    missing = [f for f in task.input_fields if f not in rows[0]]
    if missing:
        raise RuntimeError(
            f"dataset {dataset.name} rows lack the task's input field(s) {missing}; "
            "the dataset and the task config disagree"
        )
    return rows


def _sandboxes(
    model: ModelSpec,
    task: TaskConfig,
    rows: Sequence[Any],
    folder: Path,
    log_path: Path,
    limits: SandboxLimits,
    server_name: str,
    *,
    withheld: bool = False,
) -> list[Sandbox]:
    """The handler workers for one dataset: `max_concurrent_transforms` of them side by side,
    as SageMaker sends that many requests at once to an instance (whose TorchServe runs one
    worker each), never more than there are batches."""
    n_workers = max(1, min(task.eval.max_concurrent_transforms, _n_batches(rows, task)))
    return [
        Sandbox(
            model_dir=model.model_dir,
            handler=model.handler,
            manifest=model.manifest,
            workdir=folder / ("work" if n_workers == 1 else f"work-{i + 1}"),
            log_path=log_path if n_workers == 1 else folder / f"worker-{i + 1}.log",
            output_path=folder / f"handler-output-{i + 1}.log" if withheld else None,
            limits=limits,
            python=model.python,
            batch_size=task.eval.batch_size,
            model_name=model.name,
            server_name=server_name,
            threads=None if n_workers == 1 else max(1, usable_cpus() // n_workers),
        )
        for i in range(n_workers)
    ]


def _worker_record(
    sandboxes: Sequence[Sandbox], limits: SandboxLimits, task: TaskConfig
) -> dict[str, Any]:
    """What ran the handler, for the receipt: versions, GPU, limits and the sandbox."""
    sandbox = sandboxes[0]
    ready = sandbox.ready
    return {
        "versions": ready.get("versions", {}),
        "gpu_id": ready.get("gpu_id"),
        "gpu_name": ready.get("gpu_name"),
        "limits": {
            **ready.get("limits", {}),
            "memory_mb": limits.memory_mb,
            "timeout_seconds": limits.timeout_seconds,
        },
        # What isolated the handler: tool, namespaces, uid, limits, seccomp profile.
        "sandbox": sandbox.sandbox,
        "network": sandbox.sandbox.get("network", "none"),
        # forked from the warm interpreter (sandbox.zygote), or a fresh interpreter
        "start": "forked" if sandbox.forked_from is not None else "exec",
        "batch_size": task.eval.batch_size,
        "workers": len(sandboxes),
    }


async def write_result(
    storage: Storage, run: DatasetRun, *, scores: list[dict[str, Any]] | None = None
) -> None:
    """`result.json`: what ran, how fast, in what, and (once computed) the scores."""
    run.result = {
        "dataset": run.dataset,
        "sha256": run.sha256,
        "n_examples": run.n_examples,
        "performance": run.performance,
        "timings": run.timings,
        "worker": run.worker,
        "files": run.keys,
        **({"scores": scores} if scores is not None else {}),
    }
    await storage.write_bytes(
        run.keys["result"], json.dumps(run.result, indent=2, sort_keys=True).encode()
    )


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else 0.0


def summarize_performance(
    latencies: Sequence[float],
    sizes: Sequence[int],
    *,
    wall_time: float,
    peak_memory_bytes: int,
) -> dict[str, float]:
    """The metric library's performance summary (throughput, latency percentiles, memory)."""
    from metrics.performance import summarize_performance

    return summarize_performance(
        latencies, sizes, wall_time=wall_time, peak_memory_bytes=peak_memory_bytes
    )


async def _run_within(seconds: float, work: Awaitable[Any], *, dataset: str) -> Any:
    """`work`, or a SandboxError once the dataset's whole run passes `seconds`
    (eval.dataset_timeout_seconds): a handler that answers every batch just in time cannot
    hold the fleet for longer than that."""
    try:
        async with asyncio.timeout(seconds):
            return await work
    except TimeoutError:
        raise SandboxError(
            "timeout",
            f"dataset {dataset}: the run took longer than {seconds:g} s "
            "(the task's eval.dataset_timeout_seconds); it was stopped",
            seconds=seconds,
        ) from None


def _n_batches(rows: Sequence[Any], task: TaskConfig) -> int:
    return -(-len(rows) // task.eval.batch_size)


# What a handler printed on a hidden dataset whose output the task withholds from the owner.
HANDLER_OUTPUT = "handler-output.log"
# How much of a failure's reason the owner sees there (it may quote the handler's message).
WITHHELD_REASON_CHARS = 300


def withholds_output(task: TaskConfig, dataset: str) -> bool:
    """Whether the handler's own output on `dataset` stays out of the owner's log: a hidden
    dataset of a task that does not set `[logs] hidden_output = true`."""
    config = next((d for d in task.datasets if d.name == dataset), None)
    return config is not None and config.access == "hidden" and not task.logs.hidden_output


def cut_reason(reason: str) -> str:
    """A failure's reason as the owner sees it where the handler's output is withheld."""
    if len(reason) <= WITHHELD_REASON_CHARS:
        return reason
    return reason[:WITHHELD_REASON_CHARS].rstrip() + " [cut: the rest may quote hidden examples]"


async def _keep_output(
    storage: Storage, key: str, sandboxes: Sequence[Sandbox], log_path: Path
) -> None:
    """Store the handler's withheld output for the organisers, and say so in the log."""
    parts = [s.output_path for s in sandboxes if s.output_path != s.log_path]

    def gather() -> bytes:
        chunks = []
        for i, part in enumerate(parts, start=1):
            if part.exists():
                if len(parts) > 1:
                    chunks.append(f"----- handler worker {i} of {len(parts)} -----\n".encode())
                chunks.append(part.read_bytes())
        return b"".join(chunks)

    body = await asyncio.to_thread(gather)
    with log_path.open("a", encoding="utf-8") as fh:
        fh.write(
            f"[evaluator] the handler's own output on this hidden dataset ({len(body)} bytes) "
            "is kept for the task's organisers, not shown here: it may echo hidden examples "
            "(the task's [logs] hidden_output setting)\n"
        )
    if body:
        await storage.write_bytes(key, body)


def _merge_logs(log_path: Path, parts: Sequence[Path]) -> None:
    """One stored log for the dataset: each handler worker's log under its own heading."""
    with log_path.open("ab") as out:
        for i, part in enumerate(parts, start=1):
            out.write(f"----- handler worker {i} of {len(parts)} -----\n".encode())
            if part.exists():
                body = part.read_bytes()
                out.write(body if body.endswith(b"\n") or not body else body + b"\n")
                part.unlink()


async def _unless_stopped(work: Awaitable[T], should_stop: StopCheck, *, dataset: str) -> T:
    """`work`'s result, or EvaluationCancelled as soon as `should_stop` says so: asked every
    second whatever the handler is doing (initialising included), so a cancelled submission's
    workers stop at once, not when their current batch (maybe never) answers."""
    job = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({job}, timeout=CANCEL_CHECK_SECONDS)
            if done:
                return job.result()
            if await should_stop():
                raise EvaluationCancelled(dataset)
    finally:
        if not job.done():
            job.cancel()
            await asyncio.gather(job, return_exceptions=True)


async def _run_batches(
    sandboxes: Sequence[Sandbox],
    rows: list[dict[str, Any]],
    task: TaskConfig,
    dataset: DatasetSpec,
) -> tuple[list[dict[str, Any]], float, list[float], list[int], list[float]]:
    size = task.eval.batch_size
    fields = task.input_fields
    starts = list(range(0, len(rows), size))
    total = len(starts)

    def where(k: int) -> str:
        start = starts[k]
        end = min(start + size, len(rows))
        return f"dataset {dataset.name}, batch {k + 1} of {total} (examples {start + 1}-{end})"

    def encode() -> list[bytes]:
        # Labels never leave the evaluator: the body holds the input fields and nothing else.
        shared: dict[float, float] = {}
        frames = []
        for k, start in enumerate(starts):
            chunk = rows[start : start + size]
            data = [{"body": {f: _share_floats(row[f], shared) for f in fields}} for row in chunk]
            frames.append(batch_frame(k, data))
        return frames

    # The requests are encoded while the handlers initialise (as the in-process baseline
    # builds its items before its clock starts), so the loops below only move bytes.
    encoding = asyncio.ensure_future(asyncio.to_thread(encode))
    try:
        await _first_failure([sandbox.start() for sandbox in sandboxes])
    finally:
        frames = await asyncio.shield(encoding)

    outputs: list[list[dict[str, Any]]] = [[] for _ in range(total)]
    latencies = [0.0] * total
    round_trips = [0.0] * total
    sizes = [min(size, len(rows) - start) for start in starts]
    next_batch = 0

    async def serve(sandbox: Sandbox) -> None:
        # Each worker takes the next unsent batch whenever it has room: a slow worker (or a
        # slow batch) never holds the others up, and answers land in their batch's slot.
        in_flight: deque[int] = deque()

        async def take(limit: int) -> None:
            nonlocal next_batch
            while next_batch < total and len(in_flight) < limit:
                k = next_batch
                next_batch += 1
                in_flight.append(k)
                await sandbox.send_frame(frames[k], where=where(k))
                frames[k] = b""  # sent: let it go

        await take(1)  # one batch each first, so that every worker has work before any has more
        if len(sandboxes) > 1:
            await asyncio.sleep(0)
        while True:
            await take(PIPELINE_DEPTH)
            if not in_flight:
                return
            k = in_flight.popleft()
            answer = await sandbox.receive(where=where(k))
            chunk = rows[starts[k] : starts[k] + size]
            uids = [row.get("uid", starts[k] + i) for i, row in enumerate(chunk)]
            outputs[k] = check_answers(answer.outputs, uids, task.output_fields, where=where(k))
            latencies[k] = answer.elapsed
            round_trips[k] = answer.round_trip

    began = time.perf_counter()
    await _first_failure([serve(sandbox) for sandbox in sandboxes])
    inference_seconds = time.perf_counter() - began
    answers = [answer for batch in outputs for answer in batch]
    return answers, inference_seconds, latencies, sizes, round_trips


async def _first_failure(jobs: Sequence[Awaitable[Any]]) -> None:
    """Run `jobs` together; the first to fail stops the others and its exception is raised."""
    if len(jobs) == 1:
        await jobs[0]
        return
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    # The first to fail, not one that failed because it was stopped.
    for task in [t for t in tasks if t in done] + [t for t in tasks if t not in done]:
        if not task.cancelled() and (error := task.exception()) is not None:
            raise error


_ZERO = 0.0
SHARED_FLOATS = 1 << 16  # distinct values remembered by _share_floats


def _share_floats(value: Any, shared: dict[float, float]) -> Any:
    """`value` with equal floats in its lists as one object each (same values, same types).

    marshal writes an object met again as a 5-byte reference, and the worker then decodes it
    without allocating: pixel and categorical data repeat a few values thousands of times.
    Zeros keep their sign (0.0 == -0.0 as dict keys); NaNs are never equal, so never shared.
    """
    if type(value) is not list or not value:
        return value
    if type(value[0]) is list:
        return [_share_floats(v, shared) for v in value]
    if len(shared) > SHARED_FLOATS or not all(type(v) is float for v in value):
        return value
    keep = shared.setdefault
    return [keep(v, v) if v else (_ZERO if math.copysign(1.0, v) > 0 else v) for v in value]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
