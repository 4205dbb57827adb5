"""Builders: a fetched bundle in, build artifacts out. One protocol, chosen by WEIGHBRIDGE_BUILDER.

The local builder unpacks and checks the bundle in the sandbox, makes the .mar with
torch-model-archiver, a virtualenv per requirements hash (cached) and renders the Dockerfile
(`builder.builds.build_model`). A Docker builder (image pushed to ECR, SageMaker model
registered) does the local build first, then the rest (`builder.docker_builder`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from builder.builds import BuildOptions, BuildResult, build_model
from builder.processes import BuildLog
from core.environments import envs_root
from core.errors import WeighbridgeError

if TYPE_CHECKING:
    from core.context import Services
    from core.settings import Settings
    from core.taskconfig import BuildConfig, TaskConfig


class Builder(Protocol):
    """Builds one model bundle."""

    @property
    def name(self) -> str: ...

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
    ) -> BuildResult: ...


@dataclass(frozen=True)
class LocalBuilder:
    """Builds on this machine (off the event loop: a thread driving sandboxed subprocesses)."""

    envs_root: Path
    name: str = "local"

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
        return await asyncio.to_thread(
            build_model,
            source,
            source_name=source_name,
            submission_id=submission_id,
            model_name=model_name,
            build=build,
            envs_root=self.envs_root,
            work=work,
            log=log,
            options=options,
        )


def _local(services: Services) -> Builder:
    return LocalBuilder(envs_root=envs_root(services.storage, services.settings.home))


def _docker(services: Services) -> Builder:
    from builder.docker_builder import docker_builder  # it builds on LocalBuilder

    return docker_builder(services)


BUILDERS: dict[str, Callable[[Services], Builder]] = {"local": _local, "docker": _docker}


def _check_docker(settings: Settings) -> None:
    from builder.docker_builder import docker_settings

    docker_settings(settings)


# What each builder needs from the settings, checked at start (a clear error, not a crash).
SETTINGS_CHECKS: dict[str, Callable[[Settings], None]] = {"docker": _check_docker}


def check_builder(name: str, settings: Settings | None = None) -> Callable[[Services], Builder]:
    """How to make the builder called `name`; a clear error for one this build does not have,
    or (given the settings) for settings it cannot work with."""
    make = BUILDERS.get(name)
    if make is None:
        raise WeighbridgeError(
            f"WEIGHBRIDGE_BUILDER={name!r} is not a builder of this build "
            f"(it has: {', '.join(sorted(BUILDERS))})",
            field="WEIGHBRIDGE_BUILDER",
        )
    if settings is not None and name in SETTINGS_CHECKS:
        SETTINGS_CHECKS[name](settings)
    return make


def builder_from_settings(services: Services) -> Builder:
    """The builder WEIGHBRIDGE_BUILDER names."""
    return check_builder(services.settings.builder)(services)
