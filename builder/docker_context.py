"""The Docker build context of a model: its base image, its Dockerfile, the files it COPYs.

The docker builder makes the build folder a complete context holding nothing else (a
`.dockerignore` keeps the log and the specification out) and tags the image with a hash of
what the image holds. The image serves `serving.mar`: the model's archive with Weighbridge's
handler for SageMaker's JSON-lines requests in front of the model's own
(templates/weighbridge_serving.py); model.mar itself stays as the local runner uses it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import shlex
import shutil
import zipfile
from pathlib import Path
from typing import Any

from builder.builds import CONFIG_PROPERTIES, DOCKERFILE, MAR, SERVING_MAR, BuildResult
from builder.dockerfiles import (
    TEMPLATES,
    base_image,
    render_config_properties,
    render_dockerfile,
    torchserve_settings,
)
from builder.ecr import STAGE
from builder.processes import BuildLog
from core.errors import JobFailed
from core.taskconfig import BuildConfig, EvalConfig

DOCKERIGNORE = ".dockerignore"
SERVING_HANDLER = TEMPLATES / "weighbridge_serving.py"
SERVING_SETTINGS = "weighbridge_serving.json"
MANIFEST = "MAR-INF/MANIFEST.json"
TORCHSERVE_MAX_BYTES = 6553500  # TorchServe's own default request and response limit
_COPY = re.compile(r"^\s*(?:COPY|ADD)\s+(.+)$", re.I)


async def resolve_base_image(build: BuildConfig, evaluation: EvalConfig, log: BuildLog) -> str:
    """The image the Dockerfile starts from: the task's TorchServe image for its gpu flag, or
    AWS's PyTorch inference image for the task's region and instance type."""
    if build.base_image == "torchserve":
        return base_image(build)
    py_version = "py" + "".join(build.python_version.split(".")[:2])
    try:
        uri = await asyncio.to_thread(
            _retrieve_pytorch_image,
            region=evaluation.aws_region,
            version=build.pytorch_version,
            py_version=py_version,
            instance_type=evaluation.instance_type,
        )
    except ValueError as exc:
        raise JobFailed(
            STAGE,
            f"AWS has no PyTorch inference image for pytorch {build.pytorch_version}, "
            f"{py_version}, {evaluation.instance_type} in {evaluation.aws_region} ({exc}); "
            "ask the task's owner to fix build.pytorch_version, build.python_version or "
            "eval.instance_type in the task config",
        ) from None
    gpu_image = "-gpu-" in uri
    if gpu_image != build.gpu:
        raise JobFailed(
            STAGE,
            f"the task says build.gpu = {str(build.gpu).lower()} but eval.instance_type "
            f"{evaluation.instance_type} runs the {'GPU' if gpu_image else 'CPU'} image {uri}; "
            "ask the task's owner to make them agree",
        )
    log.step(f"base image for {evaluation.instance_type} in {evaluation.aws_region}: {uri}")
    return uri


def _retrieve_pytorch_image(
    *, region: str, version: str, py_version: str, instance_type: str
) -> str:
    from sagemaker import image_uris  # slow to import: only for tasks that ask for it

    return str(
        image_uris.retrieve(
            "pytorch",
            region=region,
            version=version,
            py_version=py_version,
            instance_type=instance_type,
            image_scope="inference",
        )
    )


def copy_sources(dockerfile: str) -> list[str]:
    """The build-context paths the Dockerfile's COPY/ADD lines read (flags and targets left)."""
    sources: list[str] = []
    for line in dockerfile.splitlines():
        match = _COPY.match(line)
        if not match:
            continue
        rest = match.group(1).strip()
        words = [str(w) for w in json.loads(rest)] if rest.startswith("[") else shlex.split(rest)
        words = [w for w in words if not w.startswith("--")]
        sources.extend(words[:-1])
    return sources


