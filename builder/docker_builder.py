"""The docker builder (WEIGHBRIDGE_BUILDER=docker): the local build, then image, ECR, SageMaker.

First everything the local builder does (the bundle checked, its handler imported in the
sandbox, the .mar made), then, in the task's region (`eval.aws_region`):
1. the build context: the Dockerfile on the task's base (TorchServe's CPU or GPU image, or
   AWS's PyTorch inference image resolved with the `sagemaker` package) and every file it
   COPYs; the image tag is the submission id and a hash of exactly those files;
2. the ECR repository `<WEIGHBRIDGE_ECR_PREFIX>/models` (made on demand) and a registry login
   from ECR's authorization token;
3. `docker build` and `docker push` where a Docker engine answers `docker info`; where none
   does, the image is not built (a warning on the timeline), or the build fails when
   WEIGHBRIDGE_DOCKER_REQUIRED is set; an image an earlier attempt pushed is kept;
4. the SageMaker model `wb-<submission id>` on that image, network-isolated, running as
   WEIGHBRIDGE_SAGEMAKER_ROLE_ARN; 5. its endpoint when the task says `create_endpoint`;
6. all of it recorded in specification.json, which the SageMaker runner and people read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder.backends import LocalBuilder
from builder.builds import DOCKERFILE, SPECIFICATION, BuildOptions, BuildResult
from builder.docker_context import (
    SERVING_MAR,
    context_sha256,
    resolve_base_image,
    serving_settings,
    write_context,
)
from builder.ecr import (
    STAGE,
    RegistryLogin,
    Repository,
    ensure_repository,
    image_digest,
    registry_login,
)
from builder.processes import BuildLog, last_line
from builder.sagemaker_models import ensure_endpoint, register_model
from core.aws import AwsClients, ecr_repository_name, sagemaker_model_name, sagemaker_name
from core.environments import envs_root
from core.errors import JobFailed, WeighbridgeError
from core.taskconfig import BuildConfig, EvalConfig, TaskConfig

if TYPE_CHECKING:
    from core.context import Services
    from core.settings import Settings

ROLE_SETTING = "WEIGHBRIDGE_SAGEMAKER_ROLE_ARN"
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
# Graviton instance families (ml.c6g, ml.m7gd, ...) run arm64 images; the rest amd64.
_GRAVITON = re.compile(r"^ml\.[a-z]+\d+g[a-z]*\.")


@dataclass(frozen=True)
class DockerSettings:
    """What the docker builder needs from the settings."""

    role_arn: str
    ecr_prefix: str = "weighbridge"
    docker_required: bool = False
    docker: str = "docker"  # the docker command
    engine_timeout: float = 5.0  # how long `docker info` may take to say an engine answers

    def __post_init__(self) -> None:
        if not self.role_arn:
            raise WeighbridgeError(
                f"the docker builder registers every model with SageMaker and needs the IAM "
                f"role the models run as: set {ROLE_SETTING} (arn:aws:iam::<account>:role/<name>)",
                field=ROLE_SETTING,
            )
        if not _ROLE_ARN.match(self.role_arn):
            raise WeighbridgeError(
                f"{ROLE_SETTING}={self.role_arn!r} is not an IAM role ARN "
                "(arn:aws:iam::<12-digit account>:role/<name>)",
                field=ROLE_SETTING,
            )


@dataclass
class _Image:
    """How the image step went: pushed here, present from an earlier attempt, or skipped."""

    uri: str
    tag: str
    status: str
    digest: str | None = None
    reason: str = ""


@dataclass
class DockerBuilder:
    """Local build, then the image, ECR, the SageMaker model (and endpoint); see the module."""

    local: LocalBuilder
    aws: AwsClients
    config: DockerSettings
    name: str = "docker"

    async def close(self) -> None:
        await self.aws.close()

    async def build(
        self,
        source: Path,
        *,
        source_name: str,
        submission_id: str,
        model_name: str,
        build: BuildConfig,
        work: Path,
        log: BuildLog,
        options: BuildOptions,
        task: TaskConfig | None = None,
    ) -> BuildResult:
        deadline = time.monotonic() + build.timeout_seconds
        result = await self.local.build(
            source,
            source_name=source_name,
            submission_id=submission_id,
            model_name=model_name,
            build=build,
            work=work,
            log=log,
            options=options,
        )
        # Without a task (a contract test) the default eval settings say where.
        evaluation = task.eval if task is not None else EvalConfig()
        region = evaluation.aws_region
        timings: dict[str, float] = {}
        warnings: list[str] = []
        mark = time.monotonic()

        def lap(name: str) -> None:
            nonlocal mark
            now = time.monotonic()
            timings[name] = round(now - mark, 3)
            mark = now

        base = await resolve_base_image(build, evaluation, log)
        files = await asyncio.to_thread(
            write_context,
            result,
            build=build,
            submission_id=submission_id,
            base=base,
            input_fields=task.input_fields if task is not None else None,
            evaluation=evaluation,
        )
        digest = await asyncio.to_thread(
            context_sha256, result.folder, files, bundle_sha256=result.bundle.sha256
        )
        tag = f"{submission_id}-{digest[:12]}"
        log.step(f"build context: {', '.join(files)} (sha256 {digest})")
        lap("image_context_s")

        log.step(f"ECR in {region}: repository {ecr_repository_name(self.config.ecr_prefix)}")
        ecr = await self.aws.client("ecr", region=region)
        repo = await ensure_repository(ecr, ecr_repository_name(self.config.ecr_prefix))
        log.write(f"{'created' if repo.created else 'found'} {repo.uri}\n")
        login = await registry_login(ecr)
        log.write(f"authorization token for {login.registry} (expires {login.expires_at})\n")
        lap("ecr_s")

        image = await self._image(
            ecr,
            repo,
            login,
            tag=tag,
            base=base,
            folder=result.folder,
            platform=_platform(evaluation.instance_type),
            deadline=deadline,
            work=work,
            log=log,
        )
        if image.status == "skipped":
            warnings.append(image.reason)
        lap("image_s")

        sagemaker = await self.aws.client("sagemaker", region=region)
        tags = {"weighbridge:submission": submission_id}
        if task is not None:
            tags["weighbridge:task"] = task.slug
        model = await register_model(
            sagemaker,
            name=sagemaker_model_name(submission_id),
            image=image.uri,
            role_arn=self.config.role_arn,
            tags=tags,
        )
        done = "registered" if model.created else "already registered"
        log.step(
            f"SageMaker model {model.name} {done} in {region} ({model.arn}), "
            f"image {image.uri}, network isolated"
        )
        lap("sagemaker_model_s")

        endpoint = None
        if evaluation.create_endpoint:
            endpoint = await ensure_endpoint(
                sagemaker,
                name=sagemaker_name("wb", submission_id),
                config_name=sagemaker_name("wb", submission_id, "config"),
                model_name=model.name,
                instance_type=evaluation.instance_type,
                instance_count=evaluation.instance_count,
                tags=tags,
            )
            log.step(
                f"SageMaker endpoint {endpoint.name} ({evaluation.instance_count} x "
                f"{evaluation.instance_type}): {endpoint.status}"
            )
            lap("endpoint_s")

        spec = result.specification
        spec["builder"] = self.name
        spec["docker"] = {
            **spec.get("docker", {}),
            "base_image": base,
            "base": build.base_image,
            "torchserve": serving_settings(build, evaluation),  # the image's config.properties
            "serving_mar": SERVING_MAR,
            "context": files,
            "context_sha256": digest,
        }
        spec["image"] = {
            "uri": image.uri,
            "tag": image.tag,
            "digest": image.digest,
            "status": image.status,
            "reason": image.reason or None,
        }
        spec["ecr"] = {"repository": repo.name, "uri": repo.uri, "arn": repo.arn, "region": region}
        spec["sagemaker"] = {
            "region": region,
            "model_name": model.name,
            "model_arn": model.arn,
            "execution_role_arn": self.config.role_arn,
            "network_isolation": True,
            "endpoint": (
                {
                    "name": endpoint.name,
                    "arn": endpoint.arn,
                    "config_name": endpoint.config_name,
                    "status": endpoint.status,
                    "instance_type": evaluation.instance_type,
                    "instance_count": evaluation.instance_count,
                }
                if endpoint is not None
                else None
            ),
        }
        spec["warnings"] = [*spec.get("warnings", []), *warnings]
        local_total = float(spec.get("timings", {}).get("total_s", 0.0))
        spec["timings"] = {
            **spec.get("timings", {}),
            **timings,
            "total_s": round(local_total + sum(timings.values()), 3),
        }
        (result.folder / SPECIFICATION).write_text(json.dumps(spec, indent=2), encoding="utf-8")
        return result

    async def _image(
        self,
        ecr: Any,
        repo: Repository,
        login: RegistryLogin,
        *,
        tag: str,
        base: str,
        folder: Path,
        platform: str,
        deadline: float,
        work: Path,
        log: BuildLog,
    ) -> _Image:
        """Build and push `repo:tag` unless ECR has it; skipped (or failed) without an engine."""
        image = _Image(uri=f"{repo.uri}:{tag}", tag=tag, status="")
        pushed = await image_digest(ecr, repo.name, tag)
        if pushed is not None:
            log.step(f"image {image.uri} is in ECR already ({pushed}); not built again")
            image.status, image.digest = "present", pushed
            return image
        missing = await docker_engine_missing(self.config.docker, self.config.engine_timeout)
        if missing is not None:
            reason = f"image {image.uri} not built here: {missing}"
            if self.config.docker_required:
                raise JobFailed(
                    STAGE,
                    f"{reason}; WEIGHBRIDGE_DOCKER_REQUIRED is set, so the build fails "
                    "(run the builder where `docker info` works)",
                )
            log.step(
                f"WARNING: {reason}; the SageMaker model is registered without it (set "
                "WEIGHBRIDGE_DOCKER_REQUIRED=1 to fail instead)"
            )
            image.status, image.reason = "skipped", reason
            return image
        # Logins land in a config folder of this build only, removed when it ends.
        docker_config = work / "docker-config"
        docker_config.mkdir(mode=0o700, exist_ok=True)
        env = {**os.environ, "DOCKER_CONFIG": str(docker_config)}
        try:
            registries = [login.registry]
            base_registry = base.split("/", 1)[0]
            if ".dkr.ecr." in base_registry and base_registry != login.registry:
                registries.append(base_registry)  # AWS's own images (the PyTorch DLC)
            for registry in registries:
                await self._login(registry, login, env=env, log=log)
            log.step(f"docker build {image.uri} ({platform})")
            built = await asyncio.to_thread(
                log.run,
                [
                    self.config.docker,
                    "build",
                    "--pull",
                    "--platform",
                    platform,
                    "--tag",
                    image.uri,
                    "--file",
                    str(folder / DOCKERFILE),
                    str(folder),
                ],
                cwd=folder,
                timeout=_left(deadline),
                env=env,
            )
            if not built.ok:
                why = (
                    "ran past the task's limit (build.timeout_seconds)"
                    if built.timed_out
                    else f"failed: {last_line(built.tail)}"
                )
                raise JobFailed(STAGE, f"docker build {why}", log_tail=built.tail)
            log.step(f"docker push {image.uri}")
            push = await asyncio.to_thread(
                log.run,
                [self.config.docker, "push", image.uri],
                cwd=folder,
                timeout=_left(deadline),
                env=env,
            )
            if not push.ok:
                raise JobFailed(
                    STAGE, f"docker push failed: {last_line(push.tail)}", log_tail=push.tail
                )
        finally:
            await asyncio.to_thread(shutil.rmtree, docker_config, True)
        image.status = "pushed"
        image.digest = await image_digest(ecr, repo.name, tag)
        return image

    async def _login(
        self, registry: str, login: RegistryLogin, *, env: dict[str, str], log: BuildLog
    ) -> None:
        """`docker login` with the password on stdin, never on the command line or in the log."""
        command = [self.config.docker, "login", "--username", login.username]
        command += ["--password-stdin", registry]
        log.write("$ " + shlex.join(command) + "\n")
        proc = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(login.password.encode()), 60)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise JobFailed(STAGE, f"docker login to {registry} gave no answer in 60 s") from None
        text = out.decode("utf-8", "replace").replace(login.password, "***")
        log.write(text)
        if proc.returncode != 0:
            raise JobFailed(STAGE, f"docker login to {registry} failed: {last_line(text)}")


async def docker_engine_missing(docker: str = "docker", seconds: float = 5.0) -> str | None:
    """None when a Docker engine answers `docker info` within `seconds`, else why not."""
    if shutil.which(docker) is None:
        return f"no `{docker}` command is installed"
    try:
        proc = await asyncio.create_subprocess_exec(
            docker,
            "info",
            "--format",
            "{{.ServerVersion}}",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        return f"`{docker} info` could not start ({exc.strerror})"
    try:
        out, err = await asyncio.wait_for(proc.communicate(), seconds)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return f"no Docker engine answered `{docker} info` within {seconds:g} s"
    if proc.returncode == 0 and out.strip():
        return None
    why = last_line(err.decode("utf-8", "replace")) or f"exit {proc.returncode}"
    return f"no Docker engine is reachable (`{docker} info`: {why})"


def _platform(instance_type: str) -> str:
    return "linux/arm64" if _GRAVITON.match(instance_type) else "linux/amd64"


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise JobFailed(STAGE, "the build ran past the task's limit (build.timeout_seconds)")
    return left


def docker_settings(settings: Settings) -> DockerSettings:
    """The docker builder's settings (refused, naming the setting, without a valid role)."""
    return DockerSettings(
        role_arn=settings.sagemaker_role_arn,
        ecr_prefix=settings.ecr_prefix,
        docker_required=settings.docker_required,
    )


def docker_builder(services: Services) -> DockerBuilder:
    """The docker builder from the settings (refused, naming the setting, without a role)."""
    settings = services.settings
    return DockerBuilder(
        local=LocalBuilder(envs_root=envs_root(services.storage, settings.home)),
        aws=AwsClients(endpoint_url=settings.aws_endpoint_url, region=settings.aws_region),
        config=docker_settings(settings),
    )
