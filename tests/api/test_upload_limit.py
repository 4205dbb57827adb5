"""The per-user submission limit holds when one user's uploads arrive all at once."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from pathlib import Path

import sqlalchemy as sa

from core.context import Services
from core.models import QueueMessage, Submission
from core.storage import LocalStorage
from core.tasks import get_task
from tests.api.conftest import make_user
from tests.api.test_submissions import upload


async def set_submission_limit(services: Services, slug: str, limit: int) -> None:
    async with services.db.session() as session:
        task = await get_task(session, slug)
        config = dict(task.config)
        config["limits"] = {**config["limits"], "submissions_per_window": limit}
        task.config = config


def stored_files(services: Services) -> list[str]:
    assert isinstance(services.storage, LocalStorage)
    root = services.storage.root
    return sorted(p.relative_to(root).as_posix() for p in Path(root).rglob("*") if p.is_file())


async def test_thirty_simultaneous_uploads_by_one_user_against_a_limit_of_ten(
    client, services, token
):
    await set_submission_limit(services, "toy", 10)
    other = await make_user(services, "grace")
    responses = await asyncio.gather(
        *(upload(client, token, name=f"m{i}") for i in range(30)),
        upload(client, other, name="someone else's"),
    )
    mine, theirs = responses[:30], responses[30]
    codes = Counter(r.status_code for r in mine)
    assert codes == {201: 10, 429: 20}, [r.text for r in mine if r.status_code not in (201, 429)]
    assert theirs.status_code == 201, theirs.text

    # The refusals say when the next slot opens, in words and as a time.
    for refused in (r for r in mine if r.status_code == 429):
        error = refused.json()["error"]
        assert error["code"] == "rate_limited" and error["limit"] == 10
        assert re.search(r"the next slot opens in 23 h 5\d min, at 20\d\d-", error["message"])
        assert int(refused.headers["retry-after"]) > 23 * 3600

    accepted = sorted(r.json()["id"] for r in mine if r.status_code == 201)
    async with services.db.session() as session:
        rows = sorted(await session.scalars(sa.select(Submission.id)))
        messages = await session.scalar(sa.select(sa.func.count()).select_from(QueueMessage))
    assert rows == sorted([*accepted, theirs.json()["id"]])
    assert messages == 11
    # Exactly the accepted bundles are stored: the refused ones left nothing behind.
    assert stored_files(services) == sorted(
        f"submissions/{sid}/upload/model.tar.gz" for sid in rows
    )
