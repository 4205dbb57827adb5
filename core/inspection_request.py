"""Amun's inspection request (InspectionSpecification) as a pydantic model, checked field by
field: a bad request is refused naming the field (`files[0].path`, `python_packages`) and
saying what is allowed. What the request becomes is core/inspections.py's business.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any, Literal

from packaging.requirements import InvalidRequirement, Requirement
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from core.errors import WeighbridgeError

SCRIPT = "script"  # the script's file name at the top of the scripts folder
MAX_BATCH_SIZE = 1000  # the descriptor's [run] count bound
MAX_REQUEST_BYTES = 16 * 1024 * 1024
# Kubernetes quantities, as Amun took them: "500m" CPUs, "256Mi" of memory.
CPU_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?m?$")
MEMORY_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Names the job's own environment sets (evaluator/benchmark_job.py): a request cannot move them.
RESERVED_ENV = ("PATH", "PYTHONPATH", "BAI_SCRIPTS_PATH")
RESERVED_ENV_PREFIX = "WEIGHBRIDGE_"
URL_SCRIPT = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://\S*$")
NATIVE_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")


class InspectionRequestError(WeighbridgeError):
    """An inspection request that cannot run: names the field (`files[0].path`) and says why."""

    status = 422
    code = "invalid_inspection"


# The request: Amun's InspectionSpecification (only `base` required).


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HardwareRequest(_Part):
    """`requests.hardware`: the CPU Amun placed the job on (recorded; runs go where they go)."""

    cpu_family: int | None = None
    cpu_model: int | None = None
    physical_cpus: int | None = Field(default=None, ge=1)
    processor: str | None = None


class Requests(_Part):
    """`requests`: Kubernetes-style resource requests."""

    cpu: str | None = None
    memory: str | None = None
    hardware: HardwareRequest | None = None

    @field_validator("cpu")
    @classmethod
    def _cpu(cls, value: str | None) -> str | None:
        if value is not None and not CPU_QUANTITY.match(value):
            raise ValueError(f'{value!r} is not a CPU quantity: write e.g. "1", "2.5" or "500m"')
        return value

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str | None) -> str | None:
        if value is not None and not MEMORY_QUANTITY.match(value):
            raise ValueError(f'{value!r} is not a memory quantity: write e.g. "256Mi" or "1Gi"')
        return value


class Resources(_Part):
    """`build` / `run`: the requests of the build and of each run."""

    requests: Requests | None = None


class PythonStack(_Part):
    """`python`: a Pipfile and/or a Pipfile.lock, as JSON, and Thoth's extras."""

    requirements: dict[str, Any] | None = None
    requirements_locked: dict[str, Any] | None = None
    runtime_environment: dict[str, Any] | None = None
    constraints: str | list[str] | None = None


class FileItem(_Part):
    """One of `files`: a text file for the job."""

    path: str = Field(min_length=1)
    content: str

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        relative = scripts_relative(value)  # raises ValueError naming what is wrong
        if relative == SCRIPT:
            raise ValueError(f"{value!r} is where the inspection's script goes; use another name")
        return value


class EnvironmentVariable(_Part):
    """One of `environment`: a variable of every run."""

    name: str = Field(min_length=1)
    value: str

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not ENV_NAME.match(value):
            raise ValueError(
                f"{value!r} is not a variable name: letters, digits and '_', not starting "
                "with a digit"
            )
        if value in RESERVED_ENV or value.startswith(RESERVED_ENV_PREFIX):
            raise ValueError(
                f"{value!r} is set by Weighbridge for every run ({', '.join(RESERVED_ENV)} "
                f"and {RESERVED_ENV_PREFIX}*); choose another name"
            )
        return value


