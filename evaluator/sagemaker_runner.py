"""The SageMaker runner (`WEIGHBRIDGE_RUNNER=sagemaker`): one dataset as a batch transform job.

The dataset's inputs (the task's input fields and each row's uid; never its labels) go to
`submissions/<id>/results/<dataset>/transform/input.jsonl` in the S3 storage; a transform job
runs the model the docker builder registered (`core.aws.sagemaker_model_name`) on the task's
instance type and count, in the task's region; SageMaker writes `input.jsonl.out` (one answer
per input line, in input order) under `transform/output/<job>/`; the answers are checked against
the task's output schema, joined to the uids and handed back as the same `DatasetRun` the local
runner returns, so scoring is one code path. A failed job fails the dataset with SageMaker's
FailureReason (it reaches the timeline and the owner's email).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.aws import AwsClients, error_code, error_message, sagemaker_model_name
from core.errors import JobFailed, WeighbridgeError
from evaluator import sagemaker_jobs as jobs
from evaluator.answers import InvalidAnswer, check_answers
from evaluator.runner import (
    DatasetRun,
    DatasetSpec,
    EvaluationCancelled,
    ModelSpec,
    StopCheck,
    load_examples,
    reference_of,
    results_prefix,
    write_predictions,
    write_result,
)

if TYPE_CHECKING:
    from core.settings import Settings
    from core.storage import Storage
    from core.taskconfig import TaskConfig

log = logging.getLogger(__name__)

# SageMaker's own limits: an invocation may take at most an hour; a request's payload at most
# 100 MB, and MaxConcurrentTransforms x MaxPayloadInMB at most 100 too.
INVOCATION_TIMEOUT_MAX = 3600
PAYLOAD_TOTAL_MAX_MB = 100
CLOUDWATCH_GROUP = "/aws/sagemaker/TransformJobs"


def s3_location(storage: Storage, key: str, *, runner: str = "sagemaker") -> str:
    """The s3:// URI of a storage key; the SageMaker runners need the storage on S3."""
    bucket = getattr(storage, "bucket", None)
    if not bucket:
        raise WeighbridgeError(
            f"WEIGHBRIDGE_RUNNER={runner} reads and writes job data in S3, but the storage is "
            f"{getattr(storage, 'url', type(storage).__name__)}; set WEIGHBRIDGE_STORAGE_URL to "
            "s3://bucket/prefix (the bucket in the tasks' SageMaker region)",
            field="WEIGHBRIDGE_STORAGE_URL",
        )
    prefix = str(getattr(storage, "prefix", "") or "").strip("/")
    return f"s3://{bucket}/{prefix}/{key}" if prefix else f"s3://{bucket}/{key}"


def require_s3_storage(settings: Settings, *, runner: str) -> None:
    if not settings.storage_url.startswith("s3://"):
        raise WeighbridgeError(
            f"WEIGHBRIDGE_RUNNER={runner} needs the storage on S3 (SageMaker reads the inputs "
            f"from it and writes the outputs to it), but WEIGHBRIDGE_STORAGE_URL is "
            f"{settings.storage_url}; set it to s3://bucket/prefix",
            field="WEIGHBRIDGE_STORAGE_URL",
        )


def transform_request(
    *,
    name: str,
    model_name: str,
    task: TaskConfig,
    input_uri: str,
    output_uri: str,
    submission_id: str,
    dataset: str,
) -> dict[str, Any]:
    """The CreateTransformJob request for one dataset of `task` (see the module docstring)."""
    config = task.eval
    return {
        "TransformJobName": name,
        "ModelName": model_name,
        # MultiRecord: SageMaker fills each request with as many lines as MaxPayloadInMB holds
        # (the task's batch_size only chooses between one line and many per request).
        "BatchStrategy": "MultiRecord" if config.batch_size > 1 else "SingleRecord",
        "MaxPayloadInMB": config.max_payload_mb,
        "MaxConcurrentTransforms": config.max_concurrent_transforms,
        "ModelClientConfig": {
            "InvocationsTimeoutInSeconds": int(
                min(max(1, round(config.timeout_seconds)), INVOCATION_TIMEOUT_MAX)
            ),
        },
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": input_uri}},
            "ContentType": "application/jsonlines",
            "SplitType": "Line",
            "CompressionType": "None",
        },
        "TransformOutput": {
            "S3OutputPath": output_uri,
            "Accept": "application/jsonlines",
            "AssembleWith": "Line",
        },
        "TransformResources": {
            "InstanceType": config.instance_type,
            "InstanceCount": config.instance_count,
        },
        "Tags": [
            {"Key": "weighbridge:submission", "Value": submission_id},
            {"Key": "weighbridge:dataset", "Value": dataset},
            {"Key": "weighbridge:fleet", "Value": config.eval_server_id},
        ],
    }


