"""The submission state machine: what may follow what, and the event every transition leaves."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from core.db import Database
from core.envelope import Envelope, Visit
from core.models import Event, Run, Submission
from core.states import (
    InvalidTransition,
    RunStatus,
    Status,
    can_move_run,
    can_transition,
    cancel,
    fail,
    move_run,
    transition,
)
from core.version import __version__
from tests.core.factories import make_submission, make_user


async def events_of(db: Database, submission_id: str) -> list[Event]:
    async with db.session() as session:
        return list(
            await session.scalars(
                sa.select(Event).where(Event.submission_id == submission_id).order_by(Event.id)
            )
        )


async def move(session: AsyncSession, submission: Submission, to: str) -> None:
    """`transition`, or `cancel` and `fail` (the one way to cancel, and to fail)."""
    if to == Status.CANCELLED:
        await cancel(session, submission, service="test")
    elif to == Status.FAILED:
        await fail(session, submission, service="test", stage="test", error="broken")
    else:
        transition(session, submission, to, service="test")


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
            await move(session, submission, to)
        submission_id = submission.id

    with pytest.raises(InvalidTransition) as err:
        async with db.session() as session:
            submission = await session.get(Submission, submission_id)
            assert submission is not None
            await move(session, submission, refused)
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
        await fail(
            session,
            submission,
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


async def runs_of(db: Database, submission_id: str) -> dict[str, Run]:
    async with db.session() as session:
        rows = await session.scalars(sa.select(Run).where(Run.submission_id == submission_id))
        return {r.name: r for r in rows}


async def test_cancelling_ends_every_run_not_yet_ended(db: Database) -> None:
    async with db.session() as session:
        user, _ = await make_user(session)
        other = await make_submission(session, user, status="evaluating")
        submission = await make_submission(session, user, status="evaluating")
        for owner, name, status in [
            (submission, "finished", "done"),
            (submission, "underway", "running"),
            (submission, "waiting", "queued"),
            (other, "waiting", "queued"),
        ]:
            session.add(Run(submission_id=owner.id, name=name, status=status))
        await session.flush()
        await cancel(session, submission, service="api", message="cancelled by someone")
        submission_id, other_id = submission.id, other.id

    runs = await runs_of(db, submission_id)
    assert {name: r.status for name, r in runs.items()} == {
        "finished": "done",  # its scores are real
        "underway": "cancelled",
        "waiting": "cancelled",
    }
    assert runs["underway"].finished_at is not None and runs["waiting"].finished_at is not None
    assert (await runs_of(db, other_id))["waiting"].status == "queued"  # only its own
    last = (await events_of(db, submission_id))[-1]
    assert (last.type, last.status, last.message) == (
        "status.cancelled",
        "cancelled",
        "cancelled by someone",
    )


async def test_cancelling_is_checked_against_the_row_as_it_is_now(db: Database) -> None:
    async with db.session() as session:
        user, _ = await make_user(session)
        submission = await make_submission(session, user, status="evaluating")
        session.add(Run(submission_id=submission.id, name="test", status="running"))
        submission_id = submission.id

    async with db.session() as reader:
        stale = await reader.get(Submission, submission_id)
        assert stale is not None and stale.status == "evaluating"
        async with db.session() as worker:  # the evaluator finishes meanwhile
            fresh = await worker.get(Submission, submission_id)
            assert fresh is not None
            transition(worker, fresh, Status.DONE, service="evaluator")
            run = (await runs_of(db, submission_id))["test"]
            run = await worker.merge(run)
            move_run(run, RunStatus.DONE)
        with pytest.raises(InvalidTransition):
            await cancel(reader, stale, service="api")
    assert (await runs_of(db, submission_id))["test"].status == "done"


def test_transition_refuses_to_cancel_or_fail_without_the_runs() -> None:
    submission = Submission(id="a" * 32, user_id=1, name="m", status="building")
    with pytest.raises(ValueError, match="cancel"):
        transition(None, submission, Status.CANCELLED, service="test")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fail"):
        transition(None, submission, Status.FAILED, service="test")  # type: ignore[arg-type]
    assert submission.status == "building"


async def test_failing_leaves_no_run_queued_or_running(db: Database) -> None:
    async with db.session() as session:
        user, _ = await make_user(session)
        submission = await make_submission(session, user, status="evaluating")
        for name, status in [("first", "done"), ("broken", "failed"), ("next", "queued")]:
            session.add(Run(submission_id=submission.id, name=name, status=status))
        session.add(Run(submission_id=submission.id, name="beside", status="running"))
        await session.flush()
        await fail(
            session,
            submission,
            service="evaluator",
            stage="evaluate:broken",
            error="the handler raised ValueError",
        )
        submission_id = submission.id

    runs = await runs_of(db, submission_id)
    assert {name: r.status for name, r in runs.items()} == {
        "first": "done",
        "broken": "failed",
        "next": "cancelled",
        "beside": "cancelled",
    }
    assert runs["next"].error == "not finished: the submission failed at evaluate:broken"
    assert runs["broken"].error is None  # a run that failed itself keeps its own story


def test_runs_move_only_forward_and_a_cancelled_run_stays_cancelled() -> None:
    run = Run(submission_id="a" * 32, name="test", status="queued", attempt=0)
    move_run(run, RunStatus.RUNNING)
    assert (run.status, run.attempt, run.finished_at) == ("running", 1, None)
    move_run(run, RunStatus.RUNNING)  # a redelivery restarts what a dead worker left
    assert run.attempt == 2
    move_run(run, RunStatus.CANCELLED)
    assert run.status == "cancelled" and run.finished_at is not None
    for to in RunStatus:
        assert not can_move_run("cancelled", to)
        with pytest.raises(InvalidTransition, match="is cancelled; it cannot become"):
            move_run(run, to)
    assert run.status == "cancelled"
    assert can_move_run("done", "running")  # scores lost: evaluated again
    assert not can_move_run("queued", "done")
