"""Benchmark runs as SageMaker training jobs, against moto's server over HTTP (S3, SageMaker).

moto creates and describes training jobs, but they say Completed at once, run nothing and
report no FinalMetricDataList. The main test plays the training container itself: it unpacks
the source archive the runner uploaded, links the input channels, runs the launcher with the
job's hyperparameters and environment as SageMaker's training toolkit would, applies the job's
metric definitions to the output, and reports their last matches as FinalMetricDataList.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from core.aws import AwsClients
from core.descriptor import parse_descriptor
from core.errors import JobFailed
from core.messages import BenchmarkMessage, BenchmarkRef, DataRef, SubmissionRef
from core.s3storage import S3Storage
from core.settings import Settings
from evaluator import sagemaker_jobs as jobs
from evaluator.benchmark_job import BenchmarkJob, command_of
from evaluator.sagemaker_training import (
    requirements_of,
    run_benchmark_run,
    source_archive,
    training_image,
)

ROLE = "arn:aws:iam::123456789012:role/weighbridge-sagemaker"
FAST = jobs.Backoff(first=0.01, cap=0.05, within=5.0)

DESCRIPTOR = """\
spec_version = "0.1.0"

[info]
description = "A small script-mode benchmark on SageMaker."
execution_engine = "aws.sagemaker"

[info.labels]
task_name = "sagemaker-smoke"

[hardware]
instance_type = "ml.c5.xlarge"

[hardware.distributed]
num_instances = 2

[env]
docker_image = "python:3.11"

[env.vars]
GREETING = "hello"

[ml]
benchmark_code = "python3 bench.py"
args = "--lines $(WEIGHBRIDGE_RUN)"

[custom_params]
python_version = "3.11"
region = "eu-west-1"

[custom_params.hyper_params]
epochs = 2

[run]
timeout = 900

[[output.metrics]]
name = "throughput"
units = "img/sec"
pattern = 'images/sec: ([-+]?\\d*\\.\\d+|\\d+)'

[[output.metrics]]
name = "bytes"
units = "B"
pattern = 'data bytes: (\\d+)'
"""

BENCH = """\
import os
import sys

path = os.path.join(os.environ["WEIGHBRIDGE_DATA_PATH"], "mnist", "train.gz")
print("data bytes:", os.path.getsize(path))
print("greeting:", os.environ["GREETING"], "args:", sys.argv[1:])
for i in range(3):
    print(f"images/sec: {100 + 10 * i}.5")
"""


@pytest.fixture
async def storage(moto_url: str) -> AsyncIterator[S3Storage]:
    bucket = f"wb-tr-{uuid.uuid4().hex[:12]}"
    clients = AwsClients(endpoint_url=moto_url)
    s3 = await clients.client("s3")
    await s3.create_bucket(Bucket=bucket)
    await clients.close()
    store = S3Storage(bucket, "deploy", endpoint_url=moto_url)
    yield store
    await store.close()


async def make_job(
    storage: S3Storage, tmp_path: Path, descriptor_text: str = DESCRIPTOR
) -> tuple[BenchmarkJob, BenchmarkMessage]:
    descriptor = parse_descriptor(descriptor_text)
    folder = tmp_path / "job"
    (folder / "scripts").mkdir(parents=True)
    (folder / "scripts" / "bench.py").write_text(BENCH)
    data = os.urandom(1234)
    sha = hashlib.sha256(data).hexdigest()
    key = f"datasets/{sha}/train.gz"
    await storage.write_bytes(key, data)
    message = BenchmarkMessage(
        submission=SubmissionRef(id=f"sub-{uuid.uuid4().hex}", kind="benchmark", name="smoke"),
        benchmark=BenchmarkRef(descriptor_key="d/descriptor.toml", descriptor_sha256="0" * 64),
        data=[
            DataRef(key=key, sha256=sha, size=len(data), path="/mnist/train.gz", src="https://x")
        ],
    )
    job = BenchmarkJob(
        descriptor=descriptor,
        command=command_of(descriptor),
        python=sys.executable,
        mounts=(),
        env={**descriptor.env.vars, "WEIGHBRIDGE_SCRIPTS_PATH": "/scripts", "PATH": "/bin"},
        script_sha256="1" * 64,
        folder=folder,
        scratch=folder / "scratch",
        files={"/data/mnist/train.gz": sha},
    )
    return job, message


def settings_for(role: str = ROLE) -> Settings:
    return cast(
        Settings,
        SimpleNamespace(aws_region="us-east-1", sagemaker_role_arn=role, sagemaker_max_jobs=2),
    )


class Client:
    """Forwards to moto's SageMaker client; `on` lets a test add what moto does not do."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.requests: dict[str, dict[str, Any]] = {}

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.real, name)

        async def call(**kwargs: Any) -> Any:
            self.requests[name] = kwargs
            return await self.on(name, await method(**kwargs))

        return call

    async def on(self, name: str, answer: Any) -> Any:
        return answer


