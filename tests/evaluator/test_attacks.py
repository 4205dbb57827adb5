"""Attacks through the real evaluator, as a user reaches it: a built submission on the queue.

Each hostile model is evaluated by `run_evaluator` (warm interpreter, concurrent submissions)
on each database. What must hold afterwards: the model scored at chance (it read no label), the
service is alive and scores the next submission normally, the database is unchanged, nothing
was written outside the sandbox, and one slow model did not hold the fleet.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import sqlalchemy as sa

from core.context import Services
from core.models import Submission, User
from core.submissions import cancel_submission, list_scores
from tests.evaluator.factories import (
    get_submission,
    make_built_submission,
    make_user,
    status_of,
    store_dataset,
    toy_rows,
    wait_for,
    wait_terminal,
)
from tests.evaluator.models import GOOD, pack_mar, write_folder
from tests.evaluator.test_worker import evaluator

# Answers the label it stole when it found one, else 0: a thief that found nothing scores at
# chance on the toy task (labels are the parity of x).
THIEF = """
import ctypes, glob, json, os

STOLEN = {}


def steal_from(text):
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "x" in row and "label" in row:
            STOLEN[row["x"]] = row["label"]


def attempt(path):
    try:
        with open(path, errors="replace") as fh:
            steal_from(fh.read(1 << 22))
    except OSError:
        pass


def initialize(context):
    # The evaluator's storage by its own path, and through the server's /proc entries.
    for pattern in (STORAGE + "/datasets/*/*.jsonl", "/proc/%d/root" % SERVER + STORAGE
                    + "/datasets/*/*.jsonl", "/proc/*/root" + STORAGE + "/datasets/*/*.jsonl"):
        for path in glob.glob(pattern):
            attempt(path)
    for pid in [SERVER, 1, *[int(p) for p in os.listdir("/proc") if p.isdigit()]]:
        attempt("/proc/%d/environ" % pid)
        try:
            fd = os.open("/proc/%d/mem" % pid, os.O_RDONLY)
            os.close(fd)
        except OSError:
            pass
    # Relative opens from a directory descriptor of the root.
    try:
        root = os.open("/", os.O_RDONLY)
        attempt_fd = os.open(STORAGE.lstrip("/") + "/datasets", os.O_RDONLY, dir_fd=root)
        os.close(attempt_fd)
    except OSError:
        pass
    print("stolen:", len(STOLEN))


def handle(data, context):
    if data is None:
        initialize(context)
        return None
    return [{"label": STOLEN.get(item["body"]["x"], 0)} for item in data]
"""

KILLER = """
import ctypes, signal

libc = ctypes.CDLL(None, use_errno=True)


def initialize(context):
    # Through libc, past Python's audit hook: only the kernel decides.
    for target in (SERVER, -1, 1):  # the server, everything it may signal, its init
        libc.kill(target, signal.SIGKILL)


def handle(data, context):
    if data is None:
        initialize(context)
        return None
    return [{"label": item["body"]["x"] % 2} for item in data]
"""

ADMIN = """
import sqlite3


def initialize(context):
    try:
        c = sqlite3.connect(DATABASE)
        c.execute("update users set is_admin = 1")
        c.commit()
    except Exception as exc:
        print("no database:", exc)


def handle(data, context):
    if data is None:
        initialize(context)
        return None
    return [{"label": item["body"]["x"] % 2} for item in data]
"""

SLEEPER = """
import time


def handle(data, context):
    if data is None:
        return None
    time.sleep(30)
    return [{"label": 0} for item in data]
