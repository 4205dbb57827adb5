"""A benchmark run as a SageMaker training job (descriptors with `execution_engine =
"aws.sagemaker"`, on an evaluator with `WEIGHBRIDGE_RUNNER=sagemaker`).

The job runs the same command as a local run (`ml.benchmark_code` and `ml.args`, its `$(NAME)`s
expanded) by `/bin/sh -c` in the training container, through a small launcher shipped with the
scripts: the scripts, the launcher and the `emit()` modules go to S3 as the source archive
(`sagemaker_program` / `sagemaker_submit_directory`, as SageMaker's framework containers read
them) and are unpacked at /opt/ml/code (`$BAI_SCRIPTS_PATH`, `$WEIGHBRIDGE_SCRIPTS_PATH`); each
`[[data.sources]]` file is an input channel the launcher links to `/data/<path>`; the
`[environment]`'s Python packages go in the archive as requirements.txt, which the container
installs (its native packages cannot be: the image has what it has). The image is
SageMaker's training image of `ml.framework` (mxnet, tensorflow) at `ml.framework_version`, else
the descriptor's `env.docker_image` when it is in ECR (SageMaker pulls from ECR only), else
SageMaker's PyTorch training image; instance type and count come from `[hardware]`, the stopping
condition from `[run] timeout`, and the descriptor's metrics (name and pattern) are the job's
metric definitions, whose final values (FinalMetricDataList) become the run's metrics.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.aws import AwsClients, error_code, error_message
from core.descriptor import Descriptor
from core.errors import JobFailed
from core.messages import BenchmarkMessage
from core.settings import Settings
from core.storage import Storage
from evaluator import sagemaker_jobs as jobs
from evaluator.benchmark_job import BenchmarkJob, data_target, expand_references
from evaluator.runner import EvaluationCancelled, StopCheck
from evaluator.sagemaker_runner import s3_location

CODE = "/opt/ml/code"  # where SageMaker's containers unpack the source archive
DATA = "/data"
LAUNCHER = "weighbridge_launch.py"  # the archive's name for evaluator/sagemaker_launch.py
LAUNCHER_SOURCE = Path(__file__).resolve().parent / "sagemaker_launch.py"
PYTHONPATH_MODULES = Path(__file__).resolve().parent.parent / "sandbox" / "host" / "pythonpath"
DEFAULT_PYTORCH = "2.3"
DEFAULT_PY = "py311"
MAX_CHANNELS = 20  # SageMaker's limit on input channels
MAX_RUNTIME = 28 * 24 * 3600  # SageMaker's longest MaxRuntimeInSeconds
CLOUDWATCH_GROUP = "/aws/sagemaker/TrainingJobs"
_PY = re.compile(r"^(py)?(\d)\.?(\d*)$")


@dataclass(frozen=True)
class TrainingRun:
    """What one run's training job ended with (the caller turns it into the run's summary)."""

    name: str
    arn: str | None
    status: str
    failure: str | None
    metrics: dict[str, list[float]]
    seconds: float
    described: dict[str, Any]
    log: str


def py_version(descriptor: Descriptor) -> str:
    """custom_params.python_version as SageMaker names it ("3.11" and "py311" give "py311")."""
    given = (descriptor.custom_params.python_version or "").strip()
    found = _PY.match(given.replace(" ", ""))
    if not given:
        return DEFAULT_PY
    if not found:
        raise JobFailed(
            "evaluate",
            f"custom_params.python_version = {given!r} is not a Python version "
            '(write e.g. "3.11" or "py311")',
        )
    return f"py{found.group(2)}{found.group(3)}"


def instance_type(descriptor: Descriptor) -> str:
    """[hardware] instance_type as SageMaker names it: Anubis descriptors give EC2 names
    (`p3.8xlarge`), SageMaker's are the same with `ml.` before them."""
    name = descriptor.hardware.instance_type.strip()
    return name if name.startswith("ml.") else f"ml.{name}"


def training_image(descriptor: Descriptor, *, region: str) -> str:
    """The image the job runs (see the module docstring); JobFailed naming the field when
    SageMaker has no image for it."""
    from sagemaker import image_uris  # heavy; only where a training job is made

    ml = descriptor.ml
    framework: str
    if ml.framework:
        framework, version, field = ml.framework, ml.framework_version or None, "ml.framework"
    elif ".dkr.ecr." in descriptor.env.docker_image:
        return descriptor.env.docker_image
    else:
        framework, version, field = "pytorch", DEFAULT_PYTORCH, "env.docker_image"
    try:
        return str(
            image_uris.retrieve(
                framework,
                region,
                version=version,
                py_version=py_version(descriptor),
                instance_type=instance_type(descriptor),
                image_scope="training",
            )
        )
    except ValueError as exc:
        raise JobFailed(
            "evaluate",
            f"{field}: SageMaker has no {framework} training image for version {version!r}, "
            f"{py_version(descriptor)} on {instance_type(descriptor)} in {region}: {exc}",
        ) from None


