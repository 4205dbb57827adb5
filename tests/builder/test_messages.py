"""The builder's side of core/messages.py: it reads `build` and sends `evaluate` with the shared
schemas; a message it cannot read fails its submission once, or is dead-lettered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from builder.worker import build_consumer
from core.context import Services
from core.envelope import Envelope
from core.messages import EvaluateMessage, payload_of, read_message
from core.models import new_id
from core.queue import BUILD_QUEUE
from core.states import Status
from tests.builder.test_worker import FLEET, good_bundle, load, submit


def strings_in(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings_in(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings_in(v)]
    return []


def host_paths(payload: dict[str, Any]) -> list[str]:
    return [s for s in strings_in(payload) if s.startswith("/")]


async def test_the_evaluate_message_sent_validates_against_the_shared_schema(
    services: Services, tmp_path: Path
) -> None:
    submission_id = await submit(services, good_bundle(tmp_path))
    assert await build_consumer(services).run_once() == 1
    [delivery] = await services.queue.receive([FLEET])
    message = read_message(delivery.envelope, EvaluateMessage)  # what the evaluator runs
    assert message.submission.id == submission_id
    assert payload_of(message) == delivery.envelope.payload  # nothing outside the schema
    assert delivery.envelope.payload["schema_version"] == EvaluateMessage.VERSION
    assert host_paths(delivery.envelope.payload) == []


async def replace_build_message(services: Services, submission_id: str, payload: Any) -> None:
    """Take the API's build message off the queue and put a bad one in its place."""
    [staged] = await services.queue.receive([BUILD_QUEUE])
    await services.queue.ack(staged)
    body = {**staged.envelope.payload, **payload}
    await services.queue.send(
        BUILD_QUEUE, Envelope(action_id=submission_id, type="build", payload=body)
    )


async def test_an_unknown_version_fails_the_submission_once_naming_the_field(
    services: Services, tmp_path: Path
) -> None:
    submission_id = await submit(services, good_bundle(tmp_path))
    await replace_build_message(services, submission_id, {"schema_version": 99})
    assert await build_consumer(services).run_once() == 1
    submission, _ = await load(services, submission_id)
    assert submission.status == Status.FAILED and submission.failed_stage == "build"
    assert "schema_version" in (submission.error or "")
    # Acknowledged after one attempt: neither waiting for a retry nor dead-lettered.
    assert await services.queue.depth(BUILD_QUEUE) == 0
    assert await services.queue.dead_letters(BUILD_QUEUE) == []


async def test_an_extra_field_fails_the_submission_naming_the_field(
    services: Services, tmp_path: Path
) -> None:
    submission_id = await submit(services, good_bundle(tmp_path))
    await replace_build_message(
        services,
        submission_id,
        {"submission": {"id": submission_id, "kind": "model", "name": "m", "local_path": "/tmp/m"}},
    )
    assert await build_consumer(services).run_once() == 1
    submission, _ = await load(services, submission_id)
    assert submission.status == Status.FAILED
    assert "submission.local_path" in (submission.error or "")
    assert await services.queue.depth(BUILD_QUEUE) == 0
    assert await services.queue.dead_letters(BUILD_QUEUE) == []


async def test_a_refused_message_with_no_submission_is_dead_lettered_with_the_reason(
    services: Services,
) -> None:
    await services.queue.send(
        BUILD_QUEUE,
        Envelope(action_id=new_id(), type="build", payload={"schema_version": 99}),
    )
    consumer = build_consumer(services)
    assert await consumer.run_once() == 1
    [letter] = await services.queue.dead_letters(BUILD_QUEUE)
    assert "refused" in (letter.last_error or "") and "schema_version" in (letter.last_error or "")
    assert letter.attempts == 1  # not retried
    assert await consumer.run_once() == 1  # the consumers record it (nothing to fail) and keep it
    [letter] = await services.queue.dead_letters(BUILD_QUEUE)
    assert letter.settled
