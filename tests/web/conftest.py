"""The website over the real app (ASGI transport), and a finished, scored submission to show."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from api.app import create_app
from core.accounts import create_user
from core.context import Services
from core.models import Score, Submission, Task

SITE = "http://testserver"


@pytest.fixture
async def client(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(services))
    async with httpx.AsyncClient(transport=transport, base_url=SITE) as c:
        yield c


async def make_done_submission(services: Services, *, name: str = "strong") -> str:
    """A done submission of the fixture task `toy`, scored on its hidden set; returns its id."""
    async with services.db.session() as session:
        user, _ = await create_user(session, "ada", email="ada@example.org")
        task = await session.scalar(sa.select(Task).where(Task.slug == "toy"))
        assert task is not None and user.id is not None
        submission = Submission(task_id=task.id, user_id=user.id, name=name, status="done")
        session.add(submission)
        await session.flush()
        for metric, value in (("accuracy", 0.93), ("macro_f1", 0.91)):
            session.add(
                Score(
                    submission_id=submission.id,
                    dataset="test",
                    metric=metric,
                    value=value,
                    ci_low=value - 0.03,
                    ci_high=value + 0.03,
                )
            )
        return submission.id


async def set_task_description(services: Services, slug: str, description: str) -> None:
    async with services.db.session() as session:
        await session.execute(
            sa.update(Task).where(Task.slug == slug).values(description=description)
        )


@contextlib.contextmanager
def serve_api(home: Path) -> Iterator[str]:
    """`weighbridge serve api` on SQLite in `home` with the fixture task configs, on a free
    port of 127.0.0.1; yields its URL once it answers, and stops it afterwards."""
    from tests.conftest import FIXTURES, free_port

    port = free_port()
    env = {
        **os.environ,
        "WEIGHBRIDGE_HOME": str(home),
        "WEIGHBRIDGE_TASK_CONFIGS": str(FIXTURES / "task_configs"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "serve", "api", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            pytest.fail("the API did not start")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
