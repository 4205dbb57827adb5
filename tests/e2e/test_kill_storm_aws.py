"""The kill storm of test_kill_storm.py with the storage on S3 and the queues on SQS (moto's
server over HTTP), on SQLite: a file of its own, so that the storms run side by side."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.stack import query
from tests.e2e.test_kill_storm import KILLS_ELSEWHERE, SUBMISSIONS, storm

pytestmark = pytest.mark.slow


def test_submissions_survive_a_storm_of_kills_on_s3_and_sqs(
    tmp_path: Path, moto_url: str, aws_stack: dict[str, str]
) -> None:
    """The same storm with the bundles, builds and results on S3 and the queues on SQS (both
    moto's server over HTTP) and the local runner, on SQLite: a killed holder's SQS message
    comes back after its visibility timeout, the outbox relays what a kill left staged."""
    storm(
        tmp_path,
        f"sqlite+aiosqlite:///{tmp_path / 'home' / 'weighbridge.db'}",
        kills=KILLS_ELSEWHERE,
        **aws_stack,
    )
    # It was S3 and SQS that carried the work: every build and result is in the bucket, the
    # queues (with their dead-letter queues) are SQS's, and the queue table stayed empty.
    import boto3

    bucket, prefix = aws_stack["WEIGHBRIDGE_STORAGE_URL"].removeprefix("s3://").split("/", 1)
    s3 = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1")
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for o in page.get("Contents", [])
    ]
    assert sum(k.endswith("/build/model.mar") for k in keys) == SUBMISSIONS
    assert sum(k.endswith("/results/test/predictions.jsonl") for k in keys) >= SUBMISSIONS
    queue_prefix = aws_stack["WEIGHBRIDGE_QUEUE_URL"].split("prefix=")[1].split("&")[0]
    sqs = boto3.client("sqs", endpoint_url=moto_url, region_name="us-east-1")
    names = {
        u.rsplit("/", 1)[1] for u in sqs.list_queues(QueueNamePrefix=queue_prefix)["QueueUrls"]
    }
    assert {f"{queue_prefix}build", f"{queue_prefix}build-dlq"} <= names
    assert {f"{queue_prefix}eval-storm-fleet", f"{queue_prefix}eval-storm-fleet-dlq"} <= names
    database = f"sqlite+aiosqlite:///{tmp_path / 'home' / 'weighbridge.db'}"
    assert query(database, "SELECT count(*) FROM queue_messages") == [(0,)]
