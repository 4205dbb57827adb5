"""The Dockerfile and TorchServe config.properties the cloud builder uses for a model.

Rendered from `templates/Dockerfile.j2` into a build context folder: files enter the image by
COPY, never by escaping their contents into RUN lines (the bug farm Amun's generator became).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from core.errors import JobFailed
from core.taskconfig import BuildConfig
from core.version import __version__

TEMPLATES = Path(__file__).parent / "templates"
# TorchServe defaults for a container: listen on every interface, one worker, dependencies
# installed at image build (not per model at start-up), no token (SageMaker fronts it).
TORCHSERVE_DEFAULTS: dict[str, Any] = {
    "inference_address": "http://0.0.0.0:8080",
    "management_address": "http://0.0.0.0:8081",
    "metrics_address": "http://0.0.0.0:8082",
    "model_store": "/home/model-server/model-store",
    "default_workers_per_model": 1,
    "install_py_dep_per_model": False,
    "disable_token_authorization": True,
}
_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_.]*$")
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$")
_PORT = re.compile(r":(\d+)/?$")


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # a Dockerfile, not HTML
    )


def base_image(build: BuildConfig) -> str:
    image = build.base_image_gpu if build.gpu else build.base_image_cpu
    if not _IMAGE.match(image):
        raise JobFailed(
            "build",
            f"the task's build base image {image!r} is not a valid image reference "
            "(ask the task's owner to fix [build] in the task config)",
        )
    return image


def torchserve_settings(build: BuildConfig) -> dict[str, Any]:
    """The defaults overridden by the task's `[build.torchserve]` table."""
    return {**TORCHSERVE_DEFAULTS, **build.torchserve}


def render_config_properties(settings: dict[str, Any]) -> str:
    lines = ["# TorchServe settings rendered by Weighbridge from the task's [build.torchserve]."]
    for key, value in settings.items():
        if not _KEY.match(str(key)):
            raise JobFailed(
                "build", f"the task's build.torchserve key {key!r} is not a TorchServe setting"
            )
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float, str)):
            text = str(value)
        else:
            raise JobFailed(
                "build",
                f"the task's build.torchserve.{key} must be a string, number or boolean",
            )
        if "\n" in text or "\r" in text:
            raise JobFailed("build", f"the task's build.torchserve.{key} spans several lines")
        lines.append(f"{key}={text}")
    return "\n".join(lines) + "\n"


def exposed_ports(settings: dict[str, Any]) -> list[int]:
    ports = []
    for key in ("inference_address", "management_address", "metrics_address"):
        match = _PORT.search(str(settings.get(key, "")))
        if match:
            ports.append(int(match.group(1)))
    return sorted(set(ports))


def render_dockerfile(
    *,
    build: BuildConfig,
    model_name: str,
    submission_id: str,
    requirements_sha256: str | None,
    settings: dict[str, Any],
    base: str | None = None,
    mar_file: str = "model.mar",
) -> str:
    """The Dockerfile; `base` replaces the task's base image (one the docker builder resolved),
    `mar_file` names the archive copied in (the docker builder's serving archive)."""
    return (
        _environment()
        .get_template("Dockerfile.j2")
        .render(
            weighbridge_version=__version__,
            submission_id=submission_id,
            base_image=base or base_image(build),
            gpu=build.gpu,
            model_name=model_name,
            mar_file=mar_file,
            requirements=requirements_sha256 is not None,
            requirements_sha256=requirements_sha256,
            ports=exposed_ports(settings),
        )
    )
