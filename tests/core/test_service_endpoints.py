"""WEIGHBRIDGE_S3_ENDPOINT_URL overrides WEIGHBRIDGE_AWS_ENDPOINT_URL for storage, as compose
needs (MinIO for S3 and ElasticMQ for SQS are two servers); against moto's server over HTTP."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from core.context import start_services
from core.deployment import plan_deployment
from core.envelope import Envelope
from core.errors import WeighbridgeError
from core.settings import Settings
from tests.conftest import free_port


def _wait_listening(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_storage_uses_the_s3_endpoint_over_the_common_one(
    moto_url: str, tmp_path: Path
) -> None:
    bucket = f"wb-endpoints-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1").create_bucket(Bucket=bucket)
    settings = Settings(
        home=tmp_path,
        storage_url=f"s3://{bucket}/deploy",
        queue_url="db://",
        # Nothing answers here: storage works only if it took the S3 endpoint instead.
        aws_endpoint_url=f"http://127.0.0.1:{_closed_port()}",
        s3_endpoint_url=moto_url,
    )
    services = await start_services(settings, sync=False)
    try:
        await services.storage.write_bytes("probe/one.txt", b"on the S3 endpoint")
        assert await services.storage.read_bytes("probe/one.txt") == b"on the S3 endpoint"
    finally:
        await services.close()
    listed = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1").list_objects_v2(
        Bucket=bucket
    )
    assert [o["Key"] for o in listed["Contents"]] == ["deploy/probe/one.txt"]


@pytest.fixture
def second_moto() -> Iterator[str]:
    """Another moto server in its own process: servers in one process share their state, and
    the test below must tell the two apart."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_listening(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


async def test_s3_and_sqs_on_two_servers_and_queues_as_the_deployment_declares(
    moto_url: str, second_moto: str, tmp_path: Path
) -> None:
    """The compose shape: S3 on one server, SQS on another, the common endpoint dead. The
    queues the SQS backend creates on demand have the names and attributes that Terraform and
    ElasticMQ declare (core.deployment), so either may create them first."""
    s3_url = second_moto
    bucket = f"wb-split-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1").create_bucket(Bucket=bucket)
    prefix = f"e{uuid.uuid4().hex[:8]}-"
    settings = Settings(
        home=tmp_path,
        storage_url=f"s3://{bucket}/",
        queue_url=f"sqs://?prefix={prefix}",
        aws_endpoint_url=f"http://127.0.0.1:{_closed_port()}",
        s3_endpoint_url=s3_url,
        sqs_endpoint_url=moto_url,
    )
    try:
        services = await start_services(settings, sync=False)
    except WeighbridgeError as exc:
        pytest.skip(f"this build has no SQS queue backend yet: {exc.message}")
    try:
        await services.storage.write_bytes("probe", b"s3")
        await services.queue.send("build", Envelope(action_id="a1", type="probe"))
        got = await services.queue.receive(["build"], wait_seconds=5)
        assert [d.envelope.action_id for d in got] == ["a1"]
        await services.queue.ack(got[0])
    finally:
        await services.close()

    sqs = boto3.client("sqs", endpoint_url=moto_url, region_name="us-east-1")
    names = sorted(
        u.rsplit("/", 1)[-1] for u in sqs.list_queues(QueueNamePrefix=prefix)["QueueUrls"]
    )
    assert names == [prefix + "build", prefix + "build-dlq"]
    plan = plan_deployment(settings, {})
    url = sqs.get_queue_url(QueueName=prefix + "build")["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert int(attributes["VisibilityTimeout"]) == plan.visibility_timeout_seconds
    assert int(attributes["ReceiveMessageWaitTimeSeconds"]) == plan.wait_seconds
    assert int(attributes["MessageRetentionPeriod"]) == plan.retention_seconds
    redrive = json.loads(attributes["RedrivePolicy"])
    assert int(redrive["maxReceiveCount"]) == plan.max_receive_count
    assert redrive["deadLetterTargetArn"].endswith(":" + prefix + "build-dlq")
    # Nothing went to the S3 server's SQS, nor to the SQS server's S3.
    other = boto3.client("sqs", endpoint_url=s3_url, region_name="us-east-1")
    assert not other.list_queues(QueueNamePrefix=prefix).get("QueueUrls")
    s3_on_sqs = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1")
    assert bucket not in [b["Name"] for b in s3_on_sqs.list_buckets()["Buckets"]]
