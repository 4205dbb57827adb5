"""The evaluator's side of core/messages.py: an evaluate message it cannot read fails its
submission once, naming the field; with no submission to fail, it is dead-lettered."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from core.context import Services
from core.envelope import Envelope
from core.models import new_id
from core.queue import eval_queue
from core.states import Status
from core.worker import Consumer
from evaluator.worker import handle_evaluate
from tests.evaluator.factories import (
    FLEET,
    get_submission,
    make_built_submission,
    make_user,
    store_dataset,
    toy_rows,
)
from tests.evaluator.models import GOOD, pack_mar, write_folder

QUEUE = eval_queue(FLEET)


def consumer(services: Services) -> Consumer:
    return Consumer(services.queue, [QUEUE], partial(handle_evaluate, services), name="test")


async def built_with_message(services: Services, tmp_path: Path, change: dict[str, Any]) -> str:
    """A built submission whose staged evaluate message is replaced by a changed copy."""
    mar = pack_mar(write_folder(tmp_path / "m", GOOD), tmp_path / "m.mar")
    dataset = await store_dataset(services, toy_rows())
    user = await make_user(services)
    submission_id, envelope = await make_built_submission(services, user, mar, [dataset])
    [staged] = await services.queue.receive([QUEUE])
    await services.queue.ack(staged)
    payload = {**envelope.payload, **change}
    await services.queue.send(
        QUEUE, Envelope(action_id=submission_id, type="evaluate", payload=payload)
    )
    return submission_id


async def assert_failed_once(services: Services, submission_id: str, field: str) -> None:
    submission = await get_submission(services, submission_id)
    assert submission.status == Status.FAILED and submission.failed_stage == "evaluate"
    assert "refused" in (submission.error or "") and field in (submission.error or "")
    assert await services.queue.depth(QUEUE) == 0  # acknowledged: no retry waits
    assert await services.queue.dead_letters(QUEUE) == []


async def test_an_unknown_version_fails_the_submission_once(
    services: Services, tmp_path: Path
) -> None:
    submission_id = await built_with_message(services, tmp_path, {"schema_version": 3})
    assert await consumer(services).run_once() == 1
    await assert_failed_once(services, submission_id, "schema_version")


async def test_a_host_path_field_is_refused_naming_it(services: Services, tmp_path: Path) -> None:
    # A versioned message may not carry the interpreter path the old messages carried.
    build = {"mar_key": "submissions/x/build/model.mar", "python": "/usr/bin/python3"}
    submission_id = await built_with_message(
        services, tmp_path, {"schema_version": 2, "build": build}
    )
    assert await consumer(services).run_once() == 1
    await assert_failed_once(services, submission_id, "build.python")


async def test_a_refused_message_with_no_submission_is_dead_lettered(
    services: Services,
) -> None:
    await services.queue.send(
        QUEUE, Envelope(action_id=new_id(), type="evaluate", payload={"schema_version": 2})
    )
    assert await consumer(services).run_once() == 1
    [letter] = await services.queue.dead_letters(QUEUE)
    assert letter.attempts == 1 and "submission: Field required" in (letter.last_error or "")
