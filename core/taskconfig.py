"""Task configs (task_configs/<slug>.toml): the schema and a loader naming file, field, reason."""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.errors import InvalidConfig

SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
CROSS_FIELD = re.compile(r"^([A-Za-z_][\w.-]*): (.+)$", re.S)
FIELD_TYPES = ("int", "float", "str", "bool", "list", "dict", "any")
# Dynaboard's deltas: the primary metric on a perturbed dataset against the original's answers.
DELTA_METRICS = ("robustness", "fairness")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetConfig(_Strict):
    """One dataset: a generator or a stored file, with its checksum once prepared."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    access: Literal["public", "hidden"] = "hidden"
    split: str = "test"
    # `generator:<name>` (made by a project command) or a storage key / file:// / s3:// URI.
    source: str
    options: dict[str, Any] = Field(default_factory=dict)
    sha256: str = Field(default="", pattern=r"^([0-9a-f]{64})?$")
    weight: float = Field(default=1.0, ge=0)
    # Name of the dataset this one perturbs (robustness/fairness deltas are taken against it).
    # Its rows map to the original's by `original_uid` (or, without one, by equal `uid`).
    perturbation_of: str | None = None
    # Which Dynaboard delta the perturbation measures (default robustness; needs perturbation_of).
    perturbation: Literal["robustness", "fairness"] | None = None
    # Who holds the labels: the evaluator (in the stored rows), or the organiser's remote
    # workers ("worker": the stored rows need no labels; a worker started with --labels scores
    # on its own disk and sends back only scores). `labels_sha256`: the sha256 of the labels
    # file such a worker must hold (empty: not checked).
    labels: Literal["evaluator", "worker"] = "evaluator"
    labels_sha256: str = Field(default="", pattern=r"^([0-9a-f]{64})?$")

    @property
    def delta_metric(self) -> str | None:
        """The delta metric this dataset is scored with against its original, if any."""
        if self.perturbation_of is None:
            return None
        return self.perturbation or "robustness"


class MetricConfig(_Strict):
    name: str
    options: dict[str, Any] = Field(default_factory=dict)
    weight: float | None = Field(default=None, ge=0)
    offset: float = 0.0


class LimitsConfig(_Strict):
    submissions_per_window: int = Field(default=3, ge=1)
    window_hours: float = Field(default=24, gt=0)
    max_upload_bytes: int | None = Field(default=None, gt=0)


class BuildConfig(_Strict):
    gpu: bool = False
    base_image_cpu: str = "pytorch/torchserve:0.12.0-cpu"
    base_image_gpu: str = "pytorch/torchserve:0.12.0-gpu"
    # Which image the docker builder starts from: "torchserve" (base_image_cpu/base_image_gpu
    # above) or "sagemaker-pytorch" (AWS's PyTorch inference image for the task's
    # eval.aws_region and eval.instance_type, at pytorch_version and python_version).
    base_image: Literal["torchserve", "sagemaker-pytorch"] = "torchserve"
    pytorch_version: str = Field(default="2.3", pattern=r"^\d+\.\d+(\.\d+)?$")
    python_version: str = "3.11"
    torchserve: dict[str, Any] = Field(default_factory=dict)
    timeout_seconds: float = Field(default=1800, gt=0)


class EvalConfig(_Strict):
    eval_server_id: str = Field(default="default", pattern=r"^[a-z0-9][a-z0-9_-]{0,58}$")
    instance_type: str = "ml.m5.xlarge"
    instance_count: int = Field(default=1, ge=1)
    aws_region: str = "us-east-1"
    batch_size: int = Field(default=32, ge=1, le=100_000)
    max_concurrent_transforms: int = Field(default=1, ge=1)
    # SageMaker transform: the most MB of input lines one request carries (MaxPayloadInMB);
    # times max_concurrent_transforms it may not pass SageMaker's 100.
    max_payload_mb: int = Field(default=6, ge=1, le=100)
    timeout_seconds: float = Field(default=600, gt=0)
    # One dataset's whole run, and a submission's whole evaluation: a handler that answers
    # each batch just in time still cannot hold its fleet longer than these.
    dataset_timeout_seconds: float = Field(default=3600, gt=0)
    total_timeout_seconds: float = Field(default=4 * 3600, gt=0)
    memory_mb: int = Field(default=2048, ge=64)
    create_endpoint: bool = False
    confidence: float = Field(default=0.95, gt=0, lt=1)
    bootstrap_resamples: int = Field(default=1000, ge=0)


class LeaderboardConfig(_Strict):
    """How the task's leaderboard is shown (`[leaderboard]`)."""

    # A blind phase: the board shows ranks and names only, no scores, intervals or
    # per-dataset values (on the page, in its CSV/JSON exports and in the API), and its
    # weights cannot be changed (re-ranking would reveal the hidden scores).
    rank_only: bool = False


