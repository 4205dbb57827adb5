"""Factories for the scheduler tests: a scheduled benchmark, done runs with overall scores,
and a second set of services on the same database (a second scheduler)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from core.accounts import create_user
from core.benchmarks import benchmark_identity, submit_benchmark
from core.context import Services, start_services
from core.descriptor import parse_descriptor
from core.models import Score, Submission, User, new_id
from core.settings import Settings

T0 = datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC)

DESCRIPTOR = """\
spec_version = "0.1.0"

[info]
description = "Elapsed time of a tiny script"
scheduling = "{cron}"
labels = {{ task_name = "tiny" }}

[hardware]
instance_type = "local"
strategy = "single_node"

[env]
docker_image = "python:3.11"

[ml]
benchmark_code = "python3 run.py"

[[output.metrics]]
name = "elapsed"
units = "ms"
pattern = 'elapsed: ([-+]?\\d*\\.\\d+|\\d+)'

[[output.alerts]]
metric = "elapsed"
worse = "higher"
{ranges}"""


def descriptor_text(cron: str = "single_run", *, ranges: str = "") -> str:
    return DESCRIPTOR.format(cron=cron, ranges=ranges)


@pytest.fixture
async def second(settings: Settings, services: Services) -> AsyncIterator[Services]:
    """Another process's services on the same database and storage: a second scheduler."""
    other = await start_services(settings, migrate=False, sync=False)
    yield other
    await other.close()


async def make_owner(services: Services, name: str = "ada") -> User:
    async with services.db.session() as session:
        user, _ = await create_user(session, name, email=f"{name}@example.org")
    return user


async def make_schedule(
    services: Services, owner: User, cron: str, *, created_at: datetime = T0, ranges: str = ""
) -> Submission:
    """A scheduled parent as `POST /api/v1/benchmarks` makes it, created at `created_at`."""
    async with services.db.session() as session:
        parent, children = await submit_benchmark(
            session,
            services.storage,
            services.outbox,
            user=owner,
            kind="benchmark",
            descriptor_text=descriptor_text(cron, ranges=ranges).encode(),
            descriptor_filename="tiny.toml",
        )
        assert children == []
        parent.created_at = created_at
        session.add(parent)
    return parent


class Runs:
    """Done benchmark runs of one descriptor, as the evaluator leaves them: overall scores
    (dataset "all") and one score per run; each a minute after the one before."""

    def __init__(self, services: Services, owner: User, *, private: bool = False) -> None:
        self.services = services
        self.owner = owner
        self.private = private
        self.text = descriptor_text().encode()
        self.identity = benchmark_identity(parse_descriptor(self.text))
        self.key = f"submissions/{new_id()}/upload/tiny.toml"
        self.count = 0
        self.written = False

    async def add(self, value: float, **meta: Any) -> str:
        if not self.written:
            await self.services.storage.write_bytes(self.key, self.text)
            self.written = True
        self.count += 1
        at = T0 + timedelta(minutes=self.count)
        async with self.services.db.session() as session:
            submission = Submission(
                kind="benchmark",
                user_id=self.owner.id,  # type: ignore[arg-type]
                name=f"tiny #{self.count}",
                status="done",
                private=self.private,
                upload_key=self.key,
                upload_filename="tiny.toml",
                meta={
                    "identity": self.identity,
                    "benchmark": "tiny",
                    "instance_type": "local",
                    **meta,
                },
                created_at=at,
                updated_at=at,
            )
            session.add(submission)
            await session.flush()
            session.add(
                Score(
                    submission_id=submission.id,
                    dataset="all",
                    metric="elapsed",
                    value=value,
                    ci_low=value - 0.5,
                    ci_high=value + 0.5,
                )
            )
            for run in (1, 2, 3):
                session.add(
                    Score(
                        submission_id=submission.id,
                        dataset=f"run-{run}",
                        metric="elapsed",
                        value=value + (run - 2) * 0.1,
                    )
                )
        return submission.id
