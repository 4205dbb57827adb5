"""SageMaker for the docker builder: a submission's model (its image, network isolation) and,
when the task asks, an endpoint serving it.

Every call is idempotent on retry: a resource is described first and made only when missing;
a create that loses a race ("already exists") is taken as done. A model that exists with
another image or role (the task's build settings changed between two attempts) is made
again, since a SageMaker model cannot be changed in place. (Network isolation is not part of
that comparison: only this builder makes `wb-<submission>` models, always isolated, and
moto's server does not keep the flag.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from builder.ecr import AWS_ERRORS, STAGE, aws_failure
from core.aws import error_code, error_message
from core.errors import JobFailed

VARIANT = "main"


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    arn: str
    image: str
    created: bool  # made by this call (False: an earlier attempt made it)


@dataclass(frozen=True)
class Endpoint:
    name: str
    arn: str
    config_name: str
    status: str  # SageMaker's EndpointStatus when the build looked (Creating, InService, ...)
    created: bool


def aws_tags(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


async def register_model(
    sagemaker: Any, *, name: str, image: str, role_arn: str, tags: dict[str, str]
) -> RegisteredModel:
    """The SageMaker model `name` running `image` as `role_arn`, isolated from the network."""
    existing = await _described(sagemaker.describe_model(ModelName=name), f"model {name}")
    if existing is not None:
        same = (
            existing.get("PrimaryContainer", {}).get("Image") == image
            and existing.get("ExecutionRoleArn") == role_arn
        )
        if same:
            return RegisteredModel(name, existing["ModelArn"], image, created=False)
        try:
            await sagemaker.delete_model(ModelName=name)
        except AWS_ERRORS as exc:
            raise aws_failure(
                f"the outdated SageMaker model {name} could not be deleted", exc
            ) from exc
    try:
        made = await sagemaker.create_model(
            ModelName=name,
            PrimaryContainer={"Image": image, "Mode": "SingleModel"},
            ExecutionRoleArn=role_arn,
            # The model's code is the submitter's: it gets no network inside SageMaker.
            EnableNetworkIsolation=True,
            Tags=aws_tags(tags),
        )
    except AWS_ERRORS as exc:
        if not _already_exists(exc):
            raise aws_failure(f"SageMaker refused to create the model {name}", exc) from exc
        found = await sagemaker.describe_model(ModelName=name)
        return RegisteredModel(name, found["ModelArn"], image, created=False)
    return RegisteredModel(name, made["ModelArn"], image, created=True)


async def ensure_endpoint(
    sagemaker: Any,
    *,
    name: str,
    config_name: str,
    model_name: str,
    instance_type: str,
    instance_count: int,
    tags: dict[str, str],
) -> Endpoint:
    """An endpoint config (one variant of the model) and the endpoint on it; SageMaker
    brings the endpoint up in the background (minutes), so its status may be Creating."""
    config = await _described(
        sagemaker.describe_endpoint_config(EndpointConfigName=config_name),
        f"endpoint config {config_name}",
    )
    if config is None:
        try:
            await sagemaker.create_endpoint_config(
                EndpointConfigName=config_name,
                ProductionVariants=[
                    {
                        "VariantName": VARIANT,
                        "ModelName": model_name,
                        "InitialInstanceCount": instance_count,
                        "InstanceType": instance_type,
                        "InitialVariantWeight": 1.0,
                    }
                ],
                Tags=aws_tags(tags),
            )
        except AWS_ERRORS as exc:
            if not _already_exists(exc):
                raise aws_failure(
                    f"SageMaker refused the endpoint config {config_name} "
                    f"({instance_count} x {instance_type})",
                    exc,
                ) from exc
    found = await _described(sagemaker.describe_endpoint(EndpointName=name), f"endpoint {name}")
    created = False
    if found is None:
        try:
            await sagemaker.create_endpoint(
                EndpointName=name, EndpointConfigName=config_name, Tags=aws_tags(tags)
            )
            created = True
        except AWS_ERRORS as exc:
            if not _already_exists(exc):
                raise aws_failure(f"SageMaker refused to create the endpoint {name}", exc) from exc
        found = await sagemaker.describe_endpoint(EndpointName=name)
    status = str(found.get("EndpointStatus", ""))
    if status == "Failed":
        raise JobFailed(
            STAGE,
            f"the SageMaker endpoint {name} failed: "
            f"{found.get('FailureReason') or 'SageMaker gave no reason'}",
        )
    return Endpoint(name, found["EndpointArn"], config_name, status, created)


async def _described(call: Any, what: str) -> dict[str, Any] | None:
    """The answer of a describe call, None when SageMaker says there is no such thing."""
    try:
        return dict(await call)
    except AWS_ERRORS as exc:
        if error_code(exc) == "ValidationException" and "could not find" in _message(exc):
            return None
        raise aws_failure(f"SageMaker could not describe the {what}", exc) from exc


def _already_exists(exc: BaseException) -> bool:
    return error_code(exc) == "ValidationException" and "already exist" in _message(exc)


def _message(exc: BaseException) -> str:
    return error_message(exc).lower()
