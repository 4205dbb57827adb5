"""The SageMaker runner against moto's server over HTTP (S3 and SageMaker).

moto creates and describes models and transform jobs, but its jobs say Completed at once and
write nothing to S3, cannot fail, and cannot be stopped (HTTP 500). Where a test needs what moto
does not do, it does that part itself and says so in its docstring.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import shutil
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from botocore.exceptions import ClientError
from hypothesis import given, settings
from hypothesis import strategies as st

from core.aws import AwsClients, sagemaker_model_name
from core.datasets import generate_rows
from core.errors import JobFailed, RetryableError, WeighbridgeError
from core.examples import __file__ as examples_init
from core.s3storage import S3Storage
from core.settings import Settings
from core.storage import Storage
from core.taskconfig import TaskConfig, load_task_config
from evaluator import sagemaker_jobs as jobs
from evaluator.runner import DatasetSpec, EvaluationCancelled, ModelSpec, prediction_values
from evaluator.runners import LocalRunner, runner_from_settings
from evaluator.sagemaker_runner import SageMakerRunner
from evaluator.scoring import score_metrics
from task_configs import FOLDER as TASK_CONFIGS

EXAMPLES = Path(examples_init).parent
ROLE = "arn:aws:iam::123456789012:role/weighbridge-sagemaker"
FAST = jobs.Backoff(first=0.01, cap=0.05, within=5.0)


# -- moto, a bucket, a dataset, a registered model -------------------------------------------


@pytest.fixture
async def storage(moto_url: str) -> AsyncIterator[S3Storage]:
    bucket = f"wb-sm-{uuid.uuid4().hex[:12]}"
    clients = AwsClients(endpoint_url=moto_url)
    s3 = await clients.client("s3")
    await s3.create_bucket(Bucket=bucket)
    await clients.close()
    store = S3Storage(bucket, "deploy", endpoint_url=moto_url)
    yield store
    await store.close()


def digits_task(**eval_overrides: Any) -> TaskConfig:
    task = load_task_config(TASK_CONFIGS / "digits.toml")
    return task.model_copy(update={"eval": task.eval.model_copy(update=eval_overrides)})


async def store_rows(storage: Storage, rows: list[dict[str, Any]], name: str) -> DatasetSpec:
    data = b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in rows)
    sha = hashlib.sha256(data).hexdigest()
    key = f"datasets/{sha}/{name}.jsonl"
    await storage.write_bytes(key, data)
    return DatasetSpec(name=name, key=key, sha256=sha, n_examples=len(rows))


async def register_model(moto_url: str, submission_id: str, region: str) -> None:
    """What the docker builder does for a submission (the test does it: no builder here)."""
    clients = AwsClients(endpoint_url=moto_url, region=region)
    sagemaker = await clients.client("sagemaker")
    await sagemaker.create_model(
        ModelName=sagemaker_model_name(submission_id),
        ExecutionRoleArn=ROLE,
        PrimaryContainer={"Image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/wb/models:x"},
    )
    await clients.close()


class Client:
    """A SageMaker client that forwards to moto's, with a hook after each describe; tests use it
    to do what moto does not (write the output, fail a job, throttle)."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.real, name)

        async def call(**kwargs: Any) -> Any:
            self.calls.append(name)
            return await self.on(name, method, kwargs)

        return call

    async def on(self, name: str, method: Any, kwargs: dict[str, Any]) -> Any:
        return await method(**kwargs)


class Runner(SageMakerRunner):
    """The runner with a test's client wrapper around moto's SageMaker client."""

    wrapper: type[Client] = Client
    made: Client | None = None

    async def sagemaker_client(self, region: str) -> Any:
        if self.made is None:
            self.made = self.wrapper(await super().sagemaker_client(region))
        return self.made


def make_runner(moto_url: str, wrapper: type[Client] = Client) -> Runner:
    runner = Runner(clients=AwsClients(endpoint_url=moto_url), max_jobs=2, poll=FAST, create=FAST)
    runner.wrapper = wrapper
    return runner


