"""The translation task on the SageMaker path, as its config asks (moto's server over HTTP):
a transform job on ml.p3.2xlarge in us-west-2 with requests of at most 1 MB, one at a time,
whose answers and BLEU equal the local runner's; and the image its build asks for is
TorchServe's GPU image. moto runs no container: the test plays it with the example's real
handler (tests/evaluator/test_sagemaker_runner.py: container_output, writes_output)."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import sacrebleu

from builder.docker_context import serving_settings
from builder.dockerfiles import render_dockerfile
from core.datasets import generate_rows
from core.s3storage import S3Storage
from core.taskconfig import load_task_config
from evaluator.runner import ModelSpec
from evaluator.runners import LocalRunner
from task_configs import FOLDER as TASK_CONFIGS
from tests.evaluator.test_sagemaker_runner import (
    EXAMPLES,
    make_runner,
    register_model,
    storage,
    store_rows,
    writes_output,
)

__all__ = ["storage"]  # the S3 fixture, from the SageMaker runner's tests

TASK = load_task_config(TASK_CONFIGS / "translation.toml")


async def test_a_transform_job_on_the_tasks_gpu_instance_answers_as_the_local_runner(
    moto_url: str, storage: S3Storage, tmp_path: Path
) -> None:
    rows = generate_rows("translation", {"split": "heldout", "n": 300})
    dataset = await store_rows(storage, rows, "heldout")
    model_dir = tmp_path / "translation-lexicon"
    shutil.copytree(EXAMPLES / "translation-lexicon", model_dir)
    model = ModelSpec(model_dir=model_dir, handler="handler.py", manifest={})

    local = await LocalRunner().run_dataset(
        storage,
        submission_id="local-1",
        task=TASK,
        dataset=dataset,
        model=model,
        scratch=tmp_path / "local",
    )
    submission = f"sub-{uuid.uuid4().hex}"
    await register_model(moto_url, submission, TASK.eval.aws_region)
    runner = make_runner(moto_url, writes_output(model_dir, storage))
    remote = await runner.run_dataset(
        storage,
        submission_id=submission,
        task=TASK,
        dataset=dataset,
        model=model,
        scratch=tmp_path / "remote",
    )

    assert remote.uids == local.uids and remote.answers == local.answers
    references = [r["translation"] for r in rows]
    assert remote.references == local.references == references
    hypotheses = [a["translation"] for a in remote.answers]
    assert sacrebleu.corpus_bleu(hypotheses, [references]).score > 85

    assert runner.made is not None
    described = await runner.made.real.describe_transform_job(
        TransformJobName=remote.worker["job_name"]
    )
    assert described["TransformResources"] == {"InstanceType": "ml.p3.2xlarge", "InstanceCount": 1}
    assert described["TransformJobArn"].split(":")[3] == "us-west-2"
    assert described["MaxPayloadInMB"] == 1 and described["MaxConcurrentTransforms"] == 1
    assert described["BatchStrategy"] == "MultiRecord"


def test_the_image_is_torchserves_gpu_image_with_the_tasks_limits() -> None:
    settings = serving_settings(TASK.build, TASK.eval)
    assert settings["default_response_timeout"] == 1200  # the task's own
    assert settings["max_request_size"] >= 1024 * 1024  # one request of max_payload_mb
    dockerfile = render_dockerfile(
        build=TASK.build,
        model_name="translation-lexicon",
        submission_id="sub-1",
        requirements_sha256=None,
        settings=settings,
    )
    assert f"FROM {TASK.build.base_image_gpu}" in dockerfile
    assert TASK.build.base_image_cpu not in dockerfile
