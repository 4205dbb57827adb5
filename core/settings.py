"""The settings every Weighbridge process reads once: the WEIGHBRIDGE_* contract."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

GIB = 1024**3


class Settings(BaseSettings):
    """Environment variables prefixed WEIGHBRIDGE_ (also read from a `.env` file)."""

    model_config = SettingsConfigDict(env_prefix="WEIGHBRIDGE_", env_file=".env", extra="ignore")

    home: Path = Path(".weighbridge")
    database_url: str = ""
    storage_url: str = ""
    queue_url: str = "db://"
    aws_endpoint_url: str | None = None
    # Per-service endpoints that override aws_endpoint_url where S3 and SQS are served apart
    # (docker-compose: MinIO for S3, ElasticMQ for SQS); unset: aws_endpoint_url for both.
    s3_endpoint_url: str | None = None
    sqs_endpoint_url: str | None = None
    aws_region: str = "us-east-1"
    runner: str = "local"
    builder: str = "local"
    # The SageMaker runner (WEIGHBRIDGE_RUNNER=sagemaker): transform and training jobs one
    # fleet keeps in progress at once (counted in SageMaker by the fleet's job-name prefix).
    sagemaker_max_jobs: int = Field(default=4, ge=1)
    # The docker builder (WEIGHBRIDGE_BUILDER=docker): the IAM role every SageMaker model it
    # registers runs as (required there); its ECR repository is `<ecr_prefix>/models`; with
    # docker_required a build fails where no Docker engine answers instead of registering
    # the model without building its image (set it in production).
    sagemaker_role_arn: str = ""
    ecr_prefix: str = "weighbridge"
    docker_required: bool = False
    email_url: str = ""
    # Unset: the task configs shipped with Weighbridge (the package `task_configs`), so every
    # command finds them whatever the current folder; a relative path is taken from the cwd.
    task_configs: Path = Path()
    # Comma-separated fleet ids; empty means "default plus every eval_server_id in the tasks".
    fleets: str = ""
    max_upload_bytes: int = 10 * GIB
    # How user code is isolated: "bwrap" (bubblewrap namespaces, an unprivileged uid per
    # sandbox, seccomp, cgroups; the default and the only safe choice) or
    # "unsafe-no-isolation" (plain processes; every receipt and leaderboard then says so).
    sandbox: str = "bwrap"
    # Submissions one evaluator process works on at once (0: as many as the machine has
    # cores, at least 2), so one slow submission never holds a fleet.
    evaluator_concurrency: int = Field(default=0, ge=0)
    # The sandbox of each benchmark or inspection run (a model's limits come from its task):
    # memory (cgroup, and RLIMIT_AS with 1 GiB of slack) and the /scratch tmpfs, in MiB.
    # Hosts a benchmark's data sources may be fetched from although they resolve to a
    # non-public address (an operator's own data server), comma-separated; none by default.
    data_allow_hosts: str = ""
    # Benchmark and inspection runs one (non-admin) user may start in 24 hours, ticks of
    # their schedules included.
    benchmark_runs_per_day: int = Field(default=500, ge=1)
    benchmark_memory_mb: int = Field(default=4096, ge=64)
    benchmark_scratch_mb: int = Field(default=1024, ge=16)

    # Queue behaviour (not part of the public contract, but tunable).
    lease_seconds: float = 60.0
    max_attempts: int = 3
    retry_backoff_seconds: float = 2.0
    poll_seconds: float = 0.2

    # The address the API answers on, used for links in emails.
    public_url: str = "http://127.0.0.1:8000"
    email_from: str = "Weighbridge <noreply@weighbridge.local>"

    upload_chunk_bytes: int = Field(default=1024 * 1024, ge=4096)
    # Remote evaluator workers (WEIGHBRIDGE_RUNNER=remote): how long a claimed job stays a
    # worker's without a heartbeat (it beats every third of it), and how long the presigned
    # links it gets last (upload links are renewed with every heartbeat).
    worker_lease_seconds: float = Field(default=60.0, gt=0)
    worker_url_seconds: int = Field(default=900, ge=1)
    # The key that signs the API's own presigned links (local storage). Empty: a random key
    # made once and kept in $WEIGHBRIDGE_HOME/secret_key, shared by every process with that
    # home; deployments whose processes do not share a home must set the same key on each.
    secret_key: str = ""

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        home = self.home.expanduser().absolute()
        self.home = home
        if not self.database_url:
            self.database_url = f"sqlite+aiosqlite:///{home / 'weighbridge.db'}"
        if not self.storage_url:
            self.storage_url = f"file://{home / 'storage'}"
        if not self.email_url:
            self.email_url = f"file://{home / 'outbox'}"
        if "task_configs" not in self.model_fields_set or not str(self.task_configs).strip("."):
            from task_configs import FOLDER

            self.task_configs = FOLDER
        return self

    def evaluations_at_once(self) -> int:
        import os

        if self.evaluator_concurrency:
            return self.evaluator_concurrency
        return max(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2)

    def data_allow_host_names(self) -> tuple[str, ...]:
        """WEIGHBRIDGE_DATA_ALLOW_HOSTS as a tuple of host names or addresses."""
        return tuple(h.strip() for h in self.data_allow_hosts.split(",") if h.strip())

    def fleet_ids(self) -> list[str]:
        """The fleets named explicitly in WEIGHBRIDGE_FLEETS (empty list: not set)."""
        return [f.strip() for f in self.fleets.split(",") if f.strip()]