def write_serving_mar(folder: Path, *, input_fields: list[str] | None) -> dict[str, Any]:
    """`serving.mar`: model.mar with Weighbridge's serving handler as the archive's handler
    and the model's own named in its settings; returns those settings. Entries are streamed,
    so a large archive is never held in memory."""
    with zipfile.ZipFile(folder / MAR) as source:
        manifest = json.loads(source.read(MANIFEST))
        model = manifest.setdefault("model", {})
        settings = {"handler": model.get("handler") or "handler.py", "input_fields": input_fields}
        model["handler"] = SERVING_HANDLER.name
        with zipfile.ZipFile(folder / SERVING_MAR, "w", zipfile.ZIP_DEFLATED) as target:
            for info in source.infolist():
                if info.filename in (MANIFEST, SERVING_HANDLER.name, SERVING_SETTINGS):
                    continue
                with source.open(info) as src, target.open(info, "w", force_zip64=True) as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            target.writestr(MANIFEST, json.dumps(manifest, indent=2))
            target.write(SERVING_HANDLER, SERVING_HANDLER.name)
            target.writestr(SERVING_SETTINGS, json.dumps(settings))
    return settings


def serving_settings(build: BuildConfig, evaluation: EvalConfig) -> dict[str, Any]:
    """TorchServe's settings in the image: the task's, plus limits that let through what the
    SageMaker runner sends (requests of up to eval.max_payload_mb, answered within
    eval.timeout_seconds) where the task's [build.torchserve] does not set them itself."""
    settings = torchserve_settings(build)
    size = max(evaluation.max_payload_mb * 1024 * 1024 + 65536, TORCHSERVE_MAX_BYTES)
    settings.setdefault("max_request_size", size)
    settings.setdefault("max_response_size", size)
    settings.setdefault("default_response_timeout", max(120, round(evaluation.timeout_seconds)))
    return settings


def write_context(
    result: BuildResult,
    *,
    build: BuildConfig,
    submission_id: str,
    base: str,
    input_fields: list[str] | None,
    evaluation: EvalConfig,
) -> list[str]:
    """Make the build folder a complete Docker build context holding nothing else; returns
    its files (the Dockerfile first). JobFailed when a COPY names a file that is not there."""
    folder = result.folder
    write_serving_mar(folder, input_fields=input_fields)
    settings = serving_settings(build, evaluation)
    (folder / CONFIG_PROPERTIES).write_text(render_config_properties(settings), encoding="utf-8")
    (folder / DOCKERFILE).write_text(
        render_dockerfile(
            build=build,
            model_name=result.specification["model_name"],
            submission_id=submission_id,
            requirements_sha256=result.requirements_sha256,
            settings=settings,
            base=base,
            mar_file=SERVING_MAR,
        ),
        encoding="utf-8",
    )
    sources = copy_sources((folder / DOCKERFILE).read_text(encoding="utf-8"))
    for name in sources:
        path = folder / name
        if "/" in name or name in (".", "..") or not path.is_file():
            raise JobFailed(
                STAGE,
                f"internal error: the Dockerfile copies {name!r}, which the build folder "
                "does not hold as a file",
            )
    files = [DOCKERFILE, *dict.fromkeys(sources)]
    # The context is these files only: not the log being written, nor the specification.
    (folder / DOCKERIGNORE).write_text(
        "*\n" + "".join(f"!{name}\n" for name in files), encoding="utf-8"
    )
    return files


def context_sha256(folder: Path, files: list[str], *, bundle_sha256: str) -> str:
    """One hash of what the image holds (the image tag's suffix): every context file by name
    and content, except the archives, which stand for the uploaded bundle they are made from
    (an attempt that archives the same bundle again writes other zip timestamps, not another
    model) and, for serving.mar, the handler and settings added; so a retry finds the image an
    earlier attempt pushed."""
    whole = hashlib.sha256()
    for name in sorted(files):
        if name in (MAR, SERVING_MAR):
            whole.update(f"{name}\0bundle {bundle_sha256}\n".encode())
            if name == SERVING_MAR:
                with zipfile.ZipFile(folder / name) as archive:
                    for added in (SERVING_HANDLER.name, SERVING_SETTINGS):
                        whole.update(hashlib.sha256(archive.read(added)).hexdigest().encode())
            continue
        digest = hashlib.sha256()
        with open(folder / name, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
        whole.update(f"{name}\0{digest.hexdigest()}\n".encode())
    return whole.hexdigest()
