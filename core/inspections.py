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
from typing import Any

import sqlalchemy as sa
import tomli_w
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from core.benchmarks import submit_benchmark
from core.descriptor import parse_descriptor
from core.errors import NotFound, WeighbridgeError
from core.inspection_request import (
    MAX_REQUEST_BYTES,
    MEMORY_QUANTITY,
    RESERVED_ENV_PREFIX,
    SCRIPT,
    InspectionRequestError,
    InspectionSpecification,
    Resources,
    parse_specification,
    requirement_problem,
    scripts_relative,
)
from core.models import Submission, User
from core.outbox import Outbox
from core.states import record_event
from core.storage import Storage, StoredObject
from core.submissions import can_view, check_id

__all__ = [
    "MAX_REQUEST_BYTES",
    "InspectionPlan",
    "InspectionRequestError",
    "InspectionSpecification",
    "get_inspection",
    "list_inspections",
    "parse_specification",
    "plan_inspection",
    "submit_inspection",
]

KIND = "inspection"
DESCRIPTOR_FILENAME = "inspection.toml"
SCRIPTS_FILENAME = "inspection.tar.gz"
SPECIFICATION = "specification.json"
PAGE_LIMIT = 100  # Amun's page size
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
PYTHON = re.compile(r"^python([0-9](\.[0-9]+)?)?$")
LABEL_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


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
    if spec.instance_type and spec.engine != "aws.sagemaker":
        raise InspectionRequestError(
            'instance_type is for engine = "aws.sagemaker" (local runs go where they go); '
            "drop it or ask for that engine",
            field="instance_type",
        )
    info: dict[str, Any] = {
        "description": f"Amun inspection {spec.identifier or ''}".strip(),
        "labels": {"task_name": label},
    }
    instance_type = "local"
    if spec.engine == "aws.sagemaker":
        info["execution_engine"] = "aws.sagemaker"
        instance_type = spec.instance_type or "ml.m5.xlarge"
    descriptor: dict[str, Any] = {
        "spec_version": "0.1.0",
        "info": info,
        "hardware": {"instance_type": instance_type, "strategy": "single_node"},
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
    """Where the request is kept (the storage layout's build/specification.json; Amun's
    build/specification)."""
    return f"submissions/{submission_id}/build/{SPECIFICATION}"


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
    limit: int | None = None,
) -> Submission:
    """Queue the inspection in the caller's transaction: its scripts archive is written at
    `scripts_key` (an incoming key; submit_benchmark moves it to its content address), the
    specification kept at build/specification.json, the warnings written in the timeline.
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
        limit=limit,
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
