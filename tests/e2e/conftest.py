"""End-to-end fixtures: the example models, trained once per session, and a fresh database on
each selected backend for the processes a test starts."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import _create_server_database, _drop_server_database, selected_backends
from tests.examples.conftest import train_digits, trained

__all__ = ["aws_stack", "stack_database", "train_digits", "trained"]


@pytest.fixture(params=selected_backends())
def stack_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database of each selected backend (Postgres and MariaDB skipped with
    the reason when unreachable): SQLite in the stack's home, else a fresh database on the
    server, dropped afterwards. The processes under test create the schema, as `up` does."""
    backend = request.param
    if backend == "sqlite":
        # The same file `up` would pick by default in the home `stack_env` gives it.
        yield f"sqlite+aiosqlite:///{tmp_path / 'home' / 'weighbridge.db'}"
        return
    url, admin = _create_server_database(backend)
    try:
        yield url
    finally:
        _drop_server_database(backend, url, admin)


@pytest.fixture
def aws_stack(moto_url: str) -> dict[str, str]:
    """The settings that put a stack's storage on S3 and its queues on SQS, both on moto's
    server over HTTP: a fresh bucket and queue prefix of its own (AWS's fake credentials are
    in the environment the stack's processes inherit)."""
    import boto3

    from core.models import new_id

    bucket = f"wb-{new_id()[:12]}"
    boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1").create_bucket(Bucket=bucket)
    return {
        "WEIGHBRIDGE_STORAGE_URL": f"s3://{bucket}/stack",
        "WEIGHBRIDGE_QUEUE_URL": f"sqs://?prefix=t{new_id()[:8]}-&wait=2",
        "WEIGHBRIDGE_AWS_ENDPOINT_URL": moto_url,
        "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
        "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
        "AWS_DEFAULT_REGION": "us-east-1",
    }