"""


def storage_root(services: Services) -> str:
    root = services.storage.local_path("datasets")
    assert root is not None, "these attacks need the local storage"
    return str(root.parent)


async def accuracy_of(services: Services, sid: str) -> float:
    async with services.db.session() as session:
        scores = {s.metric: s.value for s in await list_scores(session, sid)}
    return scores["accuracy"]


async def test_a_label_thief_scores_at_chance_and_the_next_model_is_scored(
    services: Services, tmp_path: Path
) -> None:
    rows = toy_rows(64)
    dataset = await store_dataset(services, rows)
    user = await make_user(services)
    thief = write_folder(
        tmp_path / "thief", THIEF, STORAGE=storage_root(services), SERVER=os.getpid()
    )
    good = write_folder(tmp_path / "good", GOOD)
    sid, _ = await make_built_submission(
        services, user, pack_mar(thief, tmp_path / "t.mar"), [dataset]
    )
    async with evaluator(services):
        await wait_terminal(services, [sid], within=120)
        after, _ = await make_built_submission(
            services, user, pack_mar(good, tmp_path / "g.mar"), [dataset], name="next"
        )
        await wait_terminal(services, [after], within=120)
    assert await status_of(services, sid) == "done"
    zeros = sum(1 for r in rows if r["label"] == 0) / len(rows)
    assert await accuracy_of(services, sid) == zeros  # answered 0 everywhere: it stole nothing
    assert await status_of(services, after) == "done"
    assert await accuracy_of(services, after) == 1.0


async def test_killing_the_server_or_everything_harms_nothing(
    services: Services, tmp_path: Path
) -> None:
    dataset = await store_dataset(services, toy_rows(32))
    user = await make_user(services)
    killer = write_folder(tmp_path / "killer", KILLER, SERVER=os.getpid())
    sid, _ = await make_built_submission(
        services, user, pack_mar(killer, tmp_path / "k.mar"), [dataset]
    )
    async with evaluator(services):
        await wait_terminal(services, [sid], within=120)
    # This process (the server) is alive to read the answer; the model ran to the end.
    submission = await get_submission(services, sid)
    assert submission.status == "done", submission.error
    assert await accuracy_of(services, sid) == 1.0


async def test_the_database_is_out_of_reach(services: Services, tmp_path: Path) -> None:
    dataset = await store_dataset(services, toy_rows(16))
    user = await make_user(services)
    url = sa.engine.make_url(services.settings.database_url)
    database = url.database if url.get_backend_name() == "sqlite" else "/nonexistent"
    admin = write_folder(tmp_path / "admin", ADMIN, DATABASE=str(database))
    sid, _ = await make_built_submission(
        services, user, pack_mar(admin, tmp_path / "a.mar"), [dataset]
    )
    async with evaluator(services):
        await wait_terminal(services, [sid], within=120)
    assert await status_of(services, sid) == "done"
    async with services.db.session() as session:
        admins = (await session.scalars(sa.select(User).where(User.is_admin))).all()
    assert admins == []


async def test_a_slow_model_does_not_hold_the_fleet(services: Services, tmp_path: Path) -> None:
    dataset = await store_dataset(services, toy_rows(16))
    user = await make_user(services)
    slow = write_folder(tmp_path / "slow", SLEEPER)
    good = write_folder(tmp_path / "good", GOOD)
    overrides = {"timeout_seconds": 60}
    slow_id, _ = await make_built_submission(
        services, user, pack_mar(slow, tmp_path / "s.mar"), [dataset], eval_overrides=overrides
    )
    async with evaluator(services):

        async def slow_started() -> bool:
            async with services.db.session() as session:
                row = await session.get(Submission, slow_id)
                return row is not None and row.status == "evaluating"

        await wait_for(slow_started, within=60)
        started = time.monotonic()
        good_id, _ = await make_built_submission(
            services, user, pack_mar(good, tmp_path / "g.mar"), [dataset], name="quick"
        )
        await wait_terminal(services, [good_id], within=25)
        # Scored while the slow one still sleeps in its first batch.
        assert time.monotonic() - started < 25
        assert await status_of(services, slow_id) == "evaluating"
        async with services.db.session() as session:  # the owner gives up on it
            await cancel_submission(session, slow_id, user=user)
            await session.commit()
        await wait_terminal(services, [slow_id], within=20)
    assert await status_of(services, slow_id) == "cancelled"
    assert await accuracy_of(services, good_id) == 1.0
