"""Benchmark descriptors: Anubis-compatible TOML, validated with errors that name the line.

The schema is written once, as the JSON Schema document `core/schemas/descriptor.json`, and
that document is what validates: it is the public contract (served at
`/api/v1/schemas/descriptor.json` for editors and other tools), it states Anubis's rules in
Anubis's own terms (draft 2020-12 `propertyNames`, `dependentSchemas`, closed tables), and
its descriptions are the hints our errors give. Generating it from pydantic would give up
those keywords and the hand-written hints. The frozen pydantic `Descriptor` is the typed view
code works with; it is built only from a document the schema and the semantic checks passed,
and tests/core/test_descriptor.py walks both to keep them alike (every table, key, required
key, default and allowed value).

The few rules JSON Schema cannot express, and the translation of its errors into the
descriptor's words, live in core/descriptor_checks.py.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)

from core.descriptor_checks import (
    MAX_RANGE_CHILDREN,
    PLACEHOLDER,
    DescriptorError,
    Problem,
    check_document,
    descriptor_schema,
    descriptor_schema_bytes,
    located,
    read_toml,
)
from core.fetcher import SourceSpec
from core.tomlpositions import KeyPath, format_path, key_lines

__all__ = [
    "MAX_RANGE_CHILDREN",
    "Descriptor",
    "DescriptorError",
    "Problem",
    "apply_range",
    "descriptor_schema",
    "descriptor_schema_bytes",
    "expand_ranges",
    "parse_descriptor",
    "validate_descriptor",
]

Scalar = StrictBool | StrictInt | StrictFloat | StrictStr

# Instance families with GPUs or other accelerators (EC2 and SageMaker's ml.* names).
ACCELERATED_INSTANCE = re.compile(r"^(ml\.)?(p\d|g\d|inf\d|trn\d|dl\d)", re.IGNORECASE)


# The typed view.


class _Table(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Info(_Table):
    """[info]: what the benchmark is and when it runs."""

    description: str
    scheduling: str = "single_run"
    execution_engine: Literal["default", "aws.sagemaker"] = "default"
    labels: dict[str, str] = Field(default_factory=dict)


class Distributed(_Table):
    """[hardware.distributed]: a run over several instances."""

    num_instances: int | None = None
    processes_per_instance: str | None = None


class Hardware(_Table):
    """[hardware]: where it runs."""

    instance_type: str
    strategy: Literal["single_node", "horovod", "inference"] = "single_node"
    aws_zone_id: str | None = None
    availability_zone: str | None = None
    distributed: Distributed | None = None


class Env(_Table):
    """[env]: the container Anubis ran the benchmark in."""

    docker_image: str
    privileged: bool = False
    extended_shm: bool = True
    vars: dict[str, str] = Field(default_factory=dict)


class Script(_Table):
    """[ml.script]: the scripts archive of script mode."""

    script: str


class Ml(_Table):
    """[ml]: what runs."""

    framework: Literal["", "mxnet", "tensorflow"] = ""
    framework_version: str = ""
    benchmark_code: str = ""
    args: str = ""
    script: Script | None = None


class Source(_Table):
    """One [[data.sources]] (or [[server.models]]) entry: a file to fetch and verify."""

    src: str
    path: str
    id: str | None = None
    md5: str | None = None
    sha256: str | None = None

    def fetch_spec(self) -> SourceSpec:
        """What the fetcher needs: where from and the sums the file must have."""
        return SourceSpec(src=self.src, md5=self.md5 or None, sha256=self.sha256 or None)


class Data(_Table):
    """[data]: files the benchmark reads."""

    sources: list[Source]


class Metric(_Table):
    """One [[output.metrics]]: a number pulled out of the log by a regex."""

    name: str
    units: str
    pattern: str


class Alert(_Table):
    """One [[output.alerts]]: when a metric's change is a regression worth telling."""

    metric: str
    worse: Literal["higher", "lower"]
    method: Literal["both", "zscore", "changepoint"] = "both"
    lookback: int = 20
    z: float = 3.0
    min_change: float = 0.05


class Output(_Table):
    """[output]: the metrics and their alerts."""

    metrics: list[Metric]
    alerts: list[Alert] = Field(default_factory=list)


class CustomParams(_Table):
    """[custom_params]: settings for the SageMaker engine."""

    python_version: str | None = None
    sagemaker_job_name: str | None = None
    region: str | None = None
    dashboard: str | None = None
    merge: bool | None = None
    hyper_params: dict[str, Scalar] = Field(default_factory=dict)