def throttled(code: str = "ThrottlingException") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "Rate exceeded"}}, "CreateTransformJob")


# -- the container SageMaker would run, played by the test -----------------------------------


def load_handler(folder: Path) -> Any:
    spec = importlib.util.spec_from_file_location(
        f"handler_{uuid.uuid4().hex}", folder / "handler.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def container_output(handler: Any, model_dir: Path, data: bytes, *, payload_mb: int) -> bytes:
    """What SageMaker writes to `input.jsonl.out` for a MultiRecord, SplitType Line job with
    AssembleWith Line, computed with the real handler: the lines go in requests of at most
    `payload_mb` MB; the container hands each line of a request to the handler as one item
    (`{"body": <the line's bytes>}`, as TorchServe hands a request body) and answers one JSON
    line per item; SageMaker joins the answers in input order, one per line."""
    context = SimpleNamespace(
        system_properties={"model_dir": str(model_dir), "gpu_id": None, "batch_size": 64},
        manifest={"model": {"handler": "handler.py"}},
        get_request_header=lambda *_: None,
    )
    handler.handle(None, context)
    lines = data.splitlines(keepends=True)
    out: list[bytes] = []
    request: list[bytes] = []
    size = 0

    def answer(request: list[bytes]) -> None:
        items = [{"body": bytearray(line.rstrip(b"\n"))} for line in request]
        out.extend(json.dumps(a).encode() + b"\n" for a in handler.handle(items, context))

    for line in lines:
        if request and size + len(line) > payload_mb * 1024 * 1024:
            answer(request)
            request, size = [], 0
        request.append(line)
        size += len(line)
    if request:
        answer(request)
    return b"".join(out)


def writes_output(model_dir: Path, storage: S3Storage) -> type[Client]:
    class Writes(Client):
        """After moto says Completed, writes what the job would have written (moto writes none)."""

        async def on(self, name: str, method: Any, kwargs: dict[str, Any]) -> Any:
            answer = await method(**kwargs)
            if name == "describe_transform_job" and answer["TransformJobStatus"] == "Completed":
                input_uri = answer["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"]
                output_uri = answer["TransformOutput"]["S3OutputPath"]
                base = f"s3://{storage.bucket}/{storage.prefix}/"
                data = await storage.read_bytes(input_uri.removeprefix(base))
                handler = load_handler(model_dir)
                out = await asyncio.to_thread(
                    container_output, handler, model_dir, data, payload_mb=answer["MaxPayloadInMB"]
                )
                await storage.write_bytes(output_uri.removeprefix(base) + "/input.jsonl.out", out)
            return answer

    return Writes


# -- tests ---------------------------------------------------------------------------------


async def test_scores_equal_the_local_runners_on_the_same_model_and_dataset(
    moto_url: str, storage: S3Storage, tmp_path: Path
) -> None:
    """The digits-linear example on the digits heldout set, once by the local runner and once
    as a SageMaker transform job in another region (eu-west-1) on moto. moto writes no output:
    the test writes `input.jsonl.out` itself from the real handler's answers to the input file
    the runner wrote (see container_output). The answers and the task's metrics are the same."""
    task = digits_task(aws_region="eu-west-1", instance_type="ml.c5.xlarge", instance_count=2)
    rows = generate_rows("digits", {"split": "heldout"})
    dataset = await store_rows(storage, list(rows), "heldout")
    model_dir = tmp_path / "digits-linear"
    shutil.copytree(EXAMPLES / "digits-linear", model_dir)
    model = ModelSpec(model_dir=model_dir, handler="handler.py", manifest={})

    local = await LocalRunner().run_dataset(
        storage,
        submission_id="local-1",
        task=task,
        dataset=dataset,
        model=model,
        scratch=tmp_path / "local",
    )
    submission = f"sub-{uuid.uuid4().hex}"
    await register_model(moto_url, submission, "eu-west-1")
    runner = make_runner(moto_url, writes_output(model_dir, storage))
    remote = await runner.run_dataset(
        storage,
        submission_id=submission,
        task=task,
        dataset=dataset,
        model=model,
        scratch=tmp_path / "remote",
    )

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
    assert [s["value"] for s in scored[0]] == [s["value"] for s in scored[1]]
    assert scored[1][0]["value"] > 0.85  # the example's documented heldout accuracy is 0.900

    assert runner.made is not None
    described = await runner.made.real.describe_transform_job(
        TransformJobName=remote.worker["job_name"]
    )
    assert described["BatchStrategy"] == "MultiRecord"
    assert described["TransformResources"] == {"InstanceType": "ml.c5.xlarge", "InstanceCount": 2}
    assert described["ModelClientConfig"]["InvocationsTimeoutInSeconds"] == 300
    assert described["MaxPayloadInMB"] == 6 and described["MaxConcurrentTransforms"] == 2
    assert described["TransformJobArn"].split(":")[3] == "eu-west-1"
    assert remote.worker["job_arn"] == described["TransformJobArn"]
    assert remote.worker["instance_type"] == "ml.c5.xlarge"
    predictions = (await storage.read_bytes(remote.keys["predictions"])).decode().splitlines()
    assert [json.loads(p)["uid"] for p in predictions] == remote.uids
    result = json.loads(await storage.read_bytes(remote.keys["result"]))
    assert result["files"]["output"].endswith("/input.jsonl.out")


async def test_the_input_file_holds_input_fields_and_uids_never_labels(
    moto_url: str, storage: S3Storage, tmp_path: Path
) -> None:
    """Every line of input.jsonl has exactly uid and the task's input fields; moto runs
    nothing, so the test's container answers from the inputs only (the parity of x)."""
    task = TaskConfig.model_validate(
        {
            "slug": "toy",
            "name": "Toy",
            "input_fields": ["x"],
            "output_fields": {"label": "int"},
            "datasets": [{"name": "test", "source": "generator:toy"}],
            "metrics": [{"name": "accuracy"}],
            "eval": {"batch_size": 1},
        }
    )
    rows: list[dict[str, Any]] = [
        {"uid": f"u{i}", "x": i, "label": i % 2, "secret": "gold"} for i in range(25)
    ]
    dataset = await store_rows(storage, rows, "test")
    submission = f"sub-{uuid.uuid4().hex}"
    await register_model(moto_url, submission, "us-east-1")
    seen: list[dict[str, Any]] = []

    class Parity(Client):
        """Writes the output moto does not: answers that name their uid, in reverse order
        (the runner joins them by uid)."""

        async def on(self, name: str, method: Any, kwargs: dict[str, Any]) -> Any:
            answer = await method(**kwargs)
            if name == "describe_transform_job":
                base = f"s3://{storage.bucket}/{storage.prefix}/"
                uri = answer["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"]
                lines = [
                    json.loads(x)
                    for x in (await storage.read_bytes(uri.removeprefix(base))).splitlines()
                ]
                seen.extend(lines)
                out = b"".join(
                    json.dumps({"uid": x["uid"], "label": int(x["x"]) % 2}).encode() + b"\n"
                    for x in reversed(lines)
                )
                key = answer["TransformOutput"]["S3OutputPath"].removeprefix(base)
                await storage.write_bytes(key + "/input.jsonl.out", out)
            return answer

    runner = make_runner(moto_url, Parity)
    run = await runner.run_dataset(
        storage,
        submission_id=submission,
        task=task,
        dataset=dataset,
        model=ModelSpec(model_dir=tmp_path, handler="handler.py", manifest={}),
        scratch=tmp_path / "scratch",
    )
    assert [set(line) for line in seen] == [{"uid", "x"}] * len(rows)
    assert [line["uid"] for line in seen] == [r["uid"] for r in rows]
    assert b"gold" not in await storage.read_bytes(run.keys["input"])
    assert [a["label"] for a in run.answers] == [int(r["x"]) % 2 for r in rows]
    assert run.references == [r["label"] for r in rows]
    assert runner.made is not None
    described = await runner.made.real.describe_transform_job(
        TransformJobName=run.worker["job_name"]
    )
    assert described["BatchStrategy"] == "SingleRecord"


async def test_a_failed_job_fails_the_dataset_with_sagemakers_reason(
    moto_url: str, storage: S3Storage, tmp_path: Path
) -> None:
    """moto cannot fail a job: the test's client wrapper makes describe say Failed with a
    FailureReason. The JobFailed (what the timeline and the email show) carries that reason,
    and the stored log names the job and the reason."""
    task = digits_task()
    dataset = await store_rows(storage, list(generate_rows("digits", {"split": "examples"})), "ex")
    submission = f"sub-{uuid.uuid4().hex}"
    await register_model(moto_url, submission, "us-east-1")
    reason = "ClientError: See job logs for more information: the handler raised KeyError 'pixels'"

    class Fails(Client):
        async def on(self, name: str, method: Any, kwargs: dict[str, Any]) -> Any:
            answer = await method(**kwargs)
            if name == "describe_transform_job":
                answer = {**answer, "TransformJobStatus": "Failed", "FailureReason": reason}
            return answer

    with pytest.raises(JobFailed) as failed:
        await make_runner(moto_url, Fails).run_dataset(
            storage,
            submission_id=submission,
            task=task,
            dataset=dataset,
            model=ModelSpec(model_dir=tmp_path, handler="handler.py", manifest={}),
            scratch=tmp_path / "scratch",
        )
    assert failed.value.stage == "evaluate:ex"
    assert reason in failed.value.reason and "failed" in failed.value.reason
    log = (await storage.read_bytes(failed.value.log_key)).decode()
    assert reason in log and "TransformJobs" in log


async def test_creation_is_retried_while_sagemaker_throttles(
    moto_url: str, storage: S3Storage, tmp_path: Path
) -> None:
    """A client wrapper raises ThrottlingException twice, then ResourceLimitExceeded once, then
    lets moto create the job (moto never throttles); the job is created once. The output
    moto does not write is written by the wrapper."""
    task = TaskConfig.model_validate(
        {
            "slug": "toy",
            "name": "Toy",
            "input_fields": ["x"],
            "output_fields": {"label": "int"},
            "datasets": [{"name": "test", "source": "generator:toy"}],
            "metrics": [{"name": "accuracy"}],
        }
    )
    rows = [{"uid": i, "x": i, "label": i % 2} for i in range(5)]
    dataset = await store_rows(storage, rows, "test")
    submission = f"sub-{uuid.uuid4().hex}"
    await register_model(moto_url, submission, "us-east-1")
    refusals = [throttled(), throttled(), throttled("ResourceLimitExceeded")]

    class Throttles(Client):
        async def on(self, name: str, method: Any, kwargs: dict[str, Any]) -> Any:
            if name == "create_transform_job" and refusals:
                raise refusals.pop(0)
            answer = await method(**kwargs)
            if name == "describe_transform_job":
                base = f"s3://{storage.bucket}/{storage.prefix}/"
                key = answer["TransformOutput"]["S3OutputPath"].removeprefix(base)
                await storage.write_bytes(key + "/input.jsonl.out", b'{"label": 0}\n' * 5)
            return answer

    runner = make_runner(moto_url, Throttles)
    run = await runner.run_dataset(
        storage,
        submission_id=submission,
        task=task,
        dataset=dataset,
        model=ModelSpec(model_dir=tmp_path, handler="handler.py", manifest={}),
        scratch=tmp_path / "scratch",
    )
    assert runner.made is not None
    assert runner.made.calls.count("create_transform_job") == 4
    assert refusals == [] and len(run.answers) == 5


async def test_a_redelivery_takes_up_the_job_an_earlier_delivery_finished(
    moto_url: str, storage: S3Storage, tmp_path: Path
) -> None:
    """The first delivery's job completed (its output written by the test's wrapper: moto
    writes none) but the evaluator died before storing the scores: the redelivered message
    reads that job's output and starts no second job."""
    task = digits_task()
    rows = list(generate_rows("digits", {"split": "examples"}))
    dataset = await store_rows(storage, rows, "ex")
    submission = f"sub-{uuid.uuid4().hex}"
    await register_model(moto_url, submission, "us-east-1")

    class Writes(Client):
        async def on(self, name: str, method: Any, kwargs: dict[str, Any]) -> Any:
            answer = await method(**kwargs)
            if name == "describe_transform_job":
                base = f"s3://{storage.bucket}/{storage.prefix}/"
                key = answer["TransformOutput"]["S3OutputPath"].removeprefix(base)
                out = b"".join(b'{"label": %d}\n' % (i % 10) for i in range(len(rows)))
                await storage.write_bytes(key + "/input.jsonl.out", out)
            return answer

    model = ModelSpec(model_dir=tmp_path, handler="handler.py", manifest={})
    first = make_runner(moto_url, Writes)
    done = await first.run_dataset(
        storage,
        submission_id=submission,
        task=task,
        dataset=dataset,
        model=model,
        scratch=tmp_path / "one",
    )
    again = make_runner(moto_url)
    redone = await again.run_dataset(
        storage,
        submission_id=submission,
        task=task,
        dataset=dataset,
        model=model,
        scratch=tmp_path / "two",
    )
    assert again.made is not None and "create_transform_job" not in again.made.calls
    assert redone.worker["job_name"] == done.worker["job_name"]
    assert redone.answers == done.answers == [{"label": i % 10} for i in range(len(rows))]

    # A dataset prepared again (another checksum) is new work: a new job.
    changed = await store_rows(storage, rows[:-1], "ex")
    other = make_runner(moto_url, Writes)
    with pytest.raises(JobFailed):  # the wrapper answers one label too many: refused
        await other.run_dataset(
            storage,
            submission_id=submission,
            task=task,
            dataset=changed,
            model=model,
            scratch=tmp_path / "three",
        )
    assert other.made is not None and "create_transform_job" in other.made.calls


async def test_throttling_past_the_bound_is_a_retryable_error() -> None:
    """Creation gives up after its bounded time with a RetryableError (the message is retried)."""
    attempts = 0

    async def refuse() -> None:
        nonlocal attempts
        attempts += 1
        raise throttled()

    with pytest.raises(RetryableError, match="kept refusing"):
        await jobs.call_with_retry(
            refuse, what="creating job x", backoff=jobs.Backoff(first=0.01, cap=0.02, within=0.1)
        )
    assert attempts >= 3


async def test_a_missing_model_names_the_docker_builder(
    moto_url: str, storage: S3Storage, tmp_path: Path
) -> None:
    task = digits_task()
    dataset = await store_rows(storage, list(generate_rows("digits", {"split": "examples"})), "ex")
    with pytest.raises(JobFailed) as failed:
        await make_runner(moto_url).run_dataset(
            storage,
            submission_id=f"never-built-{uuid.uuid4().hex[:8]}",
            task=task,
            dataset=dataset,
            model=ModelSpec(model_dir=tmp_path, handler="h.py", manifest={}),
            scratch=tmp_path / "scratch",
        )
    assert "WEIGHBRIDGE_BUILDER=docker" in failed.value.reason
    assert "does not exist in us-east-1" in failed.value.reason


async def test_a_cancel_stops_the_job_even_when_the_stop_call_fails(
    moto_url: str, storage: S3Storage, tmp_path: Path
) -> None:
    """moto's jobs end at once, so the wrapper says InProgress; the cancel asks SageMaker to
    stop the job (moto answers 500 to StopTransformJob: logged, the cancel stands)."""
    task = digits_task()
    dataset = await store_rows(storage, list(generate_rows("digits", {"split": "examples"})), "ex")
    submission = f"sub-{uuid.uuid4().hex}"
    await register_model(moto_url, submission, "us-east-1")

    class Running(Client):
        async def on(self, name: str, method: Any, kwargs: dict[str, Any]) -> Any:
            answer = await method(**kwargs)
            if name == "describe_transform_job":
                answer = {**answer, "TransformJobStatus": "InProgress"}
            return answer

    asked = 0

    async def should_stop() -> bool:
        nonlocal asked
        asked += 1
        return asked > 2

    runner = make_runner(moto_url, Running)
    with pytest.raises(EvaluationCancelled):
        await runner.run_dataset(
            storage,
            submission_id=submission,
            task=task,
            dataset=dataset,
            model=ModelSpec(model_dir=tmp_path, handler="h.py", manifest={}),
            scratch=tmp_path / "scratch",
            should_stop=should_stop,
        )
    assert runner.made is not None and "stop_transform_job" in runner.made.calls


async def test_the_fleet_waits_while_its_jobs_in_progress_reach_the_limit() -> None:
    """Only the fleet's own InProgress jobs count (not a fleet whose id extends its id)."""
    pages = [
        {
            "TransformJobSummaries": [
                {"TransformJobName": jobs.job_name("gpu", "s1", "d")},
                {"TransformJobName": jobs.job_name("gpu", "s2", "d")},
                {"TransformJobName": jobs.job_name("gpu-big", "s3", "d")},
            ]
        },
        {"TransformJobSummaries": [{"TransformJobName": jobs.job_name("gpu", "s1", "d")}]},
    ]
    counted: list[int] = []

    async def list_page(**kwargs: Any) -> dict[str, Any]:
        assert kwargs["StatusEquals"] == "InProgress"
        return pages[0] if len(counted) == 0 else pages[1]

    async def count() -> int:
        n = await jobs.count_in_progress(list_page, fleet="gpu", jobs_key="TransformJobSummaries")
        counted.append(n)
        return n

    await jobs.wait_for_slot(
        count, limit=2, should_stop=None, backoff=FAST, cancelled=lambda: EvaluationCancelled()
    )
    assert counted == [2, 1]


def test_the_runner_needs_s3_storage(tmp_path: Path) -> None:
    with pytest.raises(WeighbridgeError) as refused:
        runner_from_settings(Settings(home=tmp_path, runner="sagemaker", _env_file=None))  # type: ignore[call-arg]
    assert refused.value.field == "WEIGHBRIDGE_STORAGE_URL"
    assert "s3://bucket/prefix" in refused.value.message
    runner = runner_from_settings(
        Settings(home=tmp_path, runner="sagemaker", storage_url="s3://b/p", _env_file=None)  # type: ignore[call-arg]
    )
    assert isinstance(runner, SageMakerRunner) and runner.name == "sagemaker"


SAGEMAKER_NAME = r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$"
ids = st.text(min_size=1, max_size=80)


@settings(max_examples=300, deadline=None)
@given(fleet=st.from_regex(r"^[a-z0-9][a-z0-9_-]{0,58}$", fullmatch=True), sub=ids, what=ids)
def test_job_names_are_valid_and_distinct_per_work(fleet: str, sub: str, what: str) -> None:
    import re

    name = jobs.job_name(fleet, sub, what, token="t1")
    assert re.match(SAGEMAKER_NAME, name) and len(name) <= 63
    assert jobs.is_fleet_job(name, fleet)
    assert name.startswith(jobs.job_family(fleet, sub, what))
    assert jobs.job_name(fleet, sub + "x", what, token="t1") != name
    assert jobs.job_name(fleet, sub, what, token="t2") != name
