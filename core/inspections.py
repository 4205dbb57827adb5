"""Amun inspections: an InspectionSpecification (Amun's request) run as a benchmark.

An inspection is the same job as a benchmark: the request is turned into a descriptor and a
scripts archive, and `core.benchmarks.submit_benchmark` queues it as kind `inspection`. The
mapping, field by field:

- `base` -> `[environment] base` and `[env] docker_image` (a local run has no Docker engine:
  the builder says so in the timeline);
- `identifier` -> the submission's name and the `task_name` label (made a valid label);
- `batch_size` -> `[run] count`; `environment` -> `[env] vars`;
- `python_packages`, and the default packages of `python.requirements_locked` (a Pipfile.lock,
  pinned `name==version`) or else of `python.requirements` (a Pipfile) -> `[environment]
  python_packages`; `packages` -> `[environment] native_packages`;
- `script` -> the file `script` at the top of the scripts archive; `files` -> files in the
  same archive at their paths. Amun wrote files at absolute paths in its image; a local run has
  no image to write into, so `/etc/app.conf` lands at `$WEIGHBRIDGE_SCRIPTS_PATH/etc/app.conf`
  (said in the timeline); `..` is refused.

How the script runs (Amun scripts are Python unless a shebang says otherwise): without a
shebang, or with one naming a Python (`#!/usr/bin/python3`, `#!/usr/bin/env python`), as
`python3 $(WEIGHBRIDGE_SCRIPTS_PATH)/script`, with the build's interpreter, so that the
inspection's packages are importable; with any other shebang (`#!/usr/bin/bash`), by that
interpreter and its one optional argument, as the kernel would, named explicitly so the file
needs no execute bit. Without a script a run does nothing but is still measured (hwinfo, usage).
A script given as a URL is refused: no code is fetched from the network.

What a local run cannot honour (`run.requests`, `build.requests`, `update`, `upgrade_pip`,
`package_manager`, `python.runtime_environment`/`constraints`, `parallelism`...) is recorded on
the submission and written in its timeline as a warning, never dropped in silence.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shlex
import tarfile
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Literal

import sqlalchemy as sa
import tomli_w
from packaging.requirements import InvalidRequirement, Requirement
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from core.benchmarks import submit_benchmark
from core.descriptor import parse_descriptor
from core.errors import NotFound, WeighbridgeError
from core.models import Submission, User
from core.outbox import Outbox
from core.states import record_event
from core.storage import Storage, StoredObject
from core.submissions import can_view, check_id

KIND = "inspection"
DESCRIPTOR_FILENAME = "inspection.toml"
SCRIPTS_FILENAME = "inspection.tar.gz"
SPECIFICATION = "specification.json"
SCRIPT = "script"
MAX_BATCH_SIZE = 1000  # the descriptor's [run] count bound
MAX_REQUEST_BYTES = 16 * 1024 * 1024
PAGE_LIMIT = 100  # Amun's page size
# Kubernetes quantities, as Amun took them: "500m" CPUs, "256Mi" of memory.
CPU_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?m?$")
MEMORY_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$")
MEMORY_UNITS = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Names the job's own environment sets (evaluator/benchmark_job.py): a request cannot move them.
RESERVED_ENV = ("PATH", "PYTHONPATH", "BAI_SCRIPTS_PATH")
RESERVED_ENV_PREFIX = "WEIGHBRIDGE_"
URL_SCRIPT = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://\S*$")
PYTHON = re.compile(r"^python([0-9](\.[0-9]+)?)?$")
NATIVE_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
LABEL_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


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


# The mapping onto a descriptor and a scripts folder.


@dataclass
class InspectionPlan:
    """What an inspection request becomes: the descriptor, the scripts' files and what a local
    run will not honour."""

    descriptor: dict[str, Any]
    files: dict[str, bytes]
    warnings: list[str] = field(default_factory=list)
    command: str = "true"

    def descriptor_toml(self) -> bytes:
        return tomli_w.dumps(self.descriptor).encode()

    def scripts_archive(self) -> bytes:
        """The files as a .tar.gz, reproducible (sorted, owner 0, time 0)."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
            for name in sorted(self.files):
                body = self.files[name]
                info = tarfile.TarInfo(name)
                info.size = len(body)
                info.mode = 0o755 if name == SCRIPT else 0o644
                tar.addfile(info, io.BytesIO(body))
        return buffer.getvalue()


