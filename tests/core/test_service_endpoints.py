"""WEIGHBRIDGE_S3_ENDPOINT_URL overrides WEIGHBRIDGE_AWS_ENDPOINT_URL for storage, as compose
needs (MinIO for S3 and ElasticMQ for SQS are two servers); against moto's server over HTTP."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import boto3

from core.context import start_services
from core.settings import Settings


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
