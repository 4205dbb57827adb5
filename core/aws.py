"""AWS clients shared by every AWS backend (S3, SQS, SES, ECR, SageMaker) and AWS names.

`AwsClients` hands out one aioboto3 client per service and event loop (a client belongs to
the loop that opened it), pointed at `WEIGHBRIDGE_AWS_ENDPOINT_URL` when set (moto, MinIO,
LocalStack, ElasticMQ) and `WEIGHBRIDGE_AWS_REGION`; `close` closes the current loop's
clients. Credentials come from the usual AWS chain (environment, profile, instance role).

The name helpers make the names SageMaker and ECR accept from our ids: SageMaker names
match `^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}` (at most 63 characters, letters, digits and
single or repeated hyphens, no leading or trailing hyphen).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from typing import Any

import aioboto3
from botocore.config import Config
from botocore.exceptions import ClientError

SAGEMAKER_NAME_MAX = 63
_NOT_NAME = re.compile(r"[^A-Za-z0-9-]+")


class AwsClients:
    """aioboto3 clients by service, one per event loop; see the module docstring."""

    def __init__(
        self,
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        config: Config | None = None,
    ) -> None:
        self.endpoint_url = endpoint_url or None
        self.region = region
        self.config = config  # botocore settings for every client (S3: the signature version)
        self._session = aioboto3.Session()
        self._held: dict[tuple[int, str, str], tuple[asyncio.AbstractEventLoop, Any, Any]] = {}

    async def client(self, service: str, *, region: str | None = None) -> Any:
        """The open client of `service` (in `region`, default the configured one)."""
        loop = asyncio.get_running_loop()
        where = region or self.region
        slot = (id(loop), service, where)
        held = self._held.get(slot)
        if held is not None and held[0] is loop:
            return held[1]
        manager = self._session.client(
            service, endpoint_url=self.endpoint_url, region_name=where, config=self.config
        )
        opened = await manager.__aenter__()
        self._held[slot] = (loop, opened, manager)
        return opened

    async def close(self) -> None:
        """Close the clients this event loop opened."""
        loop = asyncio.get_running_loop()
        for slot in [s for s, held in self._held.items() if held[0] is loop]:
            _, _, manager = self._held.pop(slot)
            await manager.__aexit__(None, None, None)


def error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore ClientError ('' for anything else)."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code") or "")
    return ""


def error_message(exc: BaseException) -> str:
    """The AWS error code and message of a ClientError, else the exception as text."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"{err.get('Code', 'error')}: {err.get('Message', '')}".strip()
    return str(exc) or type(exc).__name__


def sagemaker_name(*parts: str, max_length: int = SAGEMAKER_NAME_MAX) -> str:
    """A valid, unique-by-content SageMaker name from `parts` (joined by '-').

    Characters SageMaker refuses become '-', runs of them collapse, and a name longer than
    `max_length` keeps its start and ends with 8 hex digits of the whole name's sha256, so two
    long names that differ only at the end stay distinct."""
    whole = "-".join(p for p in parts if p)
    name = _NOT_NAME.sub("-", whole).strip("-")
    name = re.sub(r"-{2,}", "-", name) or "weighbridge"
    if not name[0].isalnum():
        name = "w" + name
    if len(name) <= max_length:
        return name
    digest = hashlib.sha256(whole.encode()).hexdigest()[:8]
    return name[: max_length - 9].rstrip("-") + "-" + digest


def sagemaker_model_name(submission_id: str) -> str:
    """The SageMaker model a submission's image is registered as (builder and runner agree)."""
    return sagemaker_name("wb", submission_id)


def ecr_repository_name(prefix: str = "weighbridge") -> str:
    """The ECR repository holding model images (one repository, a tag per submission)."""
    return (prefix.strip("/").lower() or "weighbridge") + "/models"
