"""Typed, versioned schemas of the queue messages, shared by their senders and receivers.

The envelope (core/envelope.py) says the message's `type`; its payload carries
`schema_version`. A sender builds the payload from the type's model (`payload_of`); the
receiver reads it back with `read_message`, which refuses (MessageRefused, never retried) a
message of another type, of an unknown version, or one that does not validate, with a reason
naming the field. Payloads carry storage keys and sha256s, never host paths. A payload without
`schema_version` predates this module: it is upgraded once, here (docs/pipeline.md "Messages").
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.envelope import Envelope


class MessageRefused(Exception):
    """A message its receiver cannot take; retrying would not change that."""

    def __init__(self, reason: str, *, field: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


class Schema(BaseModel):
    """A part of a message: typed fields, nothing else."""

    model_config = ConfigDict(extra="forbid")


class SubmissionRef(Schema):
    id: str
    kind: str
    name: str
    upload_key: str | None = None
    upload_filename: str | None = None
    upload_sha256: str | None = None
    upload_bytes: int | None = None
    meta: dict[str, Any] = Field(default_factory=dict)


class TaskRef(Schema):
    slug: str
    config: dict[str, Any]  # validated by the receiver as core.taskconfig.TaskConfig


class OwnerRef(Schema):
    id: int | None
    name: str
    email: str


class BuildRef(Schema):
    """What the builder made: storage keys and hashes (the env by key, never its path)."""

    mar_key: str
    env_key: str | None = None  # envs/<requirements_sha256>; None: the evaluator's own python
    requirements_sha256: str | None = None
    handler: str | None = None
    handler_entry: str | None = None
    bundle_sha256: str | None = None
    model_name: str | None = None
    dockerfile_key: str | None = None
    specification_key: str | None = None
    log_key: str | None = None


class DatasetRef(Schema):
    name: str
    key: str
    sha256: str
    access: str = "hidden"
    split: str = "test"
    weight: float = 1.0
    perturbation_of: str | None = None
    n_examples: int | None = None


class Message(Schema):
    """A message type's payload; `TYPE` is the envelope's type, `VERSION` its schema_version."""

    TYPE: ClassVar[str]
    VERSION: ClassVar[int]

    @classmethod
    def upgrade_legacy(cls, payload: dict[str, Any]) -> dict[str, Any]:
        """A payload written before schema_version existed, in this version's shape."""
        return {**payload, "schema_version": cls.VERSION}


class BuildMessage(Message):
    """Queue `build`: everything the builder needs to build one submission."""

    TYPE: ClassVar[str] = "build"
    VERSION: ClassVar[int] = 1

    schema_version: Literal[1] = 1
    submission: SubmissionRef
    task: TaskRef | None = None
    owner: OwnerRef | None = None


class EvaluateMessage(Message):
    """Queue `eval-<eval_server_id>`: the build message's parts plus the build and datasets."""

    TYPE: ClassVar[str] = "evaluate"
    # 1: the unversioned payload whose build.python was the builder host's interpreter path.
    VERSION: ClassVar[int] = 2

    schema_version: Literal[2] = 2
    submission: SubmissionRef
    task: TaskRef
    owner: OwnerRef | None = None
    build: BuildRef
    datasets: list[DatasetRef] = Field(default_factory=list)

    @classmethod
    def upgrade_legacy(cls, payload: dict[str, Any]) -> dict[str, Any]:
        # The old build.python named the builder's env by path; its env_key names the same env.
        build = payload.get("build")
        if isinstance(build, dict):
            build = {k: v for k, v in build.items() if k != "python"}
            payload = {**payload, "build": build}
        return super().upgrade_legacy(payload)


class DataRef(Schema):
    """A fetched, verified data source: where it is stored and where the job sees it."""

    key: str  # datasets/<sha256>/<file name>
    sha256: str
    size: int
    path: str  # the descriptor's data.sources[].path: the job sees it at /data/<path>
    src: str


class BenchmarkRef(Schema):
    """What the builder prepared for a benchmark or inspection run: keys and hashes only."""

    descriptor_key: str  # the descriptor as this submission runs it (range values applied)
    descriptor_sha256: str
    scripts_key: str | None = None  # a normalised tar of the scripts (script mode)
    scripts_sha256: str | None = None
    env_key: str | None = None  # envs/<requirements_sha256>; None: the service's own python
    requirements_sha256: str | None = None
    log_key: str | None = None
    # What this machine cannot honour (docker image, horovod, a zone...), for the timeline.
    warnings: list[str] = Field(default_factory=list)


class BenchmarkMessage(Message):
    """Queue `eval-default`: run a built benchmark (or inspection) `run.count` times."""

    TYPE: ClassVar[str] = "benchmark"
    VERSION: ClassVar[int] = 1

    schema_version: Literal[1] = 1
    submission: SubmissionRef
    owner: OwnerRef | None = None
    benchmark: BenchmarkRef
    data: list[DataRef] = Field(default_factory=list)
    # This child's [ranges] values (already applied to the descriptor), for the family table.
    values: dict[str, Any] = Field(default_factory=dict)


MESSAGES: dict[str, type[Message]] = {
    m.TYPE: m for m in (BuildMessage, EvaluateMessage, BenchmarkMessage)
}

M = TypeVar("M", bound=Message)


def payload_of(message: Message) -> dict[str, Any]:
    """The JSON payload a sender puts in the envelope."""
    return message.model_dump(mode="json")


def read_message(envelope: Envelope, expected: type[M]) -> M:
    """The envelope's payload as `expected`; MessageRefused (naming the field) otherwise."""
    if envelope.type != expected.TYPE:
        known = "a known type" if envelope.type in MESSAGES else "an unknown type"
        raise MessageRefused(
            f"message type {envelope.type!r} is {known} this receiver does not take "
            f"(it takes {expected.TYPE!r})",
            field="type",
        )
    payload = dict(envelope.payload)
    if "schema_version" not in payload:
        payload = expected.upgrade_legacy(payload)
    elif payload["schema_version"] != expected.VERSION:
        raise MessageRefused(
            f"schema_version: {expected.TYPE} message version {payload['schema_version']!r} "
            f"is unknown here (this receiver reads version {expected.VERSION})",
            field="schema_version",
        )
    try:
        return expected.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "payload"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise MessageRefused(f"{where}: {first['msg']}{more}", field=where) from None