class Probe(_Table):
    """[server.env.readiness_probe]: how to tell the server is ready."""

    path: str
    scheme: Literal["http", "https"] = "http"
    port: int | None = None
    initial_delay_seconds: float | None = None
    period_seconds: float | None = None
    timeout_seconds: float | None = None
    success_threshold: int | None = None
    failure_threshold: int | None = None


class ServerHardware(_Table):
    """[server.hardware]."""

    instance_type: str


class ServerEnv(_Table):
    """[server.env]: the server's container, ports and start command."""

    docker_image: str
    privileged: bool = False
    extended_shm: bool = True
    ports: list[int]
    start_command: str
    start_command_args: str = ""
    readiness_probe: Probe | None = None
    vars: dict[str, str] = Field(default_factory=dict)


class Server(_Table):
    """[server]: the server an inference benchmark's client talks to."""

    hardware: ServerHardware
    env: ServerEnv
    models: list[Source] = Field(default_factory=list)
    output: Output | None = None


class Environment(_Table):
    """[environment] (ours): the environment built over a base image, Amun-style."""

    base: str | None = None
    python_packages: list[str] = Field(default_factory=list)
    requirements: str | None = None
    native_packages: list[str] = Field(default_factory=list)


class Run(_Table):
    """[run] (ours): how many times benchmark_code runs, and for how long at most."""

    count: int = 1
    timeout: int = 3600


class Descriptor(_Table):
    """A validated benchmark descriptor; absent optional tables read as their defaults."""

    spec_version: str
    info: Info
    hardware: Hardware
    env: Env
    ml: Ml = Field(default_factory=Ml)
    data: Data = Field(default_factory=lambda: Data(sources=[]))
    output: Output = Field(default_factory=lambda: Output(metrics=[]))
    custom_params: CustomParams = Field(default_factory=CustomParams)
    server: Server | None = None
    environment: Environment = Field(default_factory=Environment)
    run: Run = Field(default_factory=Run)
    ranges: dict[str, list[Scalar]] = Field(default_factory=dict)

    @property
    def task_name(self) -> str | None:
        return self.info.labels.get("task_name")

    @property
    def scheduled(self) -> bool:
        return self.info.scheduling != "single_run"

    def local_warnings(
        self, *, docker: bool = False, gpus: int = 0, sagemaker: bool = False
    ) -> list[str]:
        """What the run cannot honour, one sentence each naming the field, for the timeline
        (`docker`: a Docker engine runs the job; `gpus`: GPUs here; `sagemaker`: the
        evaluators run `aws.sagemaker` descriptors as SageMaker training jobs)."""
        if sagemaker and self.info.execution_engine == "aws.sagemaker":
            return list(_sagemaker_warnings(self))
        return list(_local_warnings(self, docker=docker, gpus=gpus))


def parse_descriptor(source: bytes | str, *, filename: str = "descriptor.toml") -> Descriptor:
    """Read a descriptor's TOML; raise DescriptorError listing every problem, each with its
    key path, line and what is allowed there."""
    data, text = read_toml(source, filename=filename)
    return validate_descriptor(data, filename=filename, text=text)


def validate_descriptor(
    data: dict[str, Any], *, filename: str = "descriptor.toml", text: str = ""
) -> Descriptor:
    """A descriptor from already-parsed TOML (`text`, when given, supplies line numbers)."""
    problems = check_document(data, text=text)
    if problems:
        raise DescriptorError(filename, problems)
    try:
        return Descriptor.model_validate(data)
    except ValidationError as exc:  # the schema let through what the model refuses: say so
        lines = key_lines(text) if text else {}
        raise DescriptorError(
            filename,
            [
                located((tuple(e["loc"]), e["msg"], "the schema and the model disagree"), lines)
                for e in exc.errors()
            ],
        ) from None


# Ranges.


def expand_ranges(descriptor: Descriptor) -> list[dict[str, Any]]:
    """The [ranges] cross product, one dict of range name to value per child run: ranges
    in the order the descriptor lists them, the last one varying fastest. Empty when the
    descriptor has no ranges (it runs as itself, not as a family)."""
    if not descriptor.ranges:
        return []
    names = list(descriptor.ranges)
    return [
        dict(zip(names, values, strict=True))
        for values in itertools.product(*descriptor.ranges.values())
    ]


