"""A whole model evaluation with WEIGHBRIDGE_RUNNER=sagemaker, storage on S3, against moto.

The evaluation (runs, scores, timeline, email) is the one every runner goes through; here its
datasets run as transform jobs. moto writes no job output and cannot fail a job: the tests'
client wrappers write the output (the toy task's parity answers) or make describe say Failed.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from core.aws import AwsClients
from core.context import Services, start_services
from core.db import Database
from core.models import Notification
from core.submissions import list_scores
from core.taskconfig import TaskConfig
from evaluator.evaluation import EvaluatePayload, Evaluation
from tests.conftest import make_settings
from tests.evaluator.factories import (
    events_of,
    get_submission,
    make_built_submission,
    make_user,
    store_dataset,
    toy_rows,
)
from tests.evaluator.models import GOOD, pack_mar, write_folder
from tests.evaluator.test_sagemaker_runner import Client, make_runner, register_model


@pytest.fixture
async def s3_services(
    tmp_path: Path, database_url: str, db: Database, moto_url: str
) -> AsyncIterator[Services]:
    bucket = f"wb-ev-{uuid.uuid4().hex[:12]}"
    clients = AwsClients(endpoint_url=moto_url)
    await (await clients.client("s3")).create_bucket(Bucket=bucket)
    await clients.close()
    settings = make_settings(
        tmp_path,
        database_url,
        storage_url=f"s3://{bucket}/wb",
        aws_endpoint_url=moto_url,
        runner="sagemaker",
    )
    started = await start_services(settings, migrate=False)
    yield started
    await started.close()


def answers_parity(storage: Any) -> type[Client]:
    class Parity(Client):
        """Writes the job output moto does not: the parity of each input's x."""

        async def on(self, name: str, method: Any, kwargs: dict[str, Any]) -> Any:
            import json

            answer = await method(**kwargs)
            if name == "describe_transform_job":
                base = f"s3://{storage.bucket}/{storage.prefix}/"
                uri = answer["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"]
                lines = (await storage.read_bytes(uri.removeprefix(base))).splitlines()
                out = b"".join(
                    json.dumps({"label": json.loads(x)["x"] % 2}).encode() + b"\n" for x in lines
                )
                key = answer["TransformOutput"]["S3OutputPath"].removeprefix(base)
                await storage.write_bytes(key + "/input.jsonl.out", out)
            return answer

    return Parity


REASON = "model container answered HTTP 500 on /invocations"


class Fails(Client):
    """moto cannot fail a job: describe says Failed with SageMaker's kind of reason."""

    async def on(self, name: str, method: Any, kwargs: dict[str, Any]) -> Any:
        answer = await method(**kwargs)
        if name == "describe_transform_job":
            answer = {
                **answer,
                "TransformJobStatus": "Failed",
                "FailureReason": f"AlgorithmError: {REASON}",
            }
        return answer


async def evaluate(
    services: Services,
    tmp_path: Path,
    moto_url: str,
    wrapper: type[Client],
    *,
    env_key: str | None = None,
) -> str:
    dataset = await store_dataset(services, toy_rows(30))
    user = await make_user(services)
    mar = pack_mar(write_folder(tmp_path / "model", GOOD), tmp_path / "model.mar")
    sid, envelope = await make_built_submission(services, user, mar, [dataset])
    envelope.payload["build"]["env_key"] = env_key
    await register_model(moto_url, sid, "us-east-1")  # what the docker builder does
    payload = EvaluatePayload.model_validate(envelope.payload)
    task = TaskConfig.model_validate(payload.task.config)
    with ThreadPoolExecutor(2) as pool:
        await Evaluation(
            services, envelope, payload, task, pool=pool, runner=make_runner(moto_url, wrapper)
        ).run()
    return sid


async def test_a_model_is_evaluated_and_scored_through_transform_jobs(
    s3_services: Services, tmp_path: Path, moto_url: str
) -> None:
    # The builder made an environment for the model's requirements on its own host; the
    # handler runs in SageMaker's container, so this evaluator never needs that environment.
    sid = await evaluate(
        s3_services,
        tmp_path,
        moto_url,
        answers_parity(s3_services.storage),
        env_key="envs/" + "e" * 64,
    )
    submission = await get_submission(s3_services, sid)
    assert submission.status == "done", submission.error
    async with s3_services.db.session() as session:
        scores = {s.metric: s.value for s in await list_scores(session, sid)}
    assert scores["accuracy"] == 1.0 and "examples_per_second" in scores
    hwinfo = await s3_services.storage.read_bytes(f"submissions/{sid}/results/test/hwinfo.json")
    assert b"sagemaker" in hwinfo


async def test_sagemakers_failure_reason_reaches_the_timeline_and_the_email(
    s3_services: Services, tmp_path: Path, moto_url: str
) -> None:
    sid = await evaluate(s3_services, tmp_path, moto_url, Fails)
    reason = REASON
    submission = await get_submission(s3_services, sid)
    assert submission.status == "failed"
    assert submission.error is not None and reason in submission.error
    events = await events_of(s3_services, sid)
    assert any(e.type == "dataset.failed" and reason in (e.message or "") for e in events)
    async with s3_services.db.session() as session:
        mails = list(
            await session.scalars(sa.select(Notification).where(sa.column("submission_id") == sid))
        )
    assert mails and reason in mails[-1].body_text