def input_lines(rows: list[dict[str, Any]], task: TaskConfig) -> tuple[bytes, int]:
    """input.jsonl: per row its uid and the task's input fields (nothing else: labels and any
    other column stay here), and the longest line's size in bytes."""
    out = bytearray()
    longest = 0
    for i, row in enumerate(rows):
        line = {"uid": row.get("uid", i), **{f: row[f] for f in task.input_fields}}
        encoded = json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        longest = max(longest, len(encoded))
        out += encoded
    return bytes(out), longest


def read_answers(data: bytes, uids: list[Any], task: TaskConfig, *, where: str) -> list[Any]:
    """The answers in `input.jsonl.out`, one per input, in the inputs' order.

    A line is one answer (SingleRecord, or a container that answers a request of N lines with
    N lines) or a JSON list of the answers to one request's lines (a container that answers a
    MultiRecord request with one array). When every answer names its `uid`, answers are joined
    to inputs by it; otherwise by position, which SageMaker keeps (AssembleWith Line)."""
    answers: list[Any] = []
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            raise InvalidAnswer(
                f"{where}: output line {number} is not JSON: {line[:200]!r}; the handler must "
                "answer each input with a JSON object"
            ) from None
        answers.extend(value if isinstance(value, list) else [value])
    if answers and all(isinstance(a, dict) and "uid" in a for a in answers):
        by_uid = {json.dumps(a["uid"]): a for a in answers}
        if len(by_uid) == len(answers) == len(uids):
            joined = [by_uid.get(json.dumps(uid)) for uid in uids]
            if all(a is not None for a in joined):
                answers = joined
    return check_answers(answers, uids, task.output_fields, where=where)


def _seconds(start: Any, end: Any) -> float | None:
    if isinstance(start, datetime) and isinstance(end, datetime):
        return max((end - start).total_seconds(), 0.0)
    return None


