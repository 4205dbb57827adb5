"""The build worker end to end over each database: upload -> built + `evaluate` on the fleet."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import sqlalchemy as sa

from builder.worker import build_consumer, handle_build, record_dead_build, run_builder
from core.accounts import create_user
from core.context import Services
from core.environments import local_env_python
from core.models import Event, Notification, QueueMessage, Submission, User, new_id
from core.queue import BUILD_QUEUE, eval_queue
from core.states import Status, cancel
from core.submissions import build_message, create_submission
from core.tasks import get_task
from sandbox.jobs import jobs_root
from tests.builder.bundles import HANDLER, tar_file, tar_folder, tar_with, write_model_folder

FLEET = eval_queue("toy-fleet")


async def submit(
    services: Services, source: Path, *, kind: str = "model", name: str = "parity model"
) -> str:
    """A user, a stored upload and a submission made as the API makes them (outbox included)."""
    submission_id = new_id()
    upload = await services.storage.write_file(
        f"submissions/{submission_id}/upload/{source.name}", source
    )
    async with services.db.session() as session:
        user, _ = await create_user(session, f"u-{new_id()[:8]}", email="owner@example.org")
        task = await get_task(session, "toy")
        await create_submission(
            session,
            services.outbox,
            submission_id=submission_id,
            user=user,
            task=task,
            kind=kind,
            name=name,
            private=False,
            upload=upload,
            filename=source.name,
        )
    return submission_id


async def load(services: Services, submission_id: str) -> tuple[Submission, list[Event]]:
    async with services.db.session() as session:
        submission = await session.get(Submission, submission_id)
        events = list(
            await session.scalars(
                sa.select(Event).where(Event.submission_id == submission_id).order_by(Event.id)
            )
        )
    assert submission is not None
    return submission, events


def good_bundle(tmp_path: Path, name: str = "good") -> Path:
    folder = write_model_folder(tmp_path / name, files={"model.pt": b"weights"})
    return tar_folder(folder, tmp_path / f"{name}.tar.gz", arcname=name)


async def test_upload_is_built_and_handed_to_the_task_fleet(
    services: Services, tmp_path: Path
) -> None:
    submission_id = await submit(services, good_bundle(tmp_path))
    consumer = build_consumer(services)
    assert await consumer.run_once() == 1

    submission, events = await load(services, submission_id)
    assert submission.status == Status.BUILT
    assert [e.type for e in events] == ["status.uploaded", "status.building", "status.built"]
    built = events[-1]
    assert built.envelope["payload"]["mar_key"] == f"submissions/{submission_id}/build/model.mar"
    assert [v["service"] for v in built.envelope["visited"]] == ["api", "builder"]

    for name in ("model.mar", "Dockerfile", "specification.json", "log", "config.properties"):
        assert await services.storage.exists(f"submissions/{submission_id}/build/{name}")
    assert await services.queue.depth(BUILD_QUEUE) == 0
    builds = jobs_root() / "builds"
    assert not [p for p in builds.iterdir() if p.name.startswith(submission_id)]  # scratch gone

    [delivery] = await services.queue.receive([FLEET])
    message = delivery.envelope
    assert message.type == "evaluate" and message.action_id == submission_id
    payload = message.payload
    assert payload["submission"]["id"] == submission_id
    assert payload["task"]["slug"] == "toy" and payload["owner"]["email"] == "owner@example.org"
    build = payload["build"]
    assert build["mar_key"] == f"submissions/{submission_id}/build/model.mar"
    assert build["handler"] == "handler.py"
    assert "python" not in build and build["env_key"] is None
    assert build["requirements_sha256"] is None
    assert build["bundle_sha256"] == submission.upload_sha256
    assert [d["name"] for d in payload["datasets"]] == ["test"]  # hidden sets only
    assert set(payload["datasets"][0]) == {
        "name",
        "key",
        "sha256",
        "access",
        "split",
        "weight",
        "perturbation_of",
        "n_examples",
    }
    assert payload["datasets"][0]["access"] == "hidden"
    assert [v.service for v in message.visited] == ["api", "builder"]


async def test_broken_bundle_fails_and_the_worker_builds_the_next_one(
    services: Services, tmp_path: Path
) -> None:
    hostile = tar_with(tmp_path / "evil.tgz", [tar_file("handler.py"), tar_file("../evil.py")])
    bad_id = await submit(services, hostile)
    good_id = await submit(services, good_bundle(tmp_path))
    consumer = build_consumer(services)
    assert await consumer.run_once() == 1
    assert await consumer.run_once() == 1

    bad, events = await load(services, bad_id)
    assert bad.status == Status.FAILED and bad.failed_stage == "build"
    assert "'../evil.py'" in (bad.error or "") and "traversal" in (bad.error or "")
    assert bad.error_log_key == f"submissions/{bad_id}/build/log"
    log = (await services.storage.read_bytes(bad.error_log_key)).decode()
    assert "build failed:" in log and "../evil.py" in log
    failed = events[-1]
    assert failed.type == "status.failed" and failed.envelope["payload"]["stage"] == "build"

    good, _ = await load(services, good_id)
    assert good.status == Status.BUILT
    assert await services.queue.depth(FLEET) == 1  # only the good one goes on
    assert await services.queue.dead_letters(BUILD_QUEUE) == []


async def test_handler_import_error_fails_the_build_with_the_reason(
    services: Services, tmp_path: Path
) -> None:
    folder = write_model_folder(tmp_path / "m", handler="import weighbridge_missing_dep\n")
    submission_id = await submit(services, tar_folder(folder, tmp_path / "m.tgz"))
    await build_consumer(services).run_once()
    submission, events = await load(services, submission_id)
    assert submission.status == Status.FAILED and submission.failed_stage == "build"
    assert "ModuleNotFoundError" in (submission.error or "")
    assert "requirements.txt" in (submission.error or "")
    assert "Traceback" in events[-1].envelope["payload"]["log_tail"]


async def test_redelivered_message_for_a_built_submission_is_acked_without_rebuilding(
    services: Services, tmp_path: Path
) -> None:
    submission_id = await submit(services, good_bundle(tmp_path))
    consumer = build_consumer(services)
    await consumer.run_once()
    _, events_before = await load(services, submission_id)
    mar_before = await services.storage.read_bytes(f"submissions/{submission_id}/build/model.mar")

    async with services.db.session() as session:
        submission = await session.get(Submission, submission_id)
        assert submission is not None
        task = await get_task(session, "toy")
        owner = await session.get(User, submission.user_id)
        assert owner is not None
        await services.outbox.stage(session, BUILD_QUEUE, build_message(submission, task, owner))
    assert await consumer.run_once() == 1

    submission, events_after = await load(services, submission_id)
    assert submission.status == Status.BUILT
    assert len(events_after) == len(events_before)
    assert await services.queue.depth(BUILD_QUEUE) == 0  # acknowledged, not retried
    assert await services.queue.depth(FLEET) == 1  # no second evaluate message
    after = await services.storage.read_bytes(f"submissions/{submission_id}/build/model.mar")
    assert after == mar_before


async def test_cancelled_submission_is_skipped(services: Services, tmp_path: Path) -> None:
    submission_id = await submit(services, good_bundle(tmp_path))
    async with services.db.session() as session:
        submission = await session.get(Submission, submission_id)
        assert submission is not None
        await cancel(session, submission, service="test")
    assert await build_consumer(services).run_once() == 1
    submission, events = await load(services, submission_id)
    assert submission.status == Status.CANCELLED
    assert events[-1].type == "status.cancelled"
    assert not await services.storage.exists(f"submissions/{submission_id}/build/model.mar")
    assert await services.queue.depth(BUILD_QUEUE) == 0


async def test_a_benchmark_whose_upload_is_no_descriptor_fails_naming_it(
    services: Services, tmp_path: Path
) -> None:
    # The API checks descriptors at submit; a message that reaches the builder anyway (an
    # older API, a hand-made row) still fails with the reason, not a crash.
    submission_id = await submit(services, good_bundle(tmp_path), kind="benchmark")
    await build_consumer(services).run_once()
    submission, _ = await load(services, submission_id)
    assert submission.status == Status.FAILED and submission.failed_stage == "build"
    assert "good.tar.gz" in (submission.error or "")
    assert "UTF-8" in (submission.error or "")


async def test_dead_letter_marks_the_build_failed(services: Services, tmp_path: Path) -> None:
    submission_id = await submit(services, good_bundle(tmp_path))
    [delivery] = await services.queue.receive([BUILD_QUEUE])
    delivery.attempts = delivery.max_attempts
    await record_dead_build(
        services, delivery, "OperationalError: database went away\nTraceback (most recent…)"
    )
    submission, events = await load(services, submission_id)
    assert submission.status == Status.FAILED and submission.failed_stage == "build"
    assert submission.error == (
        f"internal error after {delivery.max_attempts} attempts: "
        "OperationalError: database went away"
    )
    assert "database went away" in events[-1].envelope["payload"]["detail"]


async def test_missing_upload_fails_with_a_clear_reason(services: Services, tmp_path: Path) -> None:
    submission_id = await submit(services, good_bundle(tmp_path))
    await services.storage.delete_prefix(f"submissions/{submission_id}/upload")
    [delivery] = await services.queue.receive([BUILD_QUEUE])
    await handle_build(services, delivery)
    submission, _ = await load(services, submission_id)
    assert submission.status == Status.FAILED
    assert "is no longer in storage" in (submission.error or "")
    async with services.db.session() as session:
        rows = (await session.scalars(sa.select(QueueMessage.queue))).all()
    assert FLEET not in rows


async def test_failure_queues_the_owner_email_in_the_same_transaction(
    services: Services, tmp_path: Path
) -> None:
    folder = write_model_folder(tmp_path / "m", handler="x = 1\n")
    submission_id = await submit(services, tar_folder(folder, tmp_path / "m.tgz"))
    await build_consumer(services).run_once()
    async with services.db.session() as session:
        emails = list(
            await session.scalars(
                sa.select(Notification).where(Notification.submission_id == submission_id)
            )
        )
    assert [e.to_address for e in emails] == ["owner@example.org"]
    assert emails[0].status == "pending"


async def test_bundle_with_requirements_hands_on_its_environment(
    services: Services, tmp_path: Path
) -> None:
    folder = write_model_folder(
        tmp_path / "m", handler="import numpy\n" + HANDLER, files={"requirements.txt": b"numpy\n"}
    )
    submission_id = await submit(services, tar_folder(folder, tmp_path / "m.tgz"))
    await build_consumer(services).run_once()
    submission, _ = await load(services, submission_id)
    assert submission.status == Status.BUILT, submission.error

    [delivery] = await services.queue.receive([FLEET])
    build = delivery.envelope.payload["build"]
    sha = hashlib.sha256(b"numpy\n").hexdigest()
    assert build["requirements_sha256"] == sha and build["env_key"] == f"envs/{sha}"
    # The key, not the builder host's path: the evaluator resolves it on its own host.
    python = local_env_python(
        build["env_key"], storage=services.storage, home=services.settings.home
    )
    env = services.storage.local_path(f"envs/{sha}")
    assert env is not None and python == env / "bin" / "python"
    assert await asyncio.to_thread(python.exists)
    assert not [v for v in build.values() if isinstance(v, str) and v.startswith("/")]


async def test_the_worker_checks_handlers_in_its_warm_interpreter(
    services: Services, tmp_path: Path
) -> None:
    own = await submit(services, good_bundle(tmp_path), name="own interpreter")
    folder = write_model_folder(
        tmp_path / "r", handler="import numpy\n" + HANDLER, files={"requirements.txt": b"numpy\n"}
    )
    with_env = await submit(services, tar_folder(folder, tmp_path / "r.tgz"), name="own env")
    stop = asyncio.Event()
    worker = asyncio.create_task(run_builder(services, stop))
    try:
        for _ in range(1200):
            states = [(await load(services, sid))[0].status for sid in (own, with_env)]
            if all(s != Status.UPLOADED and s != Status.BUILDING for s in states):
                break
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.wait_for(worker, 60)
    assert states == [Status.BUILT, Status.BUILT]
    log = (await services.storage.read_bytes(f"submissions/{own}/build/log")).decode()
    assert "[forked from the warm interpreter" in log
    # A bundle with its own environment is checked by that environment's interpreter.
    log = (await services.storage.read_bytes(f"submissions/{with_env}/build/log")).decode()
    assert "forked from the warm interpreter" not in log
    assert "/bin/python -I -B -u" in log