class InspectionSpecification(_Part):
    """Amun's inspection request. Unknown fields are refused, naming them."""

    base: str = Field(min_length=1)
    identifier: str | None = None
    package_manager: Literal["micropipenv", "pipenv"] | None = None
    batch_size: int = Field(default=1, ge=1, le=MAX_BATCH_SIZE)
    # Amun 0.6's workflow knobs: accepted, recorded, not honoured (runs are sequential, and
    # every run is tried).
    allowed_failures: int | None = Field(default=None, ge=0)
    parallelism: int | None = Field(default=None, ge=1)
    packages: list[str] = Field(default_factory=list)
    python_packages: list[str] = Field(default_factory=list)
    python: PythonStack | None = None
    build: Resources | None = None
    run: Resources | None = None
    files: list[FileItem] = Field(default_factory=list)
    environment: list[EnvironmentVariable] = Field(default_factory=list)
    script: str | None = None
    update: bool = False
    upgrade_pip: bool = False
    send_messages: bool = False
    force_sync: bool = False
    # Weighbridge's own: where the runs go. "aws.sagemaker" runs them as a SageMaker training
    # job on `instance_type` where the evaluators run SageMaker jobs (WEIGHBRIDGE_RUNNER=
    # sagemaker); elsewhere the local runner runs them and the timeline says so.
    engine: Literal["default", "aws.sagemaker"] = "default"
    instance_type: str | None = Field(default=None, pattern=r"^(ml\.)?[a-z0-9]+\.[a-z0-9]+$")

    @field_validator("packages")
    @classmethod
    def _packages(cls, value: list[str]) -> list[str]:
        for i, name in enumerate(value):
            if not NATIVE_PACKAGE.match(name):
                raise ValueError(
                    f"item {i}: {name!r} is not a Debian package name (lower-case letters, "
                    "digits, '+', '-' and '.', at least two characters, e.g. \"libgomp1\")"
                )
        return value

    @field_validator("python_packages")
    @classmethod
    def _python_packages(cls, value: list[str]) -> list[str]:
        for i, line in enumerate(value):
            problem = requirement_problem(line)
            if problem:
                raise ValueError(f"item {i}: {problem}")
        return value

    @field_validator("script")
    @classmethod
    def _script(cls, value: str | None) -> str | None:
        if value is not None and URL_SCRIPT.match(value.strip()):
            raise ValueError(
                f"{value.strip()!r} is a URL: Weighbridge does not fetch code from the network; "
                "send the script's text inline in 'script'"
            )
        return value


def parse_specification(data: Any) -> InspectionSpecification:
    """The request from decoded JSON; InspectionRequestError names the first bad field (and
    lists every problem)."""
    if not isinstance(data, dict):
        raise InspectionRequestError(
            "an inspection request is a JSON object with at least 'base', e.g. "
            '{"base": "python:3.11", "script": "print(1)"}',
            field="body",
        )
    try:
        return InspectionSpecification.model_validate(data)
    except ValidationError as exc:
        problems = [(field_path(e["loc"]), _message(e)) for e in exc.errors()]
        text = "; ".join(f"{where}: {what}" for where, what in problems)
        raise InspectionRequestError(
            f"the inspection request is not valid: {text}",
            field=problems[0][0],
            extra={"problems": [{"field": f, "message": m} for f, m in problems]},
        ) from None


def field_path(loc: tuple[int | str, ...]) -> str:
    """("files", 0, "path") -> "files[0].path"."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def _message(error: Any) -> str:
    kind, message = error.get("type", ""), str(error.get("msg", ""))
    if kind == "extra_forbidden":
        return "is not a field of an inspection request (see Amun's InspectionSpecification)"
    if kind == "missing":
        return "is required"
    return message.removeprefix("Value error, ")


def requirement_problem(line: str) -> str | None:
    """Why `line` cannot be a `[environment] python_packages` entry (None: it can)."""
    if not line.strip() or line.lstrip().startswith("-"):
        return f"{line!r} is not a pip requirement (pip options such as -r, -e are not accepted)"
    try:
        requirement = Requirement(line)
    except InvalidRequirement as exc:
        return f"{line!r} is not a pip requirement: {str(exc).splitlines()[0]}"
    if requirement.url:
        return f'{line!r} installs from a URL; name a package from the index, e.g. "numpy>=1.26"'
    return None


def scripts_relative(path: str) -> str:
    """Where a request's file lands below the scripts folder; ValueError when it cannot."""
    if "\x00" in path or "\\" in path:
        raise ValueError(f"{path!r}: a path may not hold NUL or backslashes")
    parts = [p for p in PurePosixPath(path).parts if p not in ("/", "", ".")]
    if ".." in parts:
        raise ValueError(f"{path!r} climbs with '..'; give a path without it")
    if not parts:
        raise ValueError(f"{path!r} names no file")
    return "/".join(parts)