def requirements_of(descriptor: Descriptor, scripts: Path) -> str | None:
    """`[environment]`'s pip requirements (its python_packages, or the requirements file in
    the scripts), which SageMaker's training containers install from requirements.txt."""
    env = descriptor.environment
    if env.python_packages:
        return "".join(f"{line}\n" for line in env.python_packages)
    if env.requirements:
        path = scripts / env.requirements
        if path.is_file():
            return path.read_text(encoding="utf-8")
    return None


def source_archive(scripts: Path, requirements: str | None = None) -> bytes:
    """The source archive: the benchmark's scripts, the launcher, the emit() modules and the
    environment's requirements.txt (at the top, where the training toolkit looks for it)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        if requirements is not None and not (scripts / "requirements.txt").is_file():
            info = tarfile.TarInfo("requirements.txt")
            text = requirements.encode()
            info.size, info.mode, info.mtime = len(text), 0o644, 0
            tar.addfile(info, io.BytesIO(text))
        if scripts.is_dir():
            for path in sorted(scripts.rglob("*")):
                if path.is_file() and not path.is_symlink():
                    tar.add(path, arcname=path.relative_to(scripts).as_posix())
        for module in sorted(PYTHONPATH_MODULES.glob("*.py")):
            if not (scripts / module.name).exists():
                tar.add(module, arcname=module.name)
        info = tarfile.TarInfo(LAUNCHER)
        body = LAUNCHER_SOURCE.read_bytes()
        info.size, info.mode, info.mtime = len(body), 0o644, 0
        tar.addfile(info, io.BytesIO(body))
    return buffer.getvalue()


def job_environment(job: BenchmarkJob, n: int, count: int) -> dict[str, str]:
    """The run's environment as the container sees it (paths inside the container)."""
    env = {k: v for k, v in job.run_env(n, count).items() if k not in ("PATH", "PYTHONPATH")}
    env.update(WEIGHBRIDGE_SCRIPTS_PATH=CODE, BAI_SCRIPTS_PATH=CODE, WEIGHBRIDGE_DATA_PATH=DATA)
    return env


def training_request(
    *,
    name: str,
    job: BenchmarkJob,
    message: BenchmarkMessage,
    storage: Storage,
    n: int,
    count: int,
    image: str,
    role_arn: str,
    source_uri: str,
    output_uri: str,
    submission_id: str,
    fleet: str,
    region: str,
) -> dict[str, Any]:
    """The CreateTrainingJob request of run n."""
    descriptor = job.descriptor
    env = job_environment(job, n, count)
    command = expand_references(job.command, env)
    if len(message.data) > MAX_CHANNELS:
        raise JobFailed(
            "evaluate",
            f"data.sources has {len(message.data)} files; a SageMaker training job takes at "
            f"most {MAX_CHANNELS} (pack them into fewer files, e.g. one tar)",
        )
    channels = {f"data{i}": str(data_target(ref)) for i, ref in enumerate(message.data)}
    hyper: dict[str, str] = {
        str(k): json.dumps(v) for k, v in descriptor.custom_params.hyper_params.items()
    }
    hyper.update(
        sagemaker_program=json.dumps(LAUNCHER),
        sagemaker_submit_directory=json.dumps(source_uri),
        sagemaker_region=json.dumps(region),
        weighbridge_command=json.dumps(command),
        weighbridge_data=json.dumps(json.dumps(channels)),
    )
    distributed = descriptor.hardware.distributed
    request: dict[str, Any] = {
        "TrainingJobName": name,
        "AlgorithmSpecification": {
            "TrainingImage": image,
            "TrainingInputMode": "File",
            "MetricDefinitions": [
                {"Name": m.name, "Regex": m.pattern} for m in descriptor.output.metrics
            ],
        },
        "RoleArn": role_arn,
        "HyperParameters": hyper,
        "OutputDataConfig": {"S3OutputPath": output_uri},
        "ResourceConfig": {
            "InstanceType": instance_type(descriptor),
            "InstanceCount": (distributed.num_instances if distributed else None) or 1,
            "VolumeSizeInGB": 30,
        },
        "StoppingCondition": {
            "MaxRuntimeInSeconds": max(1, min(int(descriptor.run.timeout), MAX_RUNTIME))
        },
        "Environment": env,
        "EnableNetworkIsolation": False,
        "Tags": [
            {"Key": "weighbridge:submission", "Value": submission_id},
            {"Key": "weighbridge:run", "Value": str(n)},
            {"Key": "weighbridge:fleet", "Value": fleet},
        ],
    }
    if message.data:
        request["InputDataConfig"] = [
            {
                "ChannelName": channel,
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": s3_location(storage, ref.key),
                        "S3DataDistributionType": "FullyReplicated",
                    }
                },
            }
            for channel, ref in zip(channels, message.data, strict=True)
        ]
    return request