@dataclass
class SageMakerRunner:
    """Runs each dataset as a SageMaker batch transform job; see the module docstring."""

    clients: AwsClients
    max_jobs: int = 4
    # Between describes: from `poll.first` seconds doubling to `poll.cap`; creation retried
    # on throttling for `create.within` seconds.
    poll: jobs.Backoff = field(default_factory=lambda: jobs.Backoff(first=5.0, cap=60.0))
    create: jobs.Backoff = field(default_factory=lambda: jobs.Backoff(first=2.0, cap=60.0))
    name: str = "sagemaker"
    # The handler runs in SageMaker's container (with the image's packages), not on this host:
    # the evaluation looks up no local environment for it.
    handler_runs_here: bool = False
    describes: str = (
        "the evaluator machine that ran the SageMaker transform job (not its instances)"
    )

    @classmethod
    def from_settings(cls, settings: Settings) -> SageMakerRunner:
        require_s3_storage(settings, runner="sagemaker")
        return cls(
            clients=AwsClients(endpoint_url=settings.aws_endpoint_url, region=settings.aws_region),
            max_jobs=settings.sagemaker_max_jobs,
        )

    async def sagemaker_client(self, region: str) -> Any:
        """The SageMaker client of the task's region."""
        return await self.clients.client("sagemaker", region=region)

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
            "input": f"{prefix}/transform/input.jsonl",
        }
        try:
            input_uri = s3_location(storage, keys["input"])
        except WeighbridgeError as exc:
            raise JobFailed(stage, exc.message) from None
        config = task.eval
        if config.max_payload_mb * config.max_concurrent_transforms > PAYLOAD_TOTAL_MAX_MB:
            raise JobFailed(
                stage,
                f"the task's eval.max_payload_mb ({config.max_payload_mb}) times "
                f"eval.max_concurrent_transforms ({config.max_concurrent_transforms}) exceeds "
                f"SageMaker's {PAYLOAD_TOTAL_MAX_MB} MB; ask the task's owner to lower one",
            )
        rows = await load_examples(storage, dataset)
        if not rows:
            raise JobFailed(stage, f"dataset {dataset.name} has no examples")
        missing = [f for f in task.input_fields if f not in rows[0]]
        if missing:
            raise JobFailed(
                stage,
                f"dataset {dataset.name} rows lack the task's input field(s) {missing}; "
                "the dataset and the task config disagree",
            )
        data, longest = await asyncio.to_thread(input_lines, rows, task)
        if longest > config.max_payload_mb * 1024 * 1024:
            raise JobFailed(
                stage,
                f"dataset {dataset.name}: an input line is {longest} bytes, more than the "
                f"task's eval.max_payload_mb ({config.max_payload_mb} MB) lets SageMaker send",
            )
        uids = [row.get("uid", i) for i, row in enumerate(rows)]
        references = [reference_of(row, task.label_field) for row in rows]
        del rows  # the labels stay in `references` only

        region = config.aws_region
        client = await self.sagemaker_client(region)
        model_name = sagemaker_model_name(submission_id)
        await self._check_model(client, model_name, region=region, stage=stage)

        fleet = config.eval_server_id
        # A redelivered message picks up the job an earlier delivery started (still running,
        # or completed with its output) instead of paying for the same work twice.
        # The dataset's checksum is part of the work's identity: a dataset prepared again is
        # new work, never an earlier job's output.
        work = f"{submission_id}/{dataset.sha256}"
        earlier = await self._earlier_job(
            client, storage, jobs.job_family(fleet, work, dataset.name), prefix=prefix
        )
        name = earlier or jobs.job_name(fleet, work, dataset.name)
        if earlier is None:
            await storage.write_bytes(keys["input"], data)
        del data
        output_key = f"{prefix}/transform/output/{name}"
        keys["output"] = f"{output_key}/input.jsonl.out"
        request = transform_request(
            name=name,
            model_name=model_name,
            task=task,
            input_uri=input_uri,
            output_uri=s3_location(storage, output_key),
            submission_id=submission_id,
            dataset=dataset.name,
        )

        def cancelled() -> BaseException:
            return EvaluationCancelled(dataset.name)

        started_wall = time.time()
        if earlier is not None:
            log.info("transform job %s (an earlier delivery's) taken up", name)
        else:
            async with jobs.fleet_semaphore(fleet, self.max_jobs):
                await jobs.wait_for_slot(
                    lambda: jobs.count_in_progress(
                        client.list_transform_jobs, fleet=fleet, jobs_key="TransformJobSummaries"
                    ),
                    limit=self.max_jobs,
                    should_stop=should_stop,
                    backoff=self.poll,
                    cancelled=cancelled,
                )
                await self._create(client, request, stage=stage)
            log.info("transform job %s started for %s / %s", name, submission_id, dataset.name)
        what = f"transform job {name}"
        try:
            async with asyncio.timeout(config.dataset_timeout_seconds):
                described = await jobs.wait_for_end(
                    lambda: client.describe_transform_job(TransformJobName=name),
                    status_key="TransformJobStatus",
                    should_stop=should_stop,
                    stop=lambda: client.stop_transform_job(TransformJobName=name),
                    backoff=self.poll,
                    cancelled=cancelled,
                    what=what,
                )
        except TimeoutError:
            await self._write_log(storage, keys["log"], name=name, region=region, described=None)
            raise JobFailed(
                stage,
                f"dataset {dataset.name}: the SageMaker {what} took longer than "
                f"{config.dataset_timeout_seconds:g} s (the task's eval.dataset_timeout_seconds); "
                "it was stopped",
                log_key=keys["log"],
            ) from None
        log_text = await self._write_log(
            storage, keys["log"], name=name, region=region, described=described
        )
        status = described.get("TransformJobStatus")
        if status != "Completed":
            reason = described.get("FailureReason") or "SageMaker gave no reason"
            verb = "failed" if status == "Failed" else "was stopped outside Weighbridge"
            raise JobFailed(
                stage,
                f"dataset {dataset.name}: the SageMaker {what} {verb}: {reason}",
                log_tail=log_text,
                log_key=keys["log"],
            )

        where = f"dataset {dataset.name} (SageMaker {what})"
        try:
            out = await storage.read_bytes(keys["output"])
        except FileNotFoundError:
            raise JobFailed(
                stage,
                f"{where} completed but wrote no {keys['output']}; the model's container "
                "answered nothing",
                log_key=keys["log"],
            ) from None
        try:
            answers = await asyncio.to_thread(read_answers, out, uids, task, where=where)
        except InvalidAnswer as exc:
            raise JobFailed(stage, str(exc), log_tail=log_text, log_key=keys["log"]) from None

        predictions_path = scratch / dataset.name / "predictions.jsonl"
        predictions_path.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(write_predictions, predictions_path, uids, answers)
        await storage.write_file(keys["predictions"], predictions_path)

        job_seconds = _seconds(
            described.get("TransformStartTime"), described.get("TransformEndTime")
        )
        queued = _seconds(described.get("CreationTime"), described.get("TransformStartTime"))
        # Between the job's start and end as SageMaker reports them (instances up, all batches
        # answered); where it reports no span, the time this evaluator waited for the job.
        measured = job_seconds or max(time.time() - started_wall, 1e-9)
        performance = {"examples_per_second": len(uids) / measured}
        run = DatasetRun(
            dataset=dataset.name,
            sha256=dataset.sha256,
            uids=uids,
            answers=answers,
            references=references,
            performance=performance,
            timings={
                "job_seconds": round(job_seconds or 0.0, 4),
                "queued_seconds": round(queued or 0.0, 4),
                "wall_seconds": round(time.time() - started_wall, 4),
            },
            worker={
                "runner": self.name,
                "throughput_over": "job" if job_seconds else "evaluator wait",
                "job_name": name,
                "job_arn": described.get("TransformJobArn"),
                "model_name": model_name,
                "region": region,
                "instance_type": config.instance_type,
                "instance_count": config.instance_count,
                "batch_strategy": request["BatchStrategy"],
                "max_payload_mb": config.max_payload_mb,
                "max_concurrent_transforms": config.max_concurrent_transforms,
                "invocation_timeout_seconds": request["ModelClientConfig"][
                    "InvocationsTimeoutInSeconds"
                ],
                "batch_size": config.batch_size,
                "logs": f"CloudWatch {CLOUDWATCH_GROUP}, streams {name}/*",
            },
            keys=keys,
        )
        await write_result(storage, run)
        return run

    async def _earlier_job(
        self, client: Any, storage: Storage, family: str, *, prefix: str
    ) -> str | None:
        """The newest job of this submission and dataset that is still running, or that
        completed and left its output; None when there is none (or SageMaker cannot say)."""
        try:
            page = await jobs.call_with_retry(
                lambda: client.list_transform_jobs(
                    NameContains=family, SortBy="CreationTime", SortOrder="Descending"
                ),
                what="listing earlier transform jobs",
                backoff=self.create,
            )
        except Exception as exc:  # only a saving: without it a new job starts
            log.warning("could not list earlier transform jobs: %s", error_message(exc))
            return None
        for summary in page.get("TransformJobSummaries") or []:
            name = str(summary.get("TransformJobName") or "")
            if not name.startswith(family):
                continue
            status = summary.get("TransformJobStatus")
            if status == "InProgress":
                return name
            output = f"{prefix}/transform/output/{name}/input.jsonl.out"
            if status == "Completed" and await storage.exists(output):
                return name
        return None

    async def _check_model(self, client: Any, model_name: str, *, region: str, stage: str) -> None:
        try:
            await jobs.call_with_retry(
                lambda: client.describe_model(ModelName=model_name),
                what=f"describing model {model_name}",
                backoff=self.create,
            )
        except Exception as exc:
            if error_code(exc) not in ("ValidationException", "ResourceNotFound"):
                raise
            raise JobFailed(
                stage,
                f"the SageMaker model {model_name} does not exist in {region}: the submission "
                "was not built for SageMaker. Models are registered by the docker builder: run "
                "the builder with WEIGHBRIDGE_BUILDER=docker (same WEIGHBRIDGE_AWS_* settings and "
                "the task's region) and upload the model again",
            ) from None

    async def _create(self, client: Any, request: dict[str, Any], *, stage: str) -> None:
        name = request["TransformJobName"]
        try:
            await jobs.call_with_retry(
                lambda: client.create_transform_job(**request),
                what=f"creating transform job {name}",
                backoff=self.create,
            )
        except Exception as exc:
            if error_code(exc) != "ValidationException":
                raise
            raise JobFailed(
                stage, f"SageMaker refused the transform job {name}: {error_message(exc)}"
            ) from None

    async def _write_log(
        self,
        storage: Storage,
        key: str,
        *,
        name: str,
        region: str,
        described: dict[str, Any] | None,
    ) -> str:
        """The dataset's log: what SageMaker says of the job, and where its own logs are."""
        lines = [
            f"[evaluator] SageMaker transform job {name} in {region}",
            f"[evaluator] container logs: CloudWatch {CLOUDWATCH_GROUP}, streams {name}/*",
        ]
        if described is None:
            lines.append("[evaluator] stopped: the dataset's time ran out")
        else:
            for label in (
                "TransformJobStatus",
                "FailureReason",
                "CreationTime",
                "TransformStartTime",
                "TransformEndTime",
                "TransformJobArn",
            ):
                if described.get(label) is not None:
                    lines.append(f"[evaluator] {label}: {described[label]}")
        text = "\n".join(lines) + "\n"
        await storage.write_bytes(key, text.encode())
        return text