def play_container(
    tmp_path: Path, request: dict[str, Any], archive: bytes, channels: dict[str, bytes]
) -> str:
    """What the training container does with the job (see the module docstring): the source
    archive at a stand-in for /opt/ml/code, each channel's file in <input>/data/<channel>/, the
    launcher run with the hyperparameters as `--name value` (sagemaker_* ones are the toolkit's
    own, not passed) and the job's Environment, with /data moved below tmp_path."""
    code = tmp_path / "container" / "code"
    code.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tar.extractall(code, filter="data")
    input_dir = tmp_path / "container" / "input"
    for channel, body in channels.items():
        (input_dir / "data" / channel).mkdir(parents=True)
        (input_dir / "data" / channel / "train.gz").write_bytes(body)
    argv = [sys.executable, str(code / "weighbridge_launch.py")]
    for name, value in request["HyperParameters"].items():
        if not name.startswith("sagemaker_"):
            decoded = json.loads(value)
            argv += [f"--{name}", decoded if isinstance(decoded, str) else json.dumps(decoded)]
    env = {
        **request["Environment"],
        "PATH": os.environ["PATH"],
        "SM_INPUT_DIR": str(input_dir),
        "WEIGHBRIDGE_DATA_PATH": str(tmp_path / "container" / "data"),
    }
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


def final_metric_data(request: dict[str, Any], output: str) -> list[dict[str, Any]]:
    """SageMaker's FinalMetricDataList: each metric definition's last match in the output."""
    found = []
    for definition in request["AlgorithmSpecification"]["MetricDefinitions"]:
        matches = re.findall(definition["Regex"], output)
        if matches:
            found.append({"MetricName": definition["Name"], "Value": float(matches[-1])})
    return found


def plays_container(storage: S3Storage, tmp_path: Path, outputs: list[str]) -> type[Client]:
    class Container(Client):
        """Once moto says Completed, plays the container (play_container) and reports the
        job's final metrics (final_metric_data): moto runs nothing and reports none."""

        async def on(self, name: str, answer: Any) -> Any:
            if name == "describe_training_job" and answer["TrainingJobStatus"] == "Completed":
                request = self.requests["create_training_job"]
                source = json.loads(request["HyperParameters"]["sagemaker_submit_directory"])
                base = f"s3://{storage.bucket}/{storage.prefix}/"
                archive = await storage.read_bytes(source.removeprefix(base))
                channels = {
                    c["ChannelName"]: await storage.read_bytes(
                        c["DataSource"]["S3DataSource"]["S3Uri"].removeprefix(base)
                    )
                    for c in request.get("InputDataConfig", [])
                }
                where = tmp_path / f"run-{len(outputs) + 1}"
                output = await asyncio.to_thread(play_container, where, request, archive, channels)
                outputs.append(output)
                answer = {**answer, "FinalMetricDataList": final_metric_data(request, output)}
            return answer

    return Container


async def test_a_run_is_a_training_job_whose_final_metrics_become_the_runs_metrics(
    moto_url: str, storage: S3Storage, tmp_path: Path
) -> None:
    job, message = await make_job(storage, tmp_path)
    outputs: list[str] = []
    Container = plays_container(storage, tmp_path, outputs)
    clients = AwsClients(endpoint_url=moto_url, region="eu-west-1")
    client = Container(await clients.client("sagemaker", region="eu-west-1"))
    summary = await run_benchmark_run(
        clients=clients,
        storage=storage,
        settings=settings_for(),
        job=job,
        message=message,
        submission_id=message.submission.id,
        kind="benchmark",
        n=1,
        count=1,
        fleet="default",
        should_stop=None,
        poll=FAST,
        create=FAST,
        client=client,
    )
    request = client.requests["create_training_job"]
    described = await client.real.describe_training_job(TrainingJobName=request["TrainingJobName"])
    await clients.close()

    assert summary["status"] == "done", summary
    assert summary["metrics"] == {"throughput": [120.5], "bytes": [1234.0]}
    assert summary["scores"] == ["bytes", "throughput"]
    # The command with its $(NAME)s expanded, then the hyperparameters, as in script mode.
    assert "greeting: hello args: ['--lines', '1', '--epochs', '2']" in outputs[0]
    # What SageMaker was asked for.
    assert described["TrainingJobArn"].split(":")[3] == "eu-west-1"
    assert described["ResourceConfig"]["InstanceType"] == "ml.c5.xlarge"
    assert described["ResourceConfig"]["InstanceCount"] == 2
    assert described["StoppingCondition"]["MaxRuntimeInSeconds"] == 900
    assert described["RoleArn"] == ROLE
    assert described["AlgorithmSpecification"]["TrainingImage"].endswith(
        "pytorch-training:2.3-cpu-py311"
    )
    assert [m["Name"] for m in request["AlgorithmSpecification"]["MetricDefinitions"]] == [
        "throughput",
        "bytes",
    ]
    assert json.loads(request["HyperParameters"]["epochs"]) == 2
    assert request["Environment"]["BAI_SCRIPTS_PATH"] == "/opt/ml/code"
    assert jobs.is_fleet_job(request["TrainingJobName"], "default")
    result = json.loads(await storage.read_bytes(summary["files"]["result.json"]))
    assert result["engine"] == "aws.sagemaker" and result["metrics"]["throughput"] == [120.5]
    assert (
        "CloudWatch /aws/sagemaker/TrainingJobs"
        in (await storage.read_bytes(summary["files"]["log"])).decode()
    )


