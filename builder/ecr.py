"""ECR for the docker builder: the model repository (made on demand), registry logins, images.

A repository the builder creates scans every image on push and keeps tags immutable: a tag
is the submission id plus a hash of its build context, so the same tag never needs to name
another image, and an image a SageMaker model points at can never be replaced under it. A
repository made elsewhere (Terraform) is used as it is.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from core.aws import error_code, error_message
from core.errors import JobFailed, RetryableError

STAGE = "build"
AWS_ERRORS = (ClientError, BotoCoreError)  # what an AWS call raises (answers or no answer)
# AWS error codes that pass on their own: the message is retried with backoff.
PASSING = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalFailure",
        "InternalServerError",
        "ServerException",
    }
)


@dataclass(frozen=True)
class Repository:
    name: str
    uri: str  # <account>.dkr.ecr.<region>.amazonaws.com/<name>
    arn: str
    created: bool  # made by this call (False: it was there already)

    @property
    def registry(self) -> str:
        return self.uri.split("/", 1)[0]


@dataclass(frozen=True)
class RegistryLogin:
    """What `docker login` needs; the password never goes on a command line or into a log."""

    registry: str  # host name, without https://
    username: str
    password: str = field(repr=False)
    expires_at: str


async def ensure_repository(ecr: Any, name: str) -> Repository:
    """The repository `name`, looked up first (Terraform usually made it; the lookup needs no
    right to create) and created when missing: scan on push, immutable tags, encrypted."""
    found = await _repository(ecr, name)
    if found is not None:
        return _as_repository(found, created=False)
    try:
        made = await ecr.create_repository(
            repositoryName=name,
            imageScanningConfiguration={"scanOnPush": True},
            imageTagMutability="IMMUTABLE",
            encryptionConfiguration={"encryptionType": "AES256"},
        )
    except AWS_ERRORS as exc:
        if error_code(exc) != "RepositoryAlreadyExistsException":
            raise aws_failure(f"the ECR repository {name!r} could not be created", exc) from exc
        raced = await _repository(ecr, name)  # another builder made it just now
        if raced is None:
            raise aws_failure(f"the ECR repository {name!r} could not be found", exc) from exc
        return _as_repository(raced, created=False)
    return _as_repository(made["repository"], created=True)


async def _repository(ecr: Any, name: str) -> dict[str, Any] | None:
    try:
        found = await ecr.describe_repositories(repositoryNames=[name])
    except AWS_ERRORS as exc:
        if error_code(exc) == "RepositoryNotFoundException":
            return None
        raise aws_failure(f"ECR could not describe the repository {name!r}", exc) from exc
    return dict(found["repositories"][0])


def _as_repository(repo: dict[str, Any], *, created: bool) -> Repository:
    return Repository(
        name=repo["repositoryName"],
        uri=repo["repositoryUri"],
        arn=repo["repositoryArn"],
        created=created,
    )


async def registry_login(ecr: Any) -> RegistryLogin:
    """A login for the account's registry from ECR's authorization token (valid 12 hours;
    the same token opens AWS's own image registries in the region, e.g. its PyTorch images)."""
    try:
        answer = await ecr.get_authorization_token()
    except AWS_ERRORS as exc:
        raise aws_failure("ECR refused an authorization token", exc) from exc
    data = answer["authorizationData"][0]
    username, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
    return RegistryLogin(
        registry=data["proxyEndpoint"].removeprefix("https://").rstrip("/"),
        username=username,
        password=password,
        expires_at=str(data.get("expiresAt", "")),
    )


async def image_digest(ecr: Any, repository: str, tag: str) -> str | None:
    """The digest of `repository:tag`, None when no such image was pushed."""
    try:
        found = await ecr.describe_images(repositoryName=repository, imageIds=[{"imageTag": tag}])
    except AWS_ERRORS as exc:
        if error_code(exc) == "ImageNotFoundException":
            return None
        raise aws_failure(f"ECR could not describe the image {repository}:{tag}", exc) from exc
    details = found.get("imageDetails") or []
    return str(details[0]["imageDigest"]) if details else None


def aws_failure(what: str, exc: BaseException) -> Exception:
    """What an AWS call's failure becomes: RetryableError for a passing fault (throttling,
    a service hiccup, no answer), else JobFailed with AWS's own code and message."""
    code = error_code(exc)
    if not code or code in PASSING or code.startswith("Throttl"):
        return RetryableError(f"{what}: {error_message(exc)}")
    return JobFailed(
        STAGE,
        f"{what} ({error_message(exc)}); an operator must check the builder's AWS "
        "permissions and settings",
    )