def message_region(descriptor: Descriptor, *, default: str) -> str:
    """The region the job runs in: custom_params.region, else the evaluator's."""
    return (descriptor.custom_params.region or "").strip() or default


def final_metrics(described: dict[str, Any]) -> dict[str, list[float]]:
    """FinalMetricDataList as the run's metric series (one value per metric)."""
    series: dict[str, list[float]] = {}
    for item in described.get("FinalMetricDataList") or []:
        try:
            value = float(item["Value"])
        except (KeyError, TypeError, ValueError):
            continue
        series.setdefault(str(item.get("MetricName")), []).append(value)
    return series


async def run_training_job(
    *,
    clients: AwsClients,
    storage: Storage,
    job: BenchmarkJob,
    message: BenchmarkMessage,
    submission_id: str,
    n: int,
    count: int,
    fleet: str,
    region: str,
    role_arn: str,
    max_jobs: int,
    prefix: str,
    should_stop: StopCheck | None,
    poll: jobs.Backoff,
    create: jobs.Backoff,
    client: Any = None,
) -> TrainingRun:
    """Run n of the benchmark as a training job and wait for its end (see the module
    docstring); `prefix` is the run's results folder (the source archive and the job's
    output go under `<prefix>/sagemaker/`)."""
    if not role_arn:
        raise JobFailed(
            "evaluate",
            "a SageMaker training job needs an IAM role: set WEIGHBRIDGE_SAGEMAKER_ROLE_ARN on "
            "the evaluator (the role SageMaker runs the job as)",
        )
    region = message_region(job.descriptor, default=region)
    image = await asyncio.to_thread(training_image, job.descriptor, region=region)
    source_key = f"{prefix}/sagemaker/sourcedir.tar.gz"
    scripts = job.folder / "scripts"
    requirements = await asyncio.to_thread(requirements_of, job.descriptor, scripts)
    await storage.write_bytes(
        source_key, await asyncio.to_thread(source_archive, scripts, requirements)
    )
    name = jobs.job_name(fleet, submission_id, f"run-{n}")
    request = training_request(
        name=name,
        job=job,
        message=message,
        storage=storage,
        n=n,
        count=count,
        image=image,
        role_arn=role_arn,
        source_uri=s3_location(storage, source_key),
        output_uri=s3_location(storage, f"{prefix}/sagemaker/output"),
        submission_id=submission_id,
        fleet=fleet,
        region=region,
    )
    client = client or await clients.client("sagemaker", region=region)

    def cancelled() -> BaseException:
        return EvaluationCancelled(f"run-{n}")

    async with jobs.fleet_semaphore(fleet, max_jobs):
        await jobs.wait_for_slot(
            lambda: jobs.count_in_progress(
                client.list_training_jobs, fleet=fleet, jobs_key="TrainingJobSummaries"
            ),
            limit=max_jobs,
            should_stop=should_stop,
            backoff=poll,
            cancelled=cancelled,
        )
        try:
            await jobs.call_with_retry(
                lambda: client.create_training_job(**request),
                what=f"creating training job {name}",
                backoff=create,
            )
        except Exception as exc:
            if error_code(exc) != "ValidationException":
                raise
            raise JobFailed(
                "evaluate", f"SageMaker refused the training job {name}: {error_message(exc)}"
            ) from None
    began = time.monotonic()
    described = await jobs.wait_for_end(
        lambda: client.describe_training_job(TrainingJobName=name),
        status_key="TrainingJobStatus",
        should_stop=should_stop,
        stop=lambda: client.stop_training_job(TrainingJobName=name),
        backoff=poll,
        cancelled=cancelled,
        what=f"training job {name}",
    )
    status = str(described.get("TrainingJobStatus"))
    failure = None
    if status == "Failed":
        failure = f"the SageMaker training job {name} failed: " + (
            described.get("FailureReason") or "SageMaker gave no reason"
        )
    elif status == "Stopped":
        failure = f"the SageMaker training job {name} was stopped (its MaxRuntimeInSeconds, or "
        failure += "outside Weighbridge)"
    seconds = described.get("TrainingTimeInSeconds")
    lines = [
        f"[evaluator] SageMaker training job {name} in {region}, image {image}",
        f"[evaluator] command: {request['HyperParameters']['weighbridge_command']}",
        f"[evaluator] container logs: CloudWatch {CLOUDWATCH_GROUP}, streams {name}/*",
        f"[evaluator] TrainingJobStatus: {status}",
    ]
    if described.get("FailureReason"):
        lines.append(f"[evaluator] FailureReason: {described['FailureReason']}")
    for item in described.get("FinalMetricDataList") or []:
        lines.append(f"[evaluator] final metric {item.get('MetricName')}: {item.get('Value')}")
    return TrainingRun(
        name=name,
        arn=described.get("TrainingJobArn"),
        status=status,
        failure=failure,
        metrics=final_metrics(described) if failure is None else {},
        seconds=float(seconds) if seconds else time.monotonic() - began,
        described={
            k: v
            for k, v in described.items()
            if k not in ("ResponseMetadata", "HyperParameters", "Environment")
        },
        log="\n".join(lines) + "\n",
    )


