"""Typed factories shared by the core tests (envelopes, queues, users, submissions)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from core.accounts import create_user
from core.db import Database
from core.envelope import Envelope, Visit
from core.models import Submission, User, new_id
from core.queue import DbQueue


def make_envelope(i: int = 0, **overrides: Any) -> Envelope:
    values: dict[str, Any] = {
        "action_id": new_id(),
        "type": "test",
        "visited": [Visit(service="test")],
        "payload": {"i": i},
    }
    values.update(overrides)
    return Envelope(**values)


def make_queue(db: Database, **overrides: Any) -> DbQueue:
    """A queue with test-friendly timings (short polls and backoff)."""
    values: dict[str, Any] = {
        "lease_seconds": 30.0,
        "max_attempts": 3,
        "backoff_seconds": 0.01,
        "poll_seconds": 0.02,
    }
    values.update(overrides)
    return DbQueue(db, **values)


async def make_user(session: AsyncSession, name: str | None = None) -> tuple[User, str]:
    return await create_user(session, name or f"user-{new_id()[:8]}", email="someone@example.org")


async def make_submission(session: AsyncSession, user: User, **overrides: Any) -> Submission:
    values: dict[str, Any] = {"user_id": user.id, "name": "a model", "status": "uploaded"}
    values.update(overrides)
    submission = Submission(**values)
    session.add(submission)
    await session.flush()
    return submission