async def test_a_failed_training_job_fails_the_run_with_sagemakers_reason(
    moto_url: str, storage: S3Storage, tmp_path: Path
) -> None:
    """moto cannot fail a job: the wrapper makes describe say Failed with a FailureReason."""
    job, message = await make_job(storage, tmp_path)
    reason = "AlgorithmError: ExecuteUserScriptError: exit code 1"

    class Fails(Client):
        async def on(self, name: str, answer: Any) -> Any:
            if name == "describe_training_job":
                answer = {**answer, "TrainingJobStatus": "Failed", "FailureReason": reason}
            return answer

    clients = AwsClients(endpoint_url=moto_url, region="eu-west-1")
    client = Fails(await clients.client("sagemaker", region="eu-west-1"))
    summary = await run_benchmark_run(
        clients=clients,
        storage=storage,
        settings=settings_for(),
        job=job,
        message=message,
        submission_id=message.submission.id,
        kind="benchmark",
        n=2,
        count=3,
        fleet="gpu",
        should_stop=None,
        poll=FAST,
        create=FAST,
        client=client,
    )
    await clients.close()
    assert summary["status"] == "failed" and reason in summary["failure"]
    assert summary["scores"] == [] and reason in summary["log_tail"]


async def test_without_a_role_the_run_names_the_setting(storage: S3Storage, tmp_path: Path) -> None:
    job, message = await make_job(storage, tmp_path)
    with pytest.raises(JobFailed, match="WEIGHBRIDGE_SAGEMAKER_ROLE_ARN"):
        await run_benchmark_run(
            clients=AwsClients(),
            storage=storage,
            settings=settings_for(role=""),
            job=job,
            message=message,
            submission_id="s",
            kind="benchmark",
            n=1,
            count=1,
            fleet="default",
            should_stop=None,
        )


def test_the_image_is_the_frameworks_an_ecr_image_or_pytorchs() -> None:
    anubis = (
        DESCRIPTOR.replace('docker_image = "python:3.11"', 'docker_image = "x"')
        .replace("[ml]\n", '[ml]\nframework = "tensorflow"\nframework_version = "1.15.3"\n')
        .replace('python_version = "3.11"', 'python_version = "py3"')
    )
    assert training_image(parse_descriptor(anubis), region="us-east-1") == (
        "763104351884.dkr.ecr.us-east-1.amazonaws.com/tensorflow-training:1.15.3-cpu-py3"
    )
    ecr = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/bench:1"
    mine = DESCRIPTOR.replace('"python:3.11"', f'"{ecr}"')
    assert training_image(parse_descriptor(mine), region="eu-west-1") == ecr
    gpu = DESCRIPTOR.replace('"ml.c5.xlarge"', '"g5.2xlarge"')  # an EC2 name, as Anubis wrote
    assert training_image(parse_descriptor(gpu), region="eu-west-1").endswith(
        "pytorch-training:2.3-gpu-py311"
    )
    bad = DESCRIPTOR.replace('python_version = "3.11"', 'python_version = "three"')
    with pytest.raises(JobFailed, match=r"custom_params\.python_version"):
        training_image(parse_descriptor(bad), region="eu-west-1")


