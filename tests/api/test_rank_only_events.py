"""On a rank-only task (a blind phase) the API's timeline carries no score values either: the
submission's events and its detail leave them out for everyone but admins."""

from __future__ import annotations

import sqlalchemy as sa

from core.context import Services
from core.models import Event, Submission, Task, User, new_id
from tests.api.conftest import auth, make_user


async def seed(services: Services, *, rank_only: bool) -> str:
    async with services.db.session() as session:
        task = await session.scalar(sa.select(Task).where(Task.slug == "toy"))
        user = await session.scalar(sa.select(User).where(User.name == "ada"))
        assert task is not None and user is not None and user.id is not None
        if rank_only:
            task.config = {**task.config, "leaderboard": {"rank_only": True}}
        s = Submission(task_id=task.id, user_id=user.id, name="m", status="done")
        session.add(s)
        await session.flush()
        session.add(
            Event(
                submission_id=s.id,
                message_id=new_id(),
                type="dataset.finished",
                message="dataset test: accuracy 0.9312",
                envelope={"payload": {"dataset": "test", "values": {"accuracy": 0.9312}}},
            )
        )
        return s.id


async def test_events_hide_values_on_a_rank_only_task(client, services: Services) -> None:
    token = await make_user(services, "ada")
    admin = await make_user(services, "root", admin=True)
    sid = await seed(services, rank_only=True)
    for path in (f"/api/v1/submissions/{sid}/events", f"/api/v1/submissions/{sid}"):
        body = (await client.get(path, headers=auth(token))).json()
        [event] = [e for e in body["events"] if e["type"] == "dataset.finished"]
        assert "0.9312" not in str(event) and "hidden" in event["message"]
        assert event["payload"] == {"dataset": "test"}
        shown = (await client.get(path, headers=auth(admin))).json()
        assert "0.9312" in str(shown["events"])


async def test_events_keep_values_on_other_tasks(client, services: Services) -> None:
    token = await make_user(services, "ada")
    sid = await seed(services, rank_only=False)
    body = (await client.get(f"/api/v1/submissions/{sid}/events", headers=auth(token))).json()
    assert "0.9312" in str(body["events"])
