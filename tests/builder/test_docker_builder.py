"""The docker builder against moto's server over HTTP: the build context, ECR, the SageMaker
model (and endpoint), idempotent retries, and the settings it refuses to start without.

No Docker engine runs on the test machines: these tests point the docker client at an engine
that is not there (DOCKER_HOST names a missing socket), so `docker build`/`docker push` are
not run and the tests check that the builder says so. Everything around them (the context
the build would read, the ECR repository and its login, the model, the endpoint) is real
against moto. Where an engine is reachable, one further test builds the image for real.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shlex
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
import zipfile
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aioboto3
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from builder.backends import LocalBuilder, builder_from_settings, check_builder
from builder.builds import BuildOptions, BuildResult
from builder.docker_builder import DockerBuilder, DockerSettings, docker_engine_missing
from builder.ecr import aws_failure
from builder.processes import BuildLog
from builder.worker import build_consumer
from core.aws import AwsClients
from core.context import Services
from core.errors import JobFailed, RetryableError, WeighbridgeError
from core.models import new_id
from core.states import Status
from core.taskconfig import BuildConfig, EvalConfig, TaskConfig, load_task_config
from tests.builder.bundles import tar_folder, write_model_folder
from tests.builder.test_worker import load, submit
from tests.conftest import FIXTURES

ROLE = "arn:aws:iam::123456789012:role/weighbridge-sagemaker"
NO_ENGINE = "unix:///nonexistent/weighbridge-test/docker.sock"


@pytest.fixture
def no_docker_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """The docker client talks to an engine that does not exist (as on this machine)."""
    monkeypatch.setenv("DOCKER_HOST", NO_ENGINE)


def toy_task(*, build: dict[str, Any] | None = None, evaluation: dict[str, Any] | None = None):
    task = load_task_config(FIXTURES / "task_configs" / "toy.toml")
    return task.model_copy(
        update={"build": BuildConfig(**(build or {})), "eval": EvalConfig(**(evaluation or {}))}
    )


def make_builder(
    tmp_path: Path, moto_url: str, *, prefix: str, required: bool = False, docker: str = "docker"
) -> DockerBuilder:
    return DockerBuilder(
        local=LocalBuilder(envs_root=tmp_path / "envs"),
        aws=AwsClients(endpoint_url=moto_url, region="us-east-1"),
        config=DockerSettings(
            role_arn=ROLE, ecr_prefix=prefix, docker_required=required, docker=docker
        ),
    )


async def build_with(
    builder: DockerBuilder, tmp_path: Path, task: TaskConfig, submission_id: str
) -> tuple[BuildResult, str]:
    """One build of a small model bundle (the same upload each time, as a retry fetches it
    again) in a fresh work folder; returns it and its log."""
    source = tmp_path / "bundle.tar.gz"
    if not source.exists():
        folder = write_model_folder(tmp_path / "bundle", files={"model.pt": b"weights"})
        tar_folder(folder, source, arcname="m")
    work = tmp_path / f"work-{uuid.uuid4().hex[:6]}"
    log = BuildLog(work / "build" / "log")
    try:
        result = await builder.build(
            source,
            source_name="m.tar.gz",
            submission_id=submission_id,
            model_name="parity",
            build=task.build,
            work=work,
            log=log,
            options=BuildOptions(),
            task=task,
        )
    finally:
        log.close()
    return result, log.path.read_text()


@pytest.fixture
async def aws(moto_url: str) -> AsyncIterator[dict[str, Any]]:
    """Our own view of moto (clients of the test, not the builder's), by service and region."""
    session = aioboto3.Session()
    opened: dict[str, Any] = {}
    managers = []

    async def client(service: str, region: str) -> Any:
        key = f"{service}@{region}"
        if key not in opened:
            manager = session.client(service, endpoint_url=moto_url, region_name=region)
            opened[key] = await manager.__aenter__()
            managers.append(manager)
        return opened[key]

    yield {"client": client}
    for manager in managers:
        await manager.__aexit__(None, None, None)


async def record_create_model(builder: DockerBuilder, region: str) -> list[dict[str, Any]]:
    """The CreateModel requests the builder's own SageMaker client sends (botocore's event
    hook on the real request; nothing is replaced)."""
    sent: list[dict[str, Any]] = []
    client = await builder.aws.client("sagemaker", region=region)
    client.meta.events.register(
        "provide-client-params.sagemaker.CreateModel",
        lambda params, **_: sent.append(dict(params)),
    )
    return sent


def copy_sources(dockerfile: str) -> list[str]:
    """The test's own reading of the COPY lines (sources only: flags and the target dropped)."""
    sources = []
    for line in dockerfile.splitlines():
        words = shlex.split(line) if line.strip().upper().startswith("COPY ") else []
        sources += [w for w in words[1:-1] if not w.startswith("--")]
    return sources


async def test_a_cpu_build_has_a_complete_context_an_ecr_repository_and_an_isolated_model(
    tmp_path: Path, moto_url: str, aws: dict[str, Any], no_docker_engine: None
) -> None:
    """No Docker engine here: the image step is reported skipped (on the timeline's warnings
    and in the log), while the context, ECR and SageMaker parts run against moto."""
    prefix = f"wb-{uuid.uuid4().hex[:8]}"
    task = toy_task(evaluation={"aws_region": "eu-west-1", "max_payload_mb": 20})
    builder = make_builder(tmp_path, moto_url, prefix=prefix)
    submission_id = new_id()
    sent = await record_create_model(builder, "eu-west-1")
    try:
        result, log = await build_with(builder, tmp_path, task, submission_id)
    finally:
        await builder.close()
    folder = result.folder

    dockerfile = (folder / "Dockerfile").read_text()
    assert dockerfile.splitlines()[3] == "FROM pytorch/torchserve:0.12.0-cpu"
    assert "NVIDIA_VISIBLE_DEVICES" not in dockerfile
    sources = copy_sources(dockerfile)
    assert sources == ["config.properties", "serving.mar"]
    for name in sources:
        assert (folder / name).is_file(), f"the Dockerfile copies {name}, missing from the context"
    assert "--models parity=parity.mar" in dockerfile and 'CMD ["serve"]' in dockerfile
    ignore = (folder / ".dockerignore").read_text().split()
    # TorchServe lets through what the SageMaker runner sends (requests of max_payload_mb).
    properties = (folder / "config.properties").read_text().splitlines()
    assert f"max_request_size={20 * 1024 * 1024 + 65536}" in properties
    assert "default_response_timeout=600" in properties  # the task's eval.timeout_seconds
    assert "inference_address=http://0.0.0.0:8080" in properties  # where SageMaker calls
    spec_docker = json.loads((folder / "specification.json").read_text())["docker"]
    assert spec_docker["torchserve"]["max_request_size"] == 20 * 1024 * 1024 + 65536
    assert spec_docker["serving_mar"] == "serving.mar"
    assert ignore == ["*", "!Dockerfile", "!config.properties", "!serving.mar"]

    spec = json.loads((folder / "specification.json").read_text())
    assert spec["builder"] == "docker"
    repository = f"{prefix}/models"
    ecr = await aws["client"]("ecr", "eu-west-1")
    found = (await ecr.describe_repositories(repositoryNames=[repository]))["repositories"][0]
    assert found["imageScanningConfiguration"] == {"scanOnPush": True}
    assert found["imageTagMutability"] == "IMMUTABLE"
    assert f"created {found['repositoryUri']}" in log
    assert spec["ecr"] == {
        "repository": repository,
        "uri": found["repositoryUri"],
        "arn": found["repositoryArn"],
        "region": "eu-west-1",
    }
    # The ECR login was fetched for the registry the image goes to; its password stays out.
    token = (await ecr.get_authorization_token())["authorizationData"][0]
    registry = token["proxyEndpoint"].removeprefix("https://")
    assert f"authorization token for {registry}" in log
    assert "auth-token" not in log and "auth-token" not in json.dumps(spec)

    image = spec["image"]
    assert image["uri"] == f"{found['repositoryUri']}:{image['tag']}"
    assert image["tag"] == f"{submission_id}-{spec['docker']['context_sha256'][:12]}"
    assert image["status"] == "skipped" and image["digest"] is None
    assert "not built here" in image["reason"] and "Docker engine" in image["reason"]
    assert spec["warnings"] == [image["reason"]]
    assert "WARNING: image" in log and "WEIGHBRIDGE_DOCKER_REQUIRED" in log

    sagemaker = await aws["client"]("sagemaker", "eu-west-1")
    model = await sagemaker.describe_model(ModelName=f"wb-{submission_id}")
    assert model["PrimaryContainer"]["Image"] == image["uri"]
    assert model["ExecutionRoleArn"] == ROLE
    # moto's server drops EnableNetworkIsolation (it always describes False): the request the
    # builder sent is read instead.
    assert [(c["ModelName"], c["EnableNetworkIsolation"]) for c in sent] == [
        (f"wb-{submission_id}", True)
    ]
    listed = await sagemaker.list_tags(ResourceArn=model["ModelArn"])
    tags = {t["Key"]: t["Value"] for t in listed["Tags"]}
    assert tags == {"weighbridge:submission": submission_id, "weighbridge:task": "toy"}
    assert spec["sagemaker"]["model_name"] == f"wb-{submission_id}"
    assert spec["sagemaker"]["model_arn"] == model["ModelArn"]
    assert spec["sagemaker"]["endpoint"] is None
    # The task's region, not the settings' default one.
    elsewhere = await aws["client"]("sagemaker", "us-east-1")
    names = [m["ModelName"] for m in (await elsewhere.list_models())["Models"]]
    assert f"wb-{submission_id}" not in names


async def test_a_gpu_task_gets_the_gpu_base_and_its_endpoint_and_a_retry_makes_nothing_new(
    tmp_path: Path, moto_url: str, aws: dict[str, Any], no_docker_engine: None
) -> None:
    """No Docker engine here (the image step is skipped); the endpoint parts run on moto."""
    prefix = f"wb-{uuid.uuid4().hex[:8]}"
    task = toy_task(
        build={"gpu": True},
        evaluation={
            "aws_region": "us-west-2",
            "instance_type": "ml.g4dn.xlarge",
            "instance_count": 2,
            "create_endpoint": True,
        },
    )
    submission_id = new_id()
    builder = make_builder(tmp_path, moto_url, prefix=prefix)
    sent = await record_create_model(builder, "us-west-2")
    try:
        first, _ = await build_with(builder, tmp_path, task, submission_id)
        spec = json.loads((first.folder / "specification.json").read_text())
        again, log = await build_with(builder, tmp_path, task, submission_id)
    finally:
        await builder.close()
    dockerfile = (first.folder / "Dockerfile").read_text()
    assert "\nFROM pytorch/torchserve:0.12.0-gpu\n" in dockerfile
    assert "ENV NVIDIA_VISIBLE_DEVICES=all" in dockerfile

    sagemaker = await aws["client"]("sagemaker", "us-west-2")
    endpoint = spec["sagemaker"]["endpoint"]
    assert endpoint["name"] == f"wb-{submission_id}"
    config = await sagemaker.describe_endpoint_config(EndpointConfigName=endpoint["config_name"])
    (variant,) = config["ProductionVariants"]
    assert variant["ModelName"] == f"wb-{submission_id}"
    assert variant["InstanceType"] == "ml.g4dn.xlarge" and variant["InitialInstanceCount"] == 2
    described = await sagemaker.describe_endpoint(EndpointName=endpoint["name"])
    assert described["EndpointConfigName"] == endpoint["config_name"]
    assert endpoint["arn"] == described["EndpointArn"]

    # The second attempt found everything made: the same tag, model and endpoint, nothing new.
    second = json.loads((again.folder / "specification.json").read_text())
    assert second["image"]["tag"] == spec["image"]["tag"]
    assert second["sagemaker"]["model_arn"] == spec["sagemaker"]["model_arn"]
    assert "already registered" in log
    assert f"found {spec['ecr']['uri']}" in log  # the repository made by the first attempt
    models = [m["ModelName"] for m in (await sagemaker.list_models())["Models"]]
    assert models.count(f"wb-{submission_id}") == 1
    configs = (await sagemaker.list_endpoint_configs())["EndpointConfigs"]
    assert [c["EndpointConfigName"] for c in configs].count(endpoint["config_name"]) == 1
    assert len(sent) == 1 and sent[0]["EnableNetworkIsolation"] is True


async def test_a_changed_base_image_registers_the_model_again_on_the_new_image(
    tmp_path: Path, moto_url: str, aws: dict[str, Any], no_docker_engine: None
) -> None:
    """No Docker engine here (the image step is skipped); SageMaker's part runs on moto."""
    prefix = f"wb-{uuid.uuid4().hex[:8]}"
    submission_id = new_id()
    builder = make_builder(tmp_path, moto_url, prefix=prefix)
    try:
        old, _ = await build_with(builder, tmp_path, toy_task(), submission_id)
        changed = toy_task(build={"base_image_cpu": "example.org/serve:cpu-2"})
        new, _ = await build_with(builder, tmp_path, changed, submission_id)
    finally:
        await builder.close()
    old_image = json.loads((old.folder / "specification.json").read_text())["image"]["uri"]
    new_image = json.loads((new.folder / "specification.json").read_text())["image"]["uri"]
    assert old_image != new_image
    assert "\nFROM example.org/serve:cpu-2\n" in (new.folder / "Dockerfile").read_text()
    sagemaker = await aws["client"]("sagemaker", "us-east-1")
    model = await sagemaker.describe_model(ModelName=f"wb-{submission_id}")
    assert model["PrimaryContainer"]["Image"] == new_image


async def test_the_sagemaker_pytorch_base_is_aws_image_for_the_region_and_must_match_gpu(
    tmp_path: Path, moto_url: str, no_docker_engine: None
) -> None:
    """The base image URI comes from the `sagemaker` package (offline: its own tables); the
    image itself is not built here (no Docker engine)."""
    prefix = f"wb-{uuid.uuid4().hex[:8]}"
    builder = make_builder(tmp_path, moto_url, prefix=prefix)
    task = toy_task(
        build={"base_image": "sagemaker-pytorch", "pytorch_version": "2.3"},
        evaluation={"aws_region": "eu-west-1", "instance_type": "ml.c5.xlarge"},
    )
    mismatch = toy_task(
        build={"base_image": "sagemaker-pytorch", "gpu": True},
        evaluation={"instance_type": "ml.m5.xlarge"},
    )
    try:
        result, _ = await build_with(builder, tmp_path, task, new_id())
        with pytest.raises(JobFailed) as refused:
            await build_with(builder, tmp_path, mismatch, new_id())
    finally:
        await builder.close()
    base = "763104351884.dkr.ecr.eu-west-1.amazonaws.com/pytorch-inference:2.3-cpu-py311"
    assert f"\nFROM {base}\n" in (result.folder / "Dockerfile").read_text()
    spec = json.loads((result.folder / "specification.json").read_text())
    assert spec["docker"]["base_image"] == base and spec["docker"]["base"] == "sagemaker-pytorch"
    assert "build.gpu = true" in refused.value.reason
    assert "ml.m5.xlarge runs the CPU image" in refused.value.reason


async def test_docker_required_fails_the_build_where_no_engine_answers(
    tmp_path: Path, moto_url: str, aws: dict[str, Any], no_docker_engine: None
) -> None:
    """The engine is missing on purpose (DOCKER_HOST names no socket): the real docker client
    is asked and answers that there is none; nothing is registered then."""
    builder = make_builder(tmp_path, moto_url, prefix=f"wb-{uuid.uuid4().hex[:8]}", required=True)
    submission_id = new_id()
    try:
        with pytest.raises(JobFailed) as failed:
            await build_with(builder, tmp_path, toy_task(), submission_id)
    finally:
        await builder.close()
    assert "not built here" in failed.value.reason
    assert "WEIGHBRIDGE_DOCKER_REQUIRED is set" in failed.value.reason
    sagemaker = await aws["client"]("sagemaker", "us-east-1")
    names = [m["ModelName"] for m in (await sagemaker.list_models())["Models"]]
    assert f"wb-{submission_id}" not in names


def test_the_docker_builder_refuses_to_start_without_a_valid_role(services: Services) -> None:
    docker = services.settings.model_copy(update={"builder": "docker"})
    with pytest.raises(WeighbridgeError) as missing:
        builder_from_settings(replace(services, settings=docker))
    assert missing.value.field == "WEIGHBRIDGE_SAGEMAKER_ROLE_ARN"
    assert "set WEIGHBRIDGE_SAGEMAKER_ROLE_ARN" in missing.value.message

    # `serve builder` and `up` check it before they start (cli/server.py: check_backends).
    with pytest.raises(WeighbridgeError, match="set WEIGHBRIDGE_SAGEMAKER_ROLE_ARN"):
        check_builder("docker", docker)

    wrong = docker.model_copy(update={"sagemaker_role_arn": "weighbridge-sagemaker"})
    with pytest.raises(WeighbridgeError) as invalid:
        builder_from_settings(replace(services, settings=wrong))
    assert invalid.value.field == "WEIGHBRIDGE_SAGEMAKER_ROLE_ARN"
    assert "is not an IAM role ARN" in invalid.value.message


async def test_the_worker_with_the_docker_builder_says_the_image_was_not_built(
    services: Services, tmp_path: Path, moto_url: str, aws: dict[str, Any], no_docker_engine: None
) -> None:
    """Through the build queue (WEIGHBRIDGE_BUILDER=docker): no Docker engine here, so the
    timeline's `built` line says the image was not built; the stored specification names
    the SageMaker model the runner will use."""
    settings = services.settings.model_copy(
        update={
            "builder": "docker",
            "aws_endpoint_url": moto_url,
            "sagemaker_role_arn": ROLE,
            "ecr_prefix": f"wb-{uuid.uuid4().hex[:8]}",
        }
    )
    docker_services = replace(services, settings=settings)
    folder = write_model_folder(tmp_path / "m", files={"model.pt": b"weights"})
    submission_id = await submit(docker_services, tar_folder(folder, tmp_path / "m.tar.gz"))
    consumer = build_consumer(docker_services)
    try:
        assert await consumer.run_once() == 1
    finally:
        await consumer.handle.keywords["builder"].close()
    submission, events = await load(docker_services, submission_id)
    assert submission.status == Status.BUILT, submission.error
    assert "not built here" in (events[-1].message or "")
    stored = await services.storage.read_bytes(
        f"submissions/{submission_id}/build/specification.json"
    )
    spec = json.loads(stored)
    assert spec["builder"] == "docker" and spec["image"]["status"] == "skipped"
    sagemaker = await aws["client"]("sagemaker", "us-east-1")
    model = await sagemaker.describe_model(ModelName=spec["sagemaker"]["model_name"])
    assert model["PrimaryContainer"]["Image"] == spec["image"]["uri"]


async def test_the_image_builds_where_a_docker_engine_is_reachable(
    tmp_path: Path, moto_url: str
) -> None:
    """Only where `docker info` answers (never on the project's test machines): the rendered
    context builds into an image with the real engine (moto's ECR cannot take a push, so the
    push is left out)."""
    missing = await docker_engine_missing()
    if missing is not None:
        pytest.skip(f"no real image build: {missing}")
    if os.environ.get("DOCKER_HOST") == NO_ENGINE:
        pytest.skip("DOCKER_HOST points at no engine")
    # The builder's own docker command is one that does not exist, so that it does not push
    # to moto's registry (no such host); the test builds the context it leaves.
    prefix = f"wb-{uuid.uuid4().hex[:8]}"
    builder = make_builder(tmp_path, moto_url, prefix=prefix, docker="/nonexistent/docker")
    try:
        result, _ = await build_with(builder, tmp_path, toy_task(), new_id())
    finally:
        await builder.close()
    tag = f"weighbridge-test:{uuid.uuid4().hex[:8]}"
    built = await asyncio.to_thread(
        subprocess.run,
        ["docker", "build", "--tag", tag, str(result.folder)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert built.returncode == 0, built.stdout[-4000:] + built.stderr[-4000:]
    await asyncio.to_thread(
        subprocess.run, ["docker", "image", "rm", tag], capture_output=True, timeout=120
    )


MANIFEST = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
    "config": {
        "mediaType": "application/vnd.docker.container.image.v1+json",
        "size": 2,
        "digest": "sha256:" + "0" * 64,
    },
    "layers": [],
}

# A stand-in for the docker CLI (no engine can run here): it records each call (arguments,
# what came on stdin, DOCKER_CONFIG) and "pushes" by putting a manifest in moto's ECR under
# the pushed tag, as a real push would leave it.
STAND_IN_DOCKER = """#!{python}
import json, os, sys
args = sys.argv[1:]
stdin = sys.stdin.read() if args[:1] == ["login"] else ""
with open(os.environ["WB_TEST_DOCKER_CALLS"], "a") as fh:
    fh.write(json.dumps({{"args": args, "stdin": stdin,
                         "config": os.environ.get("DOCKER_CONFIG")}}) + "\\n")
if args[:1] == ["info"]:
    print("27.0.0-stand-in")
elif args[:1] == ["push"]:
    import boto3
    repository_uri, tag = args[1].rsplit(":", 1)
    registry, repository = repository_uri.split("/", 1)
    ecr = boto3.client("ecr", endpoint_url=os.environ["WB_TEST_MOTO"],
                       region_name=registry.split(".")[3])
    ecr.put_image(repositoryName=repository, imageTag=tag,
                  imageManifest=os.environ["WB_TEST_MANIFEST"])
"""


async def test_an_image_an_earlier_attempt_pushed_is_kept_and_needs_no_engine(
    tmp_path: Path, moto_url: str, aws: dict[str, Any], no_docker_engine: None
) -> None:
    """The first attempt has no Docker engine (skipped); then the image is put in moto's ECR
    under its tag, as a push from an earlier attempt would have left it. The next attempt
    finds it and asks for no engine, even with WEIGHBRIDGE_DOCKER_REQUIRED."""
    prefix = f"wb-{uuid.uuid4().hex[:8]}"
    submission_id = new_id()
    builder = make_builder(tmp_path, moto_url, prefix=prefix)
    try:
        first, _ = await build_with(builder, tmp_path, toy_task(), submission_id)
    finally:
        await builder.close()
    tag = json.loads((first.folder / "specification.json").read_text())["image"]["tag"]
    ecr = await aws["client"]("ecr", "us-east-1")
    put = await ecr.put_image(
        repositoryName=f"{prefix}/models", imageTag=tag, imageManifest=json.dumps(MANIFEST)
    )
    required = make_builder(tmp_path, moto_url, prefix=prefix, required=True)
    try:
        again, log = await build_with(required, tmp_path, toy_task(), submission_id)
    finally:
        await required.close()
    image = json.loads((again.folder / "specification.json").read_text())["image"]
    assert image["status"] == "present" and image["tag"] == tag
    assert image["digest"] == put["image"]["imageId"]["imageDigest"]
    assert "is in ECR already" in log and "docker build" not in log


async def test_with_an_engine_the_builder_logs_in_by_stdin_builds_and_pushes(
    tmp_path: Path, moto_url: str, aws: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No Docker engine can run here, so a stand-in docker CLI (STAND_IN_DOCKER) answers
    `info`, records every call and leaves the pushed manifest in moto's ECR; what is checked
    is what the builder asks of docker: the ECR password only on stdin (also for AWS's own
    registry of the PyTorch base), build and push of the tagged image, the login removed."""
    calls = tmp_path / "docker-calls.jsonl"
    docker = tmp_path / "bin" / "docker"
    docker.parent.mkdir()
    docker.write_text(STAND_IN_DOCKER.format(python=sys.executable))
    docker.chmod(0o755)
    monkeypatch.setenv("WB_TEST_DOCKER_CALLS", str(calls))
    monkeypatch.setenv("WB_TEST_MOTO", moto_url)
    monkeypatch.setenv("WB_TEST_MANIFEST", json.dumps(MANIFEST))
    prefix = f"wb-{uuid.uuid4().hex[:8]}"
    task = toy_task(
        build={"base_image": "sagemaker-pytorch"},
        evaluation={"aws_region": "eu-west-1", "instance_type": "ml.c5.xlarge"},
    )
    builder = make_builder(tmp_path, moto_url, prefix=prefix, required=True, docker=str(docker))
    try:
        result, log = await build_with(builder, tmp_path, task, new_id())
    finally:
        await builder.close()
    spec = json.loads((result.folder / "specification.json").read_text())
    image = spec["image"]
    ecr = await aws["client"]("ecr", "eu-west-1")
    token = (await ecr.get_authorization_token())["authorizationData"][0]
    password = base64.b64decode(token["authorizationToken"]).decode().partition(":")[2]
    registry = token["proxyEndpoint"].removeprefix("https://")

    made = [json.loads(line) for line in calls.read_text().splitlines()]
    assert [c["args"][0] for c in made] == ["info", "login", "login", "build", "push"]
    logins = [c for c in made if c["args"][0] == "login"]
    assert [c["args"][-1] for c in logins] == [
        registry,
        "763104351884.dkr.ecr.eu-west-1.amazonaws.com",  # the base image's registry
    ]
    assert all(c["args"][1:4] == ["--username", "AWS", "--password-stdin"] for c in logins)
    assert all(c["stdin"] == password for c in logins)
    assert not any(password in " ".join(c["args"]) for c in made)
    assert password not in log and password not in json.dumps(spec)
    build = next(c["args"] for c in made if c["args"][0] == "build")
    assert build[build.index("--tag") + 1] == image["uri"]
    assert build[build.index("--platform") + 1] == "linux/amd64"
    assert build[-1] == str(result.folder)
    assert next(c["args"] for c in made if c["args"][0] == "push") == ["push", image["uri"]]
    config = Path(made[1]["config"])
    assert config.is_relative_to(tmp_path)
    assert not await asyncio.to_thread(config.exists)  # the login went with the build

    found = await ecr.describe_images(
        repositoryName=f"{prefix}/models", imageIds=[{"imageTag": image["tag"]}]
    )
    assert image["status"] == "pushed"
    assert image["digest"] == found["imageDetails"][0]["imageDigest"]
    assert spec["warnings"] == []


def test_aws_faults_that_pass_are_retried_and_refusals_fail_the_build() -> None:
    """moto neither throttles nor refuses permissions: the ClientErrors botocore raises for
    them are made here, as botocore makes them from AWS's answers."""

    def answer(code: str) -> ClientError:
        return ClientError({"Error": {"Code": code, "Message": f"{code} here"}}, "CreateModel")

    assert isinstance(aws_failure("x", answer("ThrottlingException")), RetryableError)
    assert isinstance(aws_failure("x", answer("ServiceUnavailable")), RetryableError)
    assert isinstance(aws_failure("x", EndpointConnectionError(endpoint_url="h")), RetryableError)
    refused = aws_failure("SageMaker refused to create the model wb-1", answer("AccessDenied"))
    assert isinstance(refused, JobFailed)
    assert refused.reason.startswith(
        "SageMaker refused to create the model wb-1 (AccessDenied: AccessDenied here)"
    )


ECHO_HANDLER = """
import json


def handle(data, context):
    if data is None:
        return None
    return [{"keys": sorted(item["body"]), "x": item["body"]["x"]} for item in data]
"""

# Loads serving.mar's handler as TorchServe's model loader would (the module's `handle`,
# first called with None) and sends it what SageMaker's requests become in TorchServe. The
# Context is a stand-in with the parts handlers use: TorchServe (Java) is not installed here.
SERVE = """
import json, sys, zipfile
model_dir = sys.argv[1]
zipfile.ZipFile(sys.argv[2]).extractall(model_dir)
sys.path.insert(0, model_dir)
manifest = json.load(open(model_dir + "/MAR-INF/MANIFEST.json"))
handler = manifest["model"]["handler"]
module = __import__(handler[:-3])


class Context:
    def __init__(self):
        self.system_properties = {"model_dir": model_dir, "gpu_id": None, "batch_size": 1}
        self.manifest = manifest
        self.types = {}

    def set_response_content_type(self, index, value):
        self.types[index] = value


context = Context()
assert module.handle(None, context) is None
lines = b'{"uid":"a","x":3,"label":1}\\n{"uid":"b","x":4}\\n'
answers = module.handle([{"body": bytearray(lines)}, {"body": {"uid": "c", "x": 5}}], context)
print(json.dumps({"handler": handler, "answers": answers, "types": context.types,
                  "seen_handler": context.manifest["model"]["handler"]}))
"""


async def test_the_image_serves_json_lines_to_the_model_handler_as_the_contract_says(
    tmp_path: Path, moto_url: str, no_docker_engine: None
) -> None:
    """The serving archive the image holds, run as TorchServe would load it (TorchServe is not
    installed here: a small driver stands in for its model loader and Context): one request
    of JSON lines from SageMaker reaches the model's own handler as one item per line holding
    only the task's input fields, and the answers go back as JSON lines in order."""
    (tmp_path / "echo").mkdir()
    folder = write_model_folder(tmp_path / "echo" / "m", handler=ECHO_HANDLER)
    tar_folder(folder, tmp_path / "echo" / "bundle.tar.gz", arcname="m")
    builder = make_builder(tmp_path, moto_url, prefix=f"wb-{uuid.uuid4().hex[:8]}")
    try:
        result, _ = await build_with(builder, tmp_path / "echo", toy_task(), new_id())
    finally:
        await builder.close()
    served = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", SERVE, str(tmp_path / "served"), str(result.folder / "serving.mar")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert served.returncode == 0, served.stderr[-4000:]
    out = json.loads(served.stdout)
    assert out["handler"] == "weighbridge_serving.py"
    assert out["seen_handler"] == "handler.py"  # the model's own handler sees its own manifest
    assert out["answers"] == [
        '{"keys":["x"],"x":3}\n{"keys":["x"],"x":4}\n',
        '{"keys":["x"],"x":5}\n',
    ]
    assert out["types"] == {"0": "application/jsonlines", "1": "application/jsonlines"}
    # model.mar itself, which the local runner uses, keeps the model's own handler.
    with zipfile.ZipFile(result.folder / "model.mar") as archive:
        assert json.loads(archive.read("MAR-INF/MANIFEST.json"))["model"]["handler"] == "handler.py"


def test_real_torchserve_answers_sagemaker_json_lines_through_the_serving_archive(
    tmp_path: Path, moto_url: str, no_docker_engine: None
) -> None:
    """The serving archive the image holds, in a real TorchServe 0.12 (its Java frontend and
    Python worker, as the image runs it, without the image: no Docker engine here; skipped
    where Java or TorchServe is absent): SageMaker's batch-transform request (POST
    /invocations, JSON lines) is answered line by line by the model's own handler, which saw
    only the task's input fields; /ping answers as SageMaker's health check needs."""
    from tests.conformance.test_torchserve import TorchServe, torchserve_missing

    missing = torchserve_missing()
    if missing is not None:
        pytest.skip(missing)
    (tmp_path / "echo").mkdir()
    folder = write_model_folder(tmp_path / "echo" / "m", handler=ECHO_HANDLER)
    tar_folder(folder, tmp_path / "echo" / "bundle.tar.gz", arcname="m")

    async def build() -> BuildResult:
        builder = make_builder(tmp_path, moto_url, prefix=f"wb-{uuid.uuid4().hex[:8]}")
        try:
            result, _ = await build_with(builder, tmp_path / "echo", toy_task(), new_id())
        finally:
            await builder.close()
        return result

    result = asyncio.run(build())
    store = tmp_path / "store"
    store.mkdir()
    shutil.copyfile(result.folder / "serving.mar", store / "parity.mar")
    (tmp_path / "ts").mkdir()
    server = TorchServe(tmp_path / "ts", store, ["parity"])
    try:
        server.start()
        server.wait_ready(90)
        base = f"http://127.0.0.1:{server.inference}"
        with urllib.request.urlopen(f"{base}/ping", timeout=10) as ping:
            assert ping.status == 200
        request = urllib.request.Request(
            f"{base}/invocations",
            data=b'{"uid":"a","x":3,"label":1}\n{"uid":"b","x":4}\n',
            headers={"Content-Type": "application/jsonlines"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                answered = response.read().decode()
        except urllib.error.HTTPError as exc:
            pytest.fail(f"HTTP {exc.code} {exc.read()[:500]!r}{server.logs()}")
    finally:
        server.stop()
    assert [json.loads(line) for line in answered.splitlines()] == [
        {"keys": ["x"], "x": 3},
        {"keys": ["x"], "x": 4},
    ]