class LogsConfig(_Strict):
    """Who may read a submission's logs (`[logs]`): its owner and the admins always; anyone
    else only where `public = true` and the submission is public (logs may echo a model's
    code or data, so they stay private unless the organiser says otherwise)."""

    public: bool = False
    # What a handler prints (and its tracebacks) while it runs on a hidden dataset: it may
    # echo the hidden examples it was given. False (the default): kept in storage for the
    # organisers (`results/<dataset>/handler-output.log`), and the owner's log says so, with
    # a failure's reason cut short; true: it is part of the owner's log, as on public sets.
    hidden_output: bool = False


class TaskConfig(_Strict):
    """A validated task: what a handler receives, what it must answer, how it is scored."""

    slug: str
    name: str
    description: str = ""
    input_fields: list[str] = Field(min_length=1)
    output_fields: dict[str, str] = Field(min_length=1)
    label_field: str = "label"
    datasets: list[DatasetConfig] = Field(min_length=1)
    metrics: list[MetricConfig] = Field(min_length=1)
    leaderboard_weights: dict[str, float] = Field(default_factory=dict)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    build: BuildConfig = Field(default_factory=BuildConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    leaderboard: LeaderboardConfig = Field(default_factory=LeaderboardConfig)
    logs: LogsConfig = Field(default_factory=LogsConfig)

    @field_validator("slug")
    @classmethod
    def _slug(cls, v: str) -> str:
        if not SLUG.match(v):
            raise ValueError("must be lower-case letters, digits, '-' or '_' (at most 64)")
        return v

    @field_validator("output_fields")
    @classmethod
    def _types(cls, v: dict[str, str]) -> dict[str, str]:
        for key, kind in v.items():
            if kind not in FIELD_TYPES:
                raise ValueError(
                    f"type of {key!r} is {kind!r}; use one of {', '.join(FIELD_TYPES)}"
                )
        return v

    @model_validator(mode="after")
    def _cross(self) -> TaskConfig:
        names = [d.name for d in self.datasets]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"datasets: names must be unique, repeated: {sorted(dupes)}")
        for i, d in enumerate(self.datasets):
            if d.perturbation_of and d.perturbation_of not in names:
                raise ValueError(
                    f"datasets.{i}.perturbation_of: dataset {d.name!r} perturbs "
                    f"{d.perturbation_of!r}, which is not a dataset of this task"
                )
            if d.perturbation_of == d.name:
                raise ValueError(f"datasets.{i}.perturbation_of: {d.name!r} cannot perturb itself")
            if d.labels == "worker" and d.access != "hidden":
                raise ValueError(
                    f"datasets.{i}.labels: only a hidden dataset's labels can be held by the "
                    "remote workers (a public one is read with its labels)"
                )
            if d.labels_sha256 and d.labels != "worker":
                raise ValueError(f'datasets.{i}.labels_sha256: set only with labels = "worker"')
            if d.perturbation and not d.perturbation_of:
                raise ValueError(
                    f"datasets.{i}.perturbation: {d.name!r} names no perturbation_of, the "
                    "dataset whose predictions its own are compared with"
                )
            original = self.dataset(d.perturbation_of) if d.perturbation_of else None
            if original is not None and d.access == "hidden" and original.access != "hidden":
                raise ValueError(
                    f"datasets.{i}.perturbation_of: hidden {d.name!r} perturbs the public "
                    f"{d.perturbation_of!r}; evaluators run hidden datasets only, so the "
                    "original must be hidden too"
                )
        if not any(d.access == "hidden" for d in self.datasets):
            raise ValueError("datasets: at least one dataset must be hidden (the scoring set)")
        metric_names = [m.name for m in self.metrics]
        measured = {d.delta_metric for d in self.datasets if d.access == "hidden"}
        for i, m in enumerate(self.metrics):
            if m.name not in DELTA_METRICS:
                continue
            if i == 0:
                raise ValueError(
                    f"metrics.0: {m.name} compares two runs of the primary metric and "
                    "cannot be the primary metric itself; list it after the primary one"
                )
            if m.name not in measured:
                raise ValueError(
                    f"metrics.{i}: {m.name} needs a hidden dataset with perturbation_of "
                    f'(and perturbation = "{m.name}") to be measured on'
                )
        for key in self.leaderboard_weights:
            if key not in metric_names:
                raise ValueError(
                    f"leaderboard_weights.{key}: not one of the task's metrics {metric_names}"
                )
        if self.label_field in self.input_fields:
            raise ValueError(
                f"input_fields: the label field {self.label_field!r} must not be an input"
            )
        return self

    @property
    def primary_metric(self) -> MetricConfig:
        return self.metrics[0]

    def dataset(self, name: str) -> DatasetConfig:
        for d in self.datasets:
            if d.name == name:
                return d
        raise KeyError(name)

    def prediction_of(self, answer: Any) -> Any:
        """What the metrics compare with the label: the output field named like the label,
        else the only output field, else (several fields) the whole answer."""
        if not isinstance(answer, dict):
            return answer
        if self.label_field in self.output_fields:
            return answer.get(self.label_field)
        if len(self.output_fields) == 1:
            return answer.get(next(iter(self.output_fields)))
        return answer

    def metric_weights(self) -> dict[str, float]:
        """Dynabench's defaults (primary 4, others 1), overridden by the config."""
        weights = {m.name: (4.0 if i == 0 else 1.0) for i, m in enumerate(self.metrics)}
        for m in self.metrics:
            if m.weight is not None:
                weights[m.name] = m.weight
        weights.update(self.leaderboard_weights)
        return weights

    def sha256(self) -> str:
        return hashlib.sha256(
            json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        ).hexdigest()


