"""Factories for the evaluator tests: a stored toy dataset, built submissions, evaluate messages."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from core.accounts import create_user
from core.context import Services
from core.envelope import Envelope, Visit
from core.messages import EvaluateMessage
from core.models import Dataset, Event, Submission, Task, User, new_id
from core.queue import eval_queue
from core.states import TERMINAL, Status

TASK = "toy"
FLEET = "toy-fleet"


def toy_rows(n: int = 40) -> list[dict[str, Any]]:
    """uid / x / label (x's parity); x > 900 first appears in the second batch of 16."""
    xs = [(i * 37) % 1000 for i in range(n)]
    return [{"uid": f"t-{i:03d}", "x": x, "label": x % 2} for i, x in enumerate(xs)]


async def store_dataset(
    services: Services, rows: Sequence[dict[str, Any]], *, name: str = "test"
) -> dict[str, Any]:
    """Write the JSONL under datasets/<sha256>/ and point the task's dataset row at it."""
    data = b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in rows)
    sha = hashlib.sha256(data).hexdigest()
    key = f"datasets/{sha}/{name}.jsonl"
    await services.storage.write_bytes(key, data)
    async with services.db.session() as session:
        task = await session.scalar(sa.select(Task).where(Task.slug == TASK))
        assert task is not None
        row = await session.scalar(
            sa.select(Dataset).where(Dataset.task_id == task.id, Dataset.name == name)
        )
        if row is None:
            row = Dataset(task_id=task.id, name=name)  # type: ignore[arg-type]
        row.uri, row.sha256, row.n_examples = key, sha, len(rows)
        session.add(row)
    return {
        "name": name,
        "key": key,
        "sha256": sha,
        "access": "hidden",
        "split": "test",
        "weight": 1.0,
        "perturbation_of": None,
        "n_examples": len(rows),
    }


async def make_user(services: Services) -> User:
    async with services.db.session() as session:
        user, _token = await create_user(session, f"u-{new_id()[:8]}", email="owner@example.org")
    return user


async def make_built_submission(
    services: Services,
    user: User,
    mar: Path,
    datasets: Sequence[dict[str, Any]],
    *,
    name: str = "a model",
    eval_overrides: dict[str, Any] | None = None,
    mar_key: str | None = None,
    build: dict[str, Any] | None = None,
) -> tuple[str, Envelope]:
    """A submission in `built` with its .mar in storage and its evaluate message staged
    (`build` overrides fields of the message's build, such as env_key)."""
    submission_id = new_id()
    key = mar_key or f"submissions/{submission_id}/build/model.mar"
    if mar_key is None:
        await services.storage.write_file(key, mar)
    config = copy.deepcopy(services.tasks[TASK].model_dump(mode="json"))
    config["eval"].update(eval_overrides or {})
    names = {d["name"] for d in config["datasets"]}
    for d in datasets:
        if d["name"] not in names:
            config["datasets"].append({"name": d["name"], "source": "generator:toy"})
    async with services.db.session() as session:
        task = await session.scalar(sa.select(Task).where(Task.slug == TASK))
        assert task is not None
        submission = Submission(
            id=submission_id,
            user_id=user.id,  # type: ignore[arg-type]
            task_id=task.id,
            name=name,
            status=Status.BUILT.value,
            upload_sha256="0" * 64,
        )
        session.add(submission)
        await session.flush()
        envelope = Envelope(
            action_id=submission_id,
            type="evaluate",
            visited=[Visit(service="test")],
            payload={
                "schema_version": EvaluateMessage.VERSION,
                "submission": {"id": submission_id, "kind": "model", "name": name, "meta": {}},
                "task": {"slug": TASK, "config": config},
                "owner": {"id": user.id, "name": user.name, "email": user.email},
                "build": {
                    "mar_key": key,
                    "env_key": None,
                    "requirements_sha256": None,
                    "handler": "handler.py",
                    "bundle_sha256": "b" * 64,
                    **(build or {}),
                },
                "datasets": list(datasets),
            },
        )
        await services.outbox.stage(session, eval_queue(FLEET), envelope)
    return submission_id, envelope


async def status_of(services: Services, submission_id: str) -> str:
    async with services.db.session() as session:
        submission = await session.get(Submission, submission_id)
        assert submission is not None
        await session.refresh(submission)
        return submission.status


async def get_submission(services: Services, submission_id: str) -> Submission:
    async with services.db.session() as session:
        submission = await session.get(Submission, submission_id)
        assert submission is not None
        return submission


async def events_of(services: Services, submission_id: str) -> list[Event]:
    async with services.db.session() as session:
        return list(
            await session.scalars(
                sa.select(Event).where(Event.submission_id == submission_id).order_by(Event.id)
            )
        )


async def wait_for(
    predicate: Callable[[], Awaitable[bool]], *, within: float, interval: float = 0.1
) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {within} s")


async def wait_terminal(services: Services, ids: Sequence[str], *, within: float) -> None:
    async def all_done() -> bool:
        statuses = [await status_of(services, i) for i in ids]
        return all(Status(s) in TERMINAL for s in statuses)

    await wait_for(all_done, within=within)