async def test_a_whole_benchmark_on_a_sagemaker_evaluator_scores_each_run(
    moto_url: str,
    tmp_path: Path,
    database_url: str,
    db: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The benchmark message through the fleet's evaluator (BenchmarkEvaluation) with
    WEIGHBRIDGE_RUNNER=sagemaker and S3 storage: two runs, each a training job, scored per run
    and over all. AwsClients' SageMaker client is wrapped so that the test plays the container
    (plays_container): moto runs nothing and reports no final metrics."""
    from core.context import start_services
    from tests.conftest import make_settings
    from tests.evaluator.factories import events_of, make_user, status_of
    from tests.evaluator.test_benchmarks import evaluate, make_benchmark, scores_of

    bucket = f"wb-tb-{uuid.uuid4().hex[:12]}"
    clients = AwsClients(endpoint_url=moto_url)
    await (await clients.client("s3")).create_bucket(Bucket=bucket)
    await clients.close()
    settings = make_settings(
        tmp_path,
        database_url,
        storage_url=f"s3://{bucket}/wb",
        aws_endpoint_url=moto_url,
        runner="sagemaker",
        sagemaker_role_arn=ROLE,
    )
    services = await start_services(settings, migrate=False)
    outputs: list[str] = []
    Container = plays_container(cast(S3Storage, services.storage), tmp_path, outputs)
    plain = AwsClients.client

    async def wrapped(self: AwsClients, service: str, *, region: str | None = None) -> Any:
        opened = await plain(self, service, region=region)
        return Container(opened) if service == "sagemaker" else opened

    monkeypatch.setattr(AwsClients, "client", wrapped)
    try:
        user = await make_user(services)
        toml = DESCRIPTOR.replace("[run]\ntimeout = 900", "[run]\ncount = 2\ntimeout = 900")
        sid = await make_benchmark(
            services,
            user,
            toml,
            scripts={"bench.py": BENCH},
            data=[("/mnist/train.gz", "train.gz", b"x" * 99)],
        )
        await evaluate(services)
        assert await status_of(services, sid) == "done"
        scores = await scores_of(services, sid)
        assert scores[("run-1", "throughput")].value == 120.5
        assert scores[("run-2", "bytes")].value == 99.0
        assert scores[("all", "throughput")].value == 120.5
        assert len(outputs) == 2 and "args: ['--lines', '2', '--epochs', '2']" in outputs[1]
        last = (await events_of(services, sid))[-1]
        receipt = last.envelope["payload"]
        assert last.type == "receipt" and receipt["runner"] == "sagemaker"
        assert receipt["hardware"] == {
            "instance_type": "ml.c5.xlarge",
            "instance_count": 2,
            "region": "eu-west-1",
        }
    finally:
        await services.close()


def test_the_environments_packages_go_in_the_archive_as_requirements_txt(tmp_path: Path) -> None:
    """SageMaker's training toolkit installs requirements.txt from the source folder."""
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "bench.py").write_text(BENCH)
    wanted = DESCRIPTOR + '\n[environment]\npython_packages = ["tqdm==4.66.4", "numpy"]\n'
    text = requirements_of(parse_descriptor(wanted), scripts)
    assert text == "tqdm==4.66.4\nnumpy\n"
    with tarfile.open(fileobj=io.BytesIO(source_archive(scripts, text)), mode="r:gz") as tar:
        names = set(tar.getnames())
        requirements = tar.extractfile("requirements.txt")
        assert requirements is not None and requirements.read() == text.encode()
    assert {"bench.py", "weighbridge_launch.py", "weighbridge_metrics.py"} <= names
    assert requirements_of(parse_descriptor(DESCRIPTOR), scripts) is None


async def test_a_sagemaker_evaluator_needs_no_local_environment(
    storage: S3Storage, tmp_path: Path
) -> None:
    """The builder made the benchmark's environment on its own host; on an evaluator that
    runs aws.sagemaker descriptors on SageMaker the job is prepared without it."""
    from core.errors import JobFailed
    from evaluator.benchmark_job import prepare_job
    from sandbox.jail import current_jail

    text = DESCRIPTOR.encode()
    key = "submissions/s/upload/bench.toml"
    await storage.write_bytes(key, text)
    message = BenchmarkMessage(
        submission=SubmissionRef(id="s", kind="benchmark", name="smoke"),
        benchmark=BenchmarkRef(
            descriptor_key=key,
            descriptor_sha256=hashlib.sha256(text).hexdigest(),
            env_key="envs/" + "e" * 64,
        ),
    )
    job = await prepare_job(
        message,
        storage=storage,
        home=tmp_path / "home",
        folder=tmp_path / "a",
        jail=current_jail(),
        on_sagemaker=True,
    )
    assert job.descriptor.info.execution_engine == "aws.sagemaker"
    with pytest.raises(JobFailed, match="not on this evaluator's host"):
        await prepare_job(
            message,
            storage=storage,
            home=tmp_path / "home",
            folder=tmp_path / "b",
            jail=current_jail(),
        )