def label_of(identifier: str | None) -> str:
    """A Kubernetes label value (the descriptor's task_name) made from the identifier."""
    text = LABEL_CHARS.sub("-", identifier or "").strip("-_.")[:63].strip("-_.")
    return text or KIND


def script_command(script: str | None) -> str:
    """The command a run executes (see the module docstring)."""
    if script is None:
        return "true"
    target = f"$({RESERVED_ENV_PREFIX}SCRIPTS_PATH)/{SCRIPT}"
    first = script.splitlines()[0] if script else ""
    if not first.startswith("#!"):
        return f"python3 {target}"
    words = first[2:].strip().split(None, 1)
    if not words:
        return f"python3 {target}"
    interpreter, argument = words[0], (words[1].strip() if len(words) > 1 else "")
    program = PurePosixPath(interpreter).name
    if PYTHON.match(program) or (program == "env" and PYTHON.match(argument.split(" ")[0])):
        return f"python3 {target}"
    # The kernel passes the rest of the line as one argument.
    quoted = [shlex.quote(interpreter)] + ([shlex.quote(argument)] if argument else [])
    return f"{' '.join(quoted)} {target}"


def pipfile_requirements(pipfile: dict[str, Any], *, where: str) -> list[str]:
    """A Pipfile's [packages] as pip requirement lines."""
    packages = pipfile.get("packages", {})
    if not isinstance(packages, dict):
        raise InspectionRequestError(
            "a Pipfile's 'packages' is an object of names to versions", field=f"{where}.packages"
        )
    lines = []
    for name, spec in packages.items():
        at = f"{where}.packages.{name}"
        extras, markers, version = "", "", "*"
        if isinstance(spec, str):
            version = spec
        elif isinstance(spec, dict):
            for key in ("git", "path", "file", "editable", "hg", "svn", "bzr"):
                if key in spec:
                    raise InspectionRequestError(
                        f"{name}: a {key!r} package is not installed (no code is fetched from "
                        "outside the package index); name a released version",
                        field=at,
                    )
            version = str(spec.get("version", "*"))
            if spec.get("extras"):
                extras = f"[{','.join(str(e) for e in spec['extras'])}]"
            if spec.get("markers"):
                markers = f"; {spec['markers']}"
        else:
            raise InspectionRequestError(
                f'{name}: give a version string ("*", ">=1.2") or an object with "version"',
                field=at,
            )
        lines.append(_requirement(name, extras, "" if version == "*" else version, markers, at))
    return lines


def locked_requirements(lock: dict[str, Any], *, where: str) -> list[str]:
    """A Pipfile.lock's default section as pinned `name==version` lines."""
    default = lock.get("default", {})
    if not isinstance(default, dict):
        raise InspectionRequestError(
            "a Pipfile.lock's 'default' is an object of names to pins", field=f"{where}.default"
        )
    lines = []
    for name, pin in default.items():
        at = f"{where}.default.{name}"
        if not isinstance(pin, dict) or not isinstance(pin.get("version"), str):
            raise InspectionRequestError(
                f'{name}: a locked package needs its "version" (e.g. "==1.26.4"); packages from '
                "git, paths or URLs are not installed",
                field=at,
            )
        extras = f"[{','.join(str(e) for e in pin['extras'])}]" if pin.get("extras") else ""
        markers = f"; {pin['markers']}" if pin.get("markers") else ""
        lines.append(_requirement(name, extras, pin["version"], markers, at))
    return lines


def _requirement(name: str, extras: str, version: str, markers: str, at: str) -> str:
    line = f"{name}{extras}{version}{markers}"
    problem = requirement_problem(line)
    if problem:
        raise InspectionRequestError(problem, field=at)
    return line


def _memory_bytes(quantity: str) -> int:
    match = MEMORY_QUANTITY.match(quantity)
    assert match is not None  # checked by the model
    number = quantity[: len(quantity) - len(match.group(2) or "")]
    return int(float(number) * MEMORY_UNITS[match.group(2) or ""])


