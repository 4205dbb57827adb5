"""queue_submission_email renders the done and failed emails and queues each exactly once."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from core.boards import rebuild_leaderboard
from core.context import Services
from core.models import Notification, Submission
from core.notifications import notification_message_id, queue_submission_email, render_email
from tests.notifications.conftest import (
    make_failed_submission,
    make_owner,
    make_scored_submission,
    task_row,
)


async def test_done_email_has_scores_ci_rank_and_link(services: Services) -> None:
    async with services.db.session() as session:
        owner = await make_owner(session)
        task = await task_row(session, "toy")
        other = await make_owner(session, "grace")
        await make_scored_submission(
            session, other, task, {"test": {"accuracy": 0.99, "macro_f1": 0.99}}, name="best"
        )
        submission = await make_scored_submission(
            session,
            owner,
            task,
            {
                "test": {"accuracy": (0.91, 0.85, 0.96), "macro_f1": (0.905, 0.84, 0.95)},
                "examples": {"accuracy": 1.0},
            },
            name="parity <net>",
        )
        # The rank comes from the stored board, rebuilt (here by hand) after the scores.
        await rebuild_leaderboard(session, task, storage=None)
        note = await queue_submission_email(
            session, services.storage, submission, settings=services.settings
        )
    assert note.to_address == "ada@example.org"
    assert note.status == "pending"
    assert note.message_id == notification_message_id(submission.id, "done")
    assert "parity <net>" in note.subject and "done" in note.subject
    assert "rank 2 of 2" in note.subject
    text, html = note.body_text, note.body_html
    link = f"{services.settings.public_url}/submissions/{submission.id}"
    for body in (text, html):
        assert "Toy classification" in body
        assert "rank 2 of 2" in body
        assert link in body
        assert "91.00%" in body and "[85.00%, 96.00%]" in body
        assert "Macro F1" in body or "macro_f1" in body
        assert "examples" in body and "test" in body
    assert "parity <net>" in text
    assert "parity &lt;net&gt;" in html and "parity <net>" not in html


async def test_failed_email_has_stage_reason_log_tail_and_advice(services: Services) -> None:
    async with services.db.session() as session:
        owner = await make_owner(session)
        task = await task_row(session, "toy")
        submission = await make_failed_submission(session, services.storage, owner, task)
        note = await queue_submission_email(
            session, services.storage, submission, settings=services.settings
        )
    assert "failed at build" in note.subject
    for body in (note.body_text, note.body_html):
        assert "build" in body
        assert (
            "No module named 'transformers'" in body
            or "No module named &#39;transformers&#39;" in body
        )
        assert "log line 99" in body and "log line 60" in body
        assert "log line 59\n" not in body  # only the last 40 lines
        assert "requirements.txt" in body
        assert "weighbridge test DIR --task toy" in body
        assert f"/submissions/{submission.id}" in body


async def test_failed_email_without_a_readable_log_says_so(services: Services) -> None:
    async with services.db.session() as session:
        owner = await make_owner(session)
        task = await task_row(session, "toy")
        submission = await make_failed_submission(
            session, services.storage, owner, task, stage="evaluate:test"
        )
        submission.error_log_key = "submissions/missing/log"
        note = await queue_submission_email(
            session, services.storage, submission, settings=services.settings
        )
    assert "could not be read" in note.body_text
    assert "on dataset test" in note.body_text  # advice for an evaluation failure


async def test_queueing_twice_makes_one_email(services: Services) -> None:
    async with services.db.session() as session:
        owner = await make_owner(session)
        task = await task_row(session, "toy")
        submission = await make_scored_submission(
            session, owner, task, {"test": {"accuracy": 0.5, "macro_f1": 0.5}}
        )
        first = await queue_submission_email(
            session, services.storage, submission, settings=services.settings
        )
    async with services.db.session() as session:
        again = await session.get(Submission, submission.id)
        assert again is not None
        second = await queue_submission_email(
            session, services.storage, again, settings=services.settings
        )
        rows = list(
            await session.scalars(
                sa.select(Notification).where(Notification.submission_id == submission.id)
            )
        )
    assert second.id == first.id
    assert len(rows) == 1


async def test_no_email_for_unfinished_submissions(services: Services) -> None:
    async with services.db.session() as session:
        owner = await make_owner(session)
        task = await task_row(session, "toy")
        submission = await make_scored_submission(session, owner, task, {}, status="evaluating")
        with pytest.raises(ValueError, match="only done or failed"):
            await queue_submission_email(
                session, services.storage, submission, settings=services.settings
            )


def test_templates_render_without_a_database() -> None:
    text, html = render_email(
        "failed",
        {
            "user_name": "ada",
            "kind": "model",
            "model_name": "m",
            "task_name": "T",
            "task_slug": "t",
            "submission_id": "x" * 32,
            "private": False,
            "public_url": "http://h",
            "link": "http://h/submissions/x",
            "leaderboard_link": None,
            "stage": "build",
            "reason": "r",
            "advice": "a",
            "log_key": None,
            "log_tail": None,
            "log_lines": 0,
            "subject": "s",
        },
    )
    assert "failed at the build stage" in text and "<html" in html


async def test_the_done_email_waits_for_the_stored_board_and_then_says_the_rank(
    services: Services,
) -> None:
    from core.boards import mark_leaderboard_stale, rebuild_stale_leaderboards

    async with services.db.session() as session:
        owner = await make_owner(session)
        task = await task_row(session, "toy")
        submission = await make_scored_submission(
            session, owner, task, {"test": {"accuracy": 0.9, "macro_f1": 0.88}}
        )
        # As the evaluator's final transaction does: mark the board, queue the email.
        assert task.id is not None
        await mark_leaderboard_stale(session, task.id)
        note = await queue_submission_email(
            session, services.storage, submission, settings=services.settings
        )
    # Not on the stored board yet: the email does not guess, and it waits for the rebuild.
    assert "rank pending" in note.body_text and "not ranked" not in note.body_text
    assert "rank" not in note.subject and note.available_at > 0

    assert await rebuild_stale_leaderboards(services) >= 1
    async with services.db.session() as session:
        note = await session.scalar(
            sa.select(Notification).where(Notification.submission_id == submission.id)
        )
    assert note is not None
    assert "rank 1 of 1" in note.subject and "rank 1 of 1" in note.body_text
    assert "rank 1 of 1" in note.body_html and "pending" not in note.body_text
    assert note.available_at == 0.0


async def test_a_rank_only_task_emails_the_rank_and_no_score(services: Services) -> None:
    """A blind phase (`[leaderboard] rank_only = true`): the done email says the rank and that
    scores are not shown, and carries no value or interval."""
    async with services.db.session() as session:
        owner = await make_owner(session)
        task = await task_row(session, "toy")
        task.config = {**task.config, "leaderboard": {"rank_only": True}}
        submission = await make_scored_submission(
            session, owner, task, {"test": {"accuracy": (0.91, 0.85, 0.96), "macro_f1": 0.905}}
        )
        await rebuild_leaderboard(session, task, storage=None)
        note = await queue_submission_email(
            session, services.storage, submission, settings=services.settings
        )
    assert "rank 1 of 1" in note.subject
    for body in (note.body_text, note.body_html):
        assert "blind phase" in body and "rank 1 of 1" in body
        assert "91.00%" not in body and "85.00%" not in body and "90.50%" not in body
