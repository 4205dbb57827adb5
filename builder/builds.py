"""The local build of a model: unpack, environment, handler check, .mar, Dockerfile, specification.

Synchronous and blocking (subprocesses, file copies): the worker runs it in a thread. Every
step writes into the one build log; a step that cannot succeed raises JobFailed (stage
"build") with a reason a person can act on.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from builder.archives import (
    REQUIREMENTS,
    archive_model,
    archiver_version,
    read_manifest,
    safe_model_name,
)
from builder.bundle import Bundle, BundleLimits, open_bundle
from builder.dockerfiles import (
    base_image,
    render_config_properties,
    render_dockerfile,
    torchserve_settings,
)
from builder.environments import PythonEnv, ensure_env, requirements_sha256
from builder.handlers import HandlerInfo, check_handler, find_handler
from builder.processes import BuildLog
from core.errors import JobFailed
from core.taskconfig import BuildConfig
from core.version import __version__

# The files of the build folder, as stored under submissions/<id>/build/.
MAR = "model.mar"
# What the docker builder's image serves: model.mar with Weighbridge's serving handler in front
# (builder/docker_context.py); stored beside the Dockerfile that copies it.
SERVING_MAR = "serving.mar"
DOCKERFILE = "Dockerfile"
CONFIG_PROPERTIES = "config.properties"
SPECIFICATION = "specification.json"
LOG = "log"


@dataclass(frozen=True)
class BuildOptions:
    """Bounds of a local build (the task's build.timeout_seconds bounds the whole)."""

    limits: BundleLimits = field(default_factory=BundleLimits)
    handler_timeout: float = 120.0
    archiver_timeout: float = 900.0


@dataclass
class BuildResult:
    """What a successful build produced: the files in `folder` and what they describe."""

    folder: Path  # model.mar, Dockerfile, config.properties, [requirements.txt], spec, log
    bundle: Bundle
    handler: HandlerInfo
    env: PythonEnv | None
    requirements_sha256: str | None
    specification: dict[str, Any]

    def files(self) -> list[str]:
        """The build folder's files in the order they are stored (the log last)."""
        order = [MAR, SERVING_MAR, DOCKERFILE, CONFIG_PROPERTIES, REQUIREMENTS, SPECIFICATION]
        return [n for n in order if (self.folder / n).is_file()]


class _Clock:
    def __init__(self, budget: float) -> None:
        self.started = time.monotonic()
        self.deadline = self.started + budget
        self.budget = budget
        self.timings: dict[str, float] = {}
        self._mark = self.started

    def left(self, cap: float | None = None) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise JobFailed(
                "build",
                f"the build ran past the task's limit of {self.budget:g} s (build.timeout_seconds)",
            )
        return min(left, cap) if cap is not None else left

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.timings[name] = round(now - self._mark, 3)
        self._mark = now

    def total(self) -> float:
        return round(time.monotonic() - self.started, 3)


def build_model(
    source: Path,
    *,
    source_name: str,
    submission_id: str,
    model_name: str,
    build: BuildConfig,
    envs_root: Path,
    work: Path,
    log: BuildLog,
    options: BuildOptions | None = None,
) -> BuildResult:
    """Build `source` (folder, archive or .mar) into `work/build/`; JobFailed on a bad bundle.

    The steps, each timed: unpack and find the handler; the environment for its
    requirements; import the handler in the sandbox; the .mar; the Dockerfile and
    config.properties; the specification that describes all of it."""
    options = options or BuildOptions()
    clock = _Clock(build.timeout_seconds)
    out = work / "build"
    out.mkdir(parents=True, exist_ok=True)

    bundle = _unpack(source, source_name, work / "unpack", options, log)
    handler = find_handler(bundle)
    clock.lap("unpack_s")

    env, req_sha = _environment(bundle, out, envs_root=envs_root, timeout=clock.left(), log=log)
    clock.lap("environment_s")

    info = check_handler(
        bundle.root,
        handler,
        python=str(env.python) if env else sys.executable,
        timeout=clock.left(options.handler_timeout),
        log=log,
    )
    clock.lap("handler_check_s")

    model_name, manifest, serialized = _archive(
        bundle,
        handler,
        out,
        model_name=model_name,
        work=work,
        options=options,
        clock=clock,
        log=log,
    )
    clock.lap("archive_s")

    settings = _image_files(out, build, model_name, submission_id, req_sha, log)
    clock.lap("dockerfile_s")

    specification = {
        "submission_id": submission_id,
        "builder": "local",
        "weighbridge_version": __version__,
        "created_at": datetime.now(UTC).isoformat(),
        "bundle": _bundle_summary(bundle, source_name),
        "model_name": model_name,
        "handler": {
            "handler": info.handler,
            "file": info.file,
            "entry": info.entry,
            "initialize": info.initialize,
            "import_seconds": info.import_seconds,
        },
        "serialized_file": serialized,
        "requirements": (
            {
                "sha256": req_sha,
                "env_key": env.key,
                "python": str(env.python),
                "reused": env.reused,
            }
            if env is not None
            else None
        ),
        "python": {"version": info.python, "executable": info.executable},
        "builder_python": platform.python_version(),
        "torch": info.torch,
        "torch_model_archiver": archiver_version(),
        "mar": {
            "file": MAR,
            "sha256": _sha256(out / MAR),
            "bytes": (out / MAR).stat().st_size,
            "manifest": manifest,
        },
        "docker": {"base_image": base_image(build), "gpu": build.gpu, "torchserve": settings},
        "timings": {**clock.timings, "total_s": clock.total()},
    }
    (out / SPECIFICATION).write_text(json.dumps(specification, indent=2), encoding="utf-8")
    log.step(f"build finished in {clock.total():.1f} s")
    return BuildResult(
        folder=out,
        bundle=bundle,
        handler=info,
        env=env,
        requirements_sha256=req_sha,
        specification=specification,
    )


def _unpack(
    source: Path, source_name: str, unpack: Path, options: BuildOptions, log: BuildLog
) -> Bundle:
    """The bundle, unpacked with the limits, its listing in the log."""
    unpack.mkdir(parents=True, exist_ok=True)
    log.step(f"unpacking {source_name}")
    bundle = open_bundle(source, unpack, name=source_name, limits=options.limits)
    log.write(
        f"{bundle.format}: {len(bundle.files)} files, {bundle.total_bytes} bytes, "
        f"sha256 {bundle.sha256}\n"
        + "".join(f"  {f.path} ({f.bytes} bytes)\n" for f in bundle.files[:200])
        + (f"  … and {len(bundle.files) - 200} more\n" if len(bundle.files) > 200 else "")
    )
    return bundle


def _environment(
    bundle: Bundle, out: Path, *, envs_root: Path, timeout: float, log: BuildLog
) -> tuple[PythonEnv | None, str | None]:
    """The cached environment for the bundle's requirements (None without any) and their hash."""
    requirements = _requirements_file(bundle)
    if requirements is None:
        return None, None
    env = ensure_env(requirements, envs_root=envs_root, log=log, timeout=timeout)
    shutil.copyfile(requirements, out / REQUIREMENTS)
    return env, requirements_sha256(requirements)


def _archive(
    bundle: Bundle,
    handler: str,
    out: Path,
    *,
    model_name: str,
    work: Path,
    options: BuildOptions,
    clock: _Clock,
    log: BuildLog,
) -> tuple[str, dict[str, Any], str | None]:
    """`out/model.mar`: an uploaded .mar kept as it is, else made by torch-model-archiver;
    returns the model's name, the manifest and the serialized file."""
    if bundle.mar_path is not None:
        log.step("keeping the uploaded .mar as it is")
        shutil.copyfile(bundle.mar_path, out / MAR)
        manifest = read_manifest(out / MAR)
        name = manifest.get("model", {}).get("modelName") or model_name
        return (
            safe_model_name(str(name), fallback=model_name),
            manifest,
            manifest.get("model", {}).get("serializedFile"),
        )
    _, manifest, serialized = archive_model(
        bundle.root,
        model_name=model_name,
        handler=handler,
        work=work / "archive",
        log=log,
        timeout=clock.left(options.archiver_timeout),
    )
    shutil.move(str(work / "archive" / MAR), out / MAR)
    return model_name, manifest, serialized


def _image_files(
    out: Path,
    build: BuildConfig,
    model_name: str,
    submission_id: str,
    req_sha: str | None,
    log: BuildLog,
) -> dict[str, Any]:
    """The Dockerfile and config.properties of the TorchServe image; returns its settings."""
    log.step("rendering the Dockerfile and config.properties")
    settings = torchserve_settings(build)
    (out / CONFIG_PROPERTIES).write_text(render_config_properties(settings), encoding="utf-8")
    (out / DOCKERFILE).write_text(
        render_dockerfile(
            build=build,
            model_name=model_name,
            submission_id=submission_id,
            requirements_sha256=req_sha,
            settings=settings,
        ),
        encoding="utf-8",
    )
    return settings


def _bundle_summary(bundle: Bundle, source_name: str) -> dict[str, Any]:
    return {
        "source": source_name,
        "format": bundle.format,
        "sha256": bundle.sha256,
        "bytes": bundle.source_bytes,
        "unpacked_bytes": bundle.total_bytes,
        "files": [asdict(f) for f in bundle.files],
    }


def _requirements_file(bundle: Bundle) -> Path | None:
    name = REQUIREMENTS
    if bundle.manifest is not None:
        name = bundle.manifest.get("model", {}).get("requirementsFile") or REQUIREMENTS
        if not isinstance(name, str) or "/" in name or name in (".", ".."):
            raise JobFailed(
                "build",
                f"the .mar's manifest names the requirements file {name!r}; "
                "it must be a file at the archive's top level",
            )
    path = bundle.root / name
    return path if path.is_file() else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