def _unknown_metrics(config: TaskConfig) -> list[str]:
    from metrics.registry import is_registered  # here: no import-time dependency

    return [m.name for m in config.metrics if not is_registered(m.name)]


def parse_task_config(data: dict[str, Any], *, path: str) -> TaskConfig:
    """Validate a dict read from `path`; InvalidConfig names the first bad field and why."""
    data = dict(data)
    data.setdefault("slug", Path(path).stem)
    try:
        config = TaskConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        # Checks across fields (model validators) name their field first: "field: reason".
        named = CROSS_FIELD.match(msg) if not err["loc"] else None
        if named:
            field, msg = named.group(1), named.group(2)
        if err["type"] == "extra_forbidden":
            msg = "unknown field; check the spelling against the task config reference"
        elif err["type"] == "missing":
            msg = "required field is missing"
        raise InvalidConfig(path, field, msg) from None
    unknown = _unknown_metrics(config)
    if unknown:
        import metrics

        raise InvalidConfig(
            path,
            "metrics",
            f"unknown metric(s) {unknown}; registered: {', '.join(sorted(metrics.names()))}",
        )
    return config


def load_task_config(path: Path) -> TaskConfig:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise InvalidConfig(str(path), "(syntax)", f"not valid TOML: {exc}") from None
    except OSError as exc:
        raise InvalidConfig(str(path), "(file)", f"cannot be read: {exc.strerror}") from None
    return parse_task_config(data, path=str(path))


def load_task_configs(folder: Path) -> dict[str, TaskConfig]:
    """Every task in the folder by slug; the first invalid file stops the load with its reason."""
    if not folder.is_dir():
        raise InvalidConfig(str(folder), "(folder)", "task config folder does not exist")
    configs: dict[str, TaskConfig] = {}
    for path in sorted(folder.glob("*.toml")):
        config = load_task_config(path)
        if config.slug in configs:
            raise InvalidConfig(
                str(path), "slug", f"{config.slug!r} is already used by another file"
            )
        configs[config.slug] = config
    return configs