def apply_range(descriptor: Descriptor, values: dict[str, Any]) -> Descriptor:
    """One child of a range family: `values` (one of expand_ranges' dicts) put into the
    `{name}` placeholders of ml.benchmark_code, ml.args and env.vars; the child has no ranges."""
    problems = list(_combination_problems(descriptor, values))
    if problems:
        raise DescriptorError("the range child", problems)

    def fill(at: KeyPath, text: str) -> str:
        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in values:
                problems.append(
                    Problem(
                        path=format_path(at),
                        message=f"placeholder {{{name}}} names no range",
                        hint=f"ranges given: {', '.join(values) or 'none'}",
                    )
                )
                return match.group(0)
            return _scalar_text(values[name])

        return PLACEHOLDER.sub(one, text)

    ml = descriptor.ml.model_copy(
        update={
            "benchmark_code": fill(("ml", "benchmark_code"), descriptor.ml.benchmark_code),
            "args": fill(("ml", "args"), descriptor.ml.args),
        }
    )
    env_vars = {k: fill(("env", "vars", k), v) for k, v in descriptor.env.vars.items()}
    if problems:
        raise DescriptorError("the range child", problems)
    env = descriptor.env.model_copy(update={"vars": env_vars})
    return descriptor.model_copy(update={"ml": ml, "env": env, "ranges": {}})


def _combination_problems(descriptor: Descriptor, values: dict[str, Any]) -> Iterator[Problem]:
    for name in values.keys() - descriptor.ranges.keys():
        yield Problem(
            path=f"ranges.{name}",
            message=f"{name!r} is not a range of this descriptor",
            hint=f"ranges: {', '.join(descriptor.ranges) or 'none'}",
        )
    for name, allowed in descriptor.ranges.items():
        if name not in values:
            yield Problem(path=f"ranges.{name}", message=f"no value given for range {name!r}")
        elif not any(type(v) is type(values[name]) and v == values[name] for v in allowed):
            yield Problem(
                path=f"ranges.{name}",
                message=f"{values[name]!r} is not one of range {name!r}'s values",
                hint=f"values: {', '.join(_scalar_text(v) for v in allowed)}",
            )


def _scalar_text(value: Any) -> str:
    """A range value as it appears in a command line: TOML's spelling of booleans."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# Local runs.


def _sagemaker_warnings(descriptor: Descriptor) -> Iterator[str]:
    """What a SageMaker training job cannot honour (it honours the image, instance type and
    count, metrics and timeout)."""
    env, hardware = descriptor.env, descriptor.hardware
    if env.privileged:
        yield "env.privileged = true is not honoured: SageMaker training jobs are never privileged"
    for key in ("aws_zone_id", "availability_zone"):
        zone = getattr(hardware, key)
        if zone:
            yield f"hardware.{key} = {zone!r} is not honoured: SageMaker places training jobs"


def _local_warnings(descriptor: Descriptor, *, docker: bool, gpus: int) -> Iterator[str]:
    env, hardware, info = descriptor.env, descriptor.hardware, descriptor.info
    if not docker:
        yield (
            f"env.docker_image = {env.docker_image!r} is not used: this run has no Docker "
            "engine, so benchmark_code runs in the sandbox with the [environment] built here"
        )
    if env.privileged:
        yield "env.privileged = true is not honoured: local runs are never privileged"
    if "extended_shm" in env.model_fields_set and env.extended_shm:
        yield "env.extended_shm = true is not honoured: local runs get the sandbox's /dev/shm"
    if hardware.strategy != "single_node":
        yield (
            f"hardware.strategy = {hardware.strategy!r} is not honoured: a local run is one "
            "process tree on one machine (single_node)"
        )
    if hardware.distributed is not None:
        yield "hardware.distributed is not honoured: a local run uses one machine"
    for key in ("aws_zone_id", "availability_zone"):
        zone = getattr(hardware, key)
        if zone:
            yield f"hardware.{key} = {zone!r} is not honoured: a local run has no zone"
    if ACCELERATED_INSTANCE.match(hardware.instance_type):
        here = f"this machine's {gpus} GPU(s)" if gpus else "this machine, which has no GPU"
        yield (
            f"hardware.instance_type = {hardware.instance_type!r} has accelerators; "
            f"the run gets {here}"
        )
    if info.execution_engine == "aws.sagemaker":
        yield (
            'info.execution_engine = "aws.sagemaker" is not honoured: the local runner runs '
            "the benchmark on this machine"
        )
    if descriptor.custom_params.model_fields_set:
        yield "custom_params is not used: its settings are for the SageMaker engine"