def _requests_warnings(spec: InspectionSpecification, memory_limit_mb: int | None) -> list[str]:
    out = []
    for part in ("build", "run"):
        resources: Resources | None = getattr(spec, part)
        requests = resources.requests if resources else None
        if requests is None:
            continue
        if requests.cpu is not None:
            out.append(
                f"{part}.requests.cpu = {requests.cpu!r} is recorded, not reserved: a local "
                f"{part} shares this machine's CPUs"
            )
        if requests.memory is not None:
            text = f"{part}.requests.memory = {requests.memory!r} is recorded, not reserved"
            if part == "run" and memory_limit_mb is not None:
                asked = _memory_bytes(requests.memory)
                limit = memory_limit_mb * 2**20
                relation = "less than" if asked > limit else "at least"
                text += (
                    f"; each run may use at most {memory_limit_mb} MiB (the sandbox's limit), "
                    f"{relation} the {requests.memory} asked"
                )
            out.append(text)
        if requests.hardware is not None:
            wanted = requests.hardware.model_dump(exclude_none=True)
            out.append(
                f"{part}.requests.hardware = {wanted} is recorded, not matched: the run gets "
                "this machine; its hwinfo.json says which CPU that is"
            )
    return out


def plan_inspection(
    spec: InspectionSpecification, *, memory_limit_mb: int | None = None
) -> InspectionPlan:
    """The descriptor and scripts an inspection request runs as (see the module docstring);
    InspectionRequestError names the field that cannot be mapped."""
    warnings: list[str] = []
    python_packages = list(spec.python_packages)
    python = spec.python
    if python is not None:
        if python.requirements_locked is not None:
            python_packages += locked_requirements(
                python.requirements_locked, where="python.requirements_locked"
            )
            if python.requirements is not None:
                warnings.append(
                    "python.requirements: the pins of python.requirements_locked are installed "
                    "(the Pipfile is kept with the specification)"
                )
        elif python.requirements is not None:
            python_packages += pipfile_requirements(
                python.requirements, where="python.requirements"
            )
        if python.runtime_environment is not None:
            warnings.append(
                f"python.runtime_environment = {python.runtime_environment} is recorded, not "
                "matched: the run uses this machine and the builder's Python"
            )
        if python.constraints:
            warnings.append(
                "python.constraints is recorded, not applied: pip installs the packages as listed"
            )
    if spec.package_manager is not None:
        warnings.append(
            f"package_manager = {spec.package_manager!r} is not used: packages are installed "
            "with pip, once per set of requirements"
        )
    for flag, why in (
        ("update", "native packages are not installed or updated on a local run"),
        ("upgrade_pip", "the builder's pip is used as it is"),
        ("send_messages", "there is no Thoth message bus here; the timeline has the events"),
        ("force_sync", "there is no Thoth database to sync; results stay in storage"),
    ):
        if getattr(spec, flag):
            warnings.append(f"{flag} = true is not honoured: {why}")
    if spec.parallelism not in (None, 1):
        warnings.append(
            f"parallelism = {spec.parallelism} is not honoured: the runs go one after another"
        )
    if spec.allowed_failures is not None:
        warnings.append(
            f"allowed_failures = {spec.allowed_failures} is not honoured: every run is tried, "
            "and the inspection fails if any run fails"
        )
    warnings += _requests_warnings(spec, memory_limit_mb)

    files: dict[str, bytes] = {}
    for i, item in enumerate(spec.files):
        relative = scripts_relative(item.path)
        if relative in files:
            raise InspectionRequestError(
                f"{item.path!r} is given twice; give each file once", field=f"files[{i}].path"
            )
        files[relative] = item.content.encode("utf-8")
        if item.path.startswith("/"):
            warnings.append(
                f"files[{i}].path = {item.path!r} is written at "
                f"$WEIGHBRIDGE_SCRIPTS_PATH/{relative}: a local run has no image to write "
                "absolute paths into"
            )
    if spec.script is not None:
        files[SCRIPT] = spec.script.encode("utf-8")
    names = [v.name for v in spec.environment]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise InspectionRequestError(
                f"{name!r} is given twice; give each variable once",
                field=f"environment[{i}].name",
            )

    command = script_command(spec.script)
    label = label_of(spec.identifier)
    environment: dict[str, Any] = {"base": spec.base}
    if python_packages:
        environment["python_packages"] = python_packages
    if spec.packages:
        environment["native_packages"] = list(spec.packages)
    env: dict[str, Any] = {"docker_image": spec.base}
    if spec.environment:
        env["vars"] = {v.name: v.value for v in spec.environment}
    descriptor: dict[str, Any] = {
        "spec_version": "0.1.0",
        "info": {
            "description": f"Amun inspection {spec.identifier or ''}".strip(),
            "labels": {"task_name": label},
        },
        "hardware": {"instance_type": "local", "strategy": "single_node"},
        "env": env,
        "ml": {"benchmark_code": command},
        "environment": environment,
        "run": {"count": spec.batch_size},
    }
    plan = InspectionPlan(descriptor=descriptor, files=files, warnings=warnings, command=command)
    # The descriptor must pass the same checks as any other: a request that maps to an
    # invalid one is refused now, not at build time.
    parse_descriptor(plan.descriptor_toml(), filename=DESCRIPTOR_FILENAME)
    return plan


