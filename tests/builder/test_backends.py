"""The builder seam and the kinds dispatch: WEIGHBRIDGE_BUILDER picks a builder from the
registry (an unknown one refused in one sentence), every registered builder passes the same
contract, and each submission kind goes to its own build."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

import builder.worker
from builder.backends import BUILDERS, LocalBuilder, builder_from_settings, check_builder
from builder.builds import BuildOptions
from builder.docker_builder import DockerBuilder
from builder.processes import BuildLog
from builder.worker import build_consumer
from core.context import Services
from core.errors import WeighbridgeError
from core.states import Status
from core.taskconfig import BuildConfig
from tests.builder.bundles import tar_folder, write_model_folder
from tests.builder.test_worker import load, submit


def test_the_setting_picks_the_builder_and_an_unknown_one_is_refused(
    services: Services,
) -> None:
    assert isinstance(builder_from_settings(services), LocalBuilder)
    with pytest.raises(WeighbridgeError) as refused:
        check_builder("kaniko")
    assert refused.value.field == "WEIGHBRIDGE_BUILDER"
    assert "'kaniko' is not a builder of this build (it has: docker, local)" in (
        refused.value.message
    )


@pytest.mark.parametrize("name", sorted(BUILDERS))
async def test_every_builder_turns_a_bundle_into_an_archive(
    name: str,
    services: Services,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if name == "docker":
        # Its AWS side against moto's server, with no Docker engine (tests/builder/
        # test_docker_builder.py tests that side).
        monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/weighbridge-test/docker.sock")
        aws = {
            "aws_endpoint_url": request.getfixturevalue("moto_url"),
            "sagemaker_role_arn": "arn:aws:iam::123456789012:role/weighbridge-sagemaker",
        }
        services = replace(services, settings=services.settings.model_copy(update=aws))
    made = BUILDERS[name](services)
    assert made.name == name
    folder = write_model_folder(tmp_path / "m", files={"model.pt": b"weights"})
    source = tar_folder(folder, tmp_path / "m.tar.gz", arcname="m")
    log = BuildLog(tmp_path / "work" / "build" / "log")
    try:
        result = await made.build(
            source,
            source_name="m.tar.gz",
            submission_id="s" * 32,
            model_name="m",
            build=BuildConfig(),
            work=tmp_path / "work",
            log=log,
            options=BuildOptions(),
        )
    finally:
        log.close()
        if isinstance(made, DockerBuilder):
            await made.close()
    assert "model.mar" in result.files()
    assert result.handler is not None


async def test_each_kind_goes_to_its_own_build_and_an_unknown_kind_fails_with_the_reason(
    services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tar_folder(
        write_model_folder(tmp_path / "m", files={"model.pt": b"w"}), tmp_path / "m.tar.gz"
    )
    # A builder without the inspection kind (an older one, or one built without it).
    monkeypatch.delitem(builder.worker.KINDS, "inspection")
    unknown = await submit(services, source, kind="inspection")
    assert await build_consumer(services).run_once() == 1
    submission, _ = await load(services, unknown)
    assert submission.status == Status.FAILED
    assert "inspection submissions are not built by this builder (it builds: benchmark, model)" in (
        submission.error or ""
    )

    # A kind registered beside the models is dispatched to, with the builder chosen.
    seen: list[tuple[str, str]] = []

    async def build_inspection(services, delivery, payload, config, *, builder, options):
        seen.append((delivery.envelope.action_id, builder.name))

    monkeypatch.setitem(builder.worker.KINDS, "inspection", build_inspection)
    planned = await submit(services, source, kind="inspection")
    assert await build_consumer(services).run_once() == 1
    assert seen == [(planned, "local")]