def job_files(prefix: str) -> dict[str, str]:
    """The stored files of a SageMaker run (the same names as a local run's, where it has them)."""
    return {
        "log": f"{prefix}/log",
        "result.json": f"{prefix}/result.json",
        "source": f"{prefix}/sagemaker/sourcedir.tar.gz",
    }


async def run_benchmark_run(
    *,
    clients: AwsClients,
    storage: Storage,
    settings: Settings,
    job: BenchmarkJob,
    message: BenchmarkMessage,
    submission_id: str,
    kind: str,
    n: int,
    count: int,
    fleet: str,
    should_stop: StopCheck | None,
    poll: jobs.Backoff | None = None,
    create: jobs.Backoff | None = None,
    client: Any = None,
) -> dict[str, Any]:
    """Run n as a training job; its log and result.json stored; the run's summary (the same
    keys a local run's has) for BenchmarkEvaluation.end_run."""
    from evaluator.benchmarks import TAIL_CHARS, run_name, run_prefix, summarise_series

    prefix = run_prefix(submission_id, n)
    files = job_files(prefix)
    ran = await run_training_job(
        clients=clients,
        storage=storage,
        job=job,
        message=message,
        submission_id=submission_id,
        n=n,
        count=count,
        fleet=fleet,
        region=settings.aws_region,
        role_arn=settings.sagemaker_role_arn,
        max_jobs=settings.sagemaker_max_jobs,
        prefix=prefix,
        should_stop=should_stop,
        poll=poll or jobs.Backoff(first=10.0, cap=60.0),
        create=create or jobs.Backoff(first=2.0, cap=60.0),
        client=client,
    )
    await storage.write_bytes(files["log"], ran.log.encode())
    summaries = {
        metric: await asyncio.to_thread(summarise_series, values)
        for metric, values in ran.metrics.items()
        if values
    }
    units = {m.name: m.units for m in job.descriptor.output.metrics}
    warnings = [
        f"metric {m} has no final value in the SageMaker job (its pattern matched nothing)"
        for m in units
        if ran.failure is None and m not in ran.metrics
    ]
    result = {
        "submission_id": submission_id,
        "kind": kind,
        "run": n,
        "count": count,
        "command": job.command,
        "engine": "aws.sagemaker",
        "job": ran.described,
        "failure": ran.failure,
        "seconds": round(ran.seconds, 3),
        "metrics": ran.metrics,
        "summary": summaries,
        "metric_warnings": warnings,
        "values": message.values,
        "data": job.files,
        "files": files,
    }
    await storage.write_bytes(
        files["result.json"], json.dumps(result, indent=2, sort_keys=True, default=str).encode()
    )
    return {
        "run": run_name(n),
        "n": n,
        "status": "done" if ran.failure is None else "failed",
        "exit_code": None,
        "timed_out": False,
        "oom": False,
        "seconds": round(ran.seconds, 3),
        "failure": ran.failure,
        "log_tail": ran.log[-TAIL_CHARS:] if ran.failure else "",
        "metrics": ran.metrics,
        "summary": summaries,
        "metric_warnings": warnings,
        "peak": {},
        "files": files,
        "sandbox": {"engine": "aws.sagemaker", "job_name": ran.name, "job_arn": ran.arn},
        "scores": sorted(summaries) if ran.failure is None else [],
    }