def specification_key(submission_id: str) -> str:
    return f"submissions/{submission_id}/upload/{SPECIFICATION}"


def parameters_of(spec: InspectionSpecification) -> dict[str, Any]:
    """The request echoed back with its defaults (Amun's `parameters`)."""
    return spec.model_dump(mode="json", exclude_none=True)


async def submit_inspection(
    session: AsyncSession,
    storage: Storage,
    outbox: Outbox,
    *,
    user: User,
    spec: InspectionSpecification,
    scripts_key: str,
    memory_limit_mb: int | None = None,
    client_id: str | None = None,
) -> Submission:
    """Queue the inspection in the caller's transaction: its scripts archive is written at
    `scripts_key` (an incoming key; submit_benchmark moves it to its content address), the
    specification kept beside the descriptor, the warnings written in the timeline.
    Inspections are private to their owner."""
    plan = plan_inspection(spec, memory_limit_mb=memory_limit_mb)
    scripts: StoredObject | None = None
    if plan.files:
        scripts = await storage.write_bytes(scripts_key, plan.scripts_archive())
    submission, _ = await submit_benchmark(
        session,
        storage,
        outbox,
        user=user,
        kind=KIND,
        descriptor_text=plan.descriptor_toml(),
        descriptor_filename=DESCRIPTOR_FILENAME,
        scripts=scripts,
        scripts_filename=SCRIPTS_FILENAME if scripts else None,
        name=spec.identifier or KIND,
        private=True,
        client_id=client_id,
    )
    parameters = parameters_of(spec)
    stored = await storage.write_bytes(
        specification_key(submission.id), json.dumps(parameters, indent=2).encode()
    )
    submission.meta = {
        **submission.meta,
        "inspection": {
            "specification_key": stored.key,
            "batch_size": spec.batch_size,
            "identifier": spec.identifier,
            "command": plan.command,
            # Amun's script_sha256 is the script's own digest (the evaluator's names the whole
            # scripts archive, files included).
            "script_sha256": (
                hashlib.sha256(spec.script.encode("utf-8")).hexdigest()
                if spec.script is not None
                else None
            ),
            "warnings": plan.warnings,
        },
    }
    session.add(submission)
    for warning in plan.warnings:
        record_event(
            session,
            submission,
            "benchmark.warning",
            service="api",
            message=warning,
            payload={"source": "inspection request"},
        )
    await session.flush()
    return submission


# Reading inspections back.


async def get_inspection(
    session: AsyncSession, inspection_id: str, *, viewer: User | None
) -> Submission:
    """The inspection, or 404 (unknown, another kind, or private to someone else)."""
    try:
        check_id(inspection_id)
    except WeighbridgeError:
        raise NotFound(f"no inspection {inspection_id}", field="inspection_id") from None
    submission = await session.get(Submission, inspection_id)
    if submission is None or submission.kind != KIND or not can_view(submission, viewer):
        raise NotFound(f"no inspection {inspection_id}", field="inspection_id")
    return submission


async def list_inspections(
    session: AsyncSession, *, viewer: User, page: int = 1, limit: int = PAGE_LIMIT
) -> list[Submission]:
    """The viewer's inspections, newest first, one page (pages count from 1, as Amun's)."""
    query = (
        sa.select(Submission)
        .where(col(Submission.kind) == KIND, col(Submission.user_id) == viewer.id)
        .order_by(col(Submission.created_at).desc(), col(Submission.id))
        .limit(limit)
        .offset((page - 1) * limit)
    )
    return list(await session.scalars(query))
