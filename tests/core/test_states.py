"""The submission state machine: what may follow what, and the event every transition leaves."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from core.db import Database
from core.envelope import Envelope, Visit
from core.models import Event, Submission
from core.states import InvalidTransition, Status, can_transition, transition
from core.version import __version__
from tests.core.factories import make_submission, make_user


async def events_of(db: Database, submission_id: str) -> list[Event]:
    async with db.session() as session:
        return list(
            await session.scalars(
                sa.select(Event).where(Event.submission_id == submission_id).order_by(Event.id)
            )
        )


async def test_the_happy_path_appends_one_event_per_transition(db: Database) -> None:
    async with db.session() as session:
        user, _ = await make_user(session)
        submission = await make_submission(session, user, client_id="cli-1", parent_id="f" * 32)
        upload = Envelope(
            action_id=submission.id, type="build", visited=[Visit(service="api")], payload={}
        )
        for to, service in [
            (Status.BUILDING, "builder"),
            (Status.BUILT, "builder"),
            (Status.EVALUATING, "evaluator"),
            (Status.DONE, "evaluator"),
        ]:
            transition(session, submission, to, service=service, parent=upload)
        submission_id = submission.id

    async with db.session() as session:
        stored = await session.get(Submission, submission_id)
        assert stored is not None
        assert stored.status == "done"

    events = await events_of(db, submission_id)
    assert [e.type for e in events] == [
        "status.building",
        "status.built",
        "status.evaluating",
        "status.done",
    ]
    assert [e.status for e in events] == ["building", "built", "evaluating", "done"]
    services = ["builder", "builder", "evaluator", "evaluator"]
    for event, service in zip(events, services, strict=True):
        envelope = Envelope.model_validate(event.envelope)
        assert envelope.message_id == event.message_id
        assert envelope.action_id == submission_id
        assert envelope.parent_action_id == "f" * 32
        assert envelope.client_id == "cli-1"
        assert envelope.type == event.type
        # The visit stamps carry the lineage: who handled it before, then this service.
        assert [(v.service, v.version) for v in envelope.visited] == [
            ("api", __version__),
            (service, __version__),
        ]
    assert len({e.message_id for e in events}) == 4


@pytest.mark.parametrize(
    ("path", "refused"),
    [
        (["building", "built", "evaluating", "done"], "building"),
        (["building", "built", "evaluating", "done"], "failed"),
        (["building", "built", "evaluating", "done"], "cancelled"),
        ([], "done"),
        ([], "built"),
        (["building"], "evaluating"),
        (["building", "built"], "building"),
        (["cancelled"], "building"),
        (["building", "failed"], "building"),
        (["building", "failed"], "failed"),
    ],
)
async def test_refused_transitions_say_why_and_change_nothing(
    db: Database, path: list[str], refused: str
) -> None:
    async with db.session() as session:
        user, _ = await make_user(session)
        submission = await make_submission(session, user)
        for to in path:
            transition(session, submission, to, service="test")
        submission_id = submission.id

    with pytest.raises(InvalidTransition) as err:
        async with db.session() as session:
            submission = await session.get(Submission, submission_id)
            assert submission is not None
            transition(session, submission, refused, service="test")
    current = path[-1] if path else "uploaded"
    assert err.value.message == (
        f"submission {submission_id} is {current}; it cannot become {refused}"
    )
    assert err.value.status == 409
    assert err.value.code == "invalid_transition"

    async with db.session() as session:
        stored = await session.get(Submission, submission_id)
        assert stored is not None
        assert stored.status == current
    assert len(await events_of(db, submission_id)) == len(path)


@pytest.mark.parametrize("current", ["uploaded", "building", "built", "evaluating"])
def test_any_unfinished_stage_may_fail_or_be_cancelled(current: str) -> None:
    assert can_transition(current, "failed")
    assert can_transition(current, "cancelled")


def test_working_states_may_resume_after_a_redelivery() -> None:
    assert can_transition("building", "building")
    assert can_transition("evaluating", "evaluating")
    assert not can_transition("uploaded", "uploaded")
    assert not can_transition("done", "done")


async def test_failing_records_the_stage_reason_and_log_on_the_submission_and_event(
    db: Database,
) -> None:
    async with db.session() as session:
        user, _ = await make_user(session)
        submission = await make_submission(session, user)
        transition(session, submission, Status.BUILDING, service="builder")
        transition(
            session,
            submission,
            Status.FAILED,
            service="builder",
            stage="build",
            error="handler.py has no handle() function",
            log_key=f"submissions/{submission.id}/build/log",
        )
        submission_id = submission.id

    async with db.session() as session:
        stored = await session.get(Submission, submission_id)
        assert stored is not None
        assert (stored.status, stored.failed_stage, stored.error) == (
            "failed",
            "build",
            "handler.py has no handle() function",
        )
        assert stored.error_log_key == f"submissions/{submission_id}/build/log"
    last = (await events_of(db, submission_id))[-1]
    assert last.type == "status.failed"
    assert last.message == "handler.py has no handle() function"
    assert last.envelope["payload"] == {
        "stage": "build",
        "error": "handler.py has no handle() function",
        "log_key": f"submissions/{submission_id}/build/log",
    }
