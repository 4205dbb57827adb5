"""Uploads in flight: discarding a failed one, sweeping what crashes left, the sweeper's loop."""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from core.db import Database
from core.incoming import discard_upload, run_sweeper, sweep_storage
from core.models import new_id, utcnow
from core.storage import LocalStorage
from core.submissions import human_duration
from tests.core.factories import make_submission, make_user


def all_paths(root: Path) -> list[str]:
    """Every file and folder below the top-level ones (hidden and unfinished files too)."""
    return sorted(p.relative_to(root).as_posix() for p in root.glob("*/**/*"))


def age(storage: LocalStorage, key: str, *, days: float) -> None:
    """Make a stored file look `days` old (its modification time is what the sweeper reads)."""
    when = (utcnow() - timedelta(days=days)).timestamp()
    os.utime(storage.root / key, (when, when))


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "store")


async def real_submission(db: Database, storage: LocalStorage) -> str:
    async with db.session() as session:
        user, _ = await make_user(session)
        submission = await make_submission(session, user)
    await storage.write_bytes(f"submissions/{submission.id}/upload/model.zip", b"real")
    await storage.write_bytes(f"submissions/{submission.id}/build/log", b"built")
    return submission.id


async def test_sweep_removes_old_leftovers_and_nothing_else(
    db: Database, storage: LocalStorage
) -> None:
    real = await real_submission(db, storage)
    age(storage, f"submissions/{real}/upload/model.zip", days=30)
    age(storage, f"submissions/{real}/build/log", days=30)
    kept = all_paths(storage.root)

    orphan, young_orphan, dead_upload, live_upload = (new_id() for _ in range(4))
    # A bundle placed by a process killed before its commit, long ago and just now.
    await storage.write_bytes(f"submissions/{orphan}/upload/model.zip", b"orphan")
    age(storage, f"submissions/{orphan}/upload/model.zip", days=2)
    await storage.write_bytes(f"submissions/{young_orphan}/upload/model.zip", b"committing")
    # An unfinished write of a killed upload, and one still being written.
    dead = f"incoming/{dead_upload}/.model.zip.123.456.part"
    (storage.root / dead).parent.mkdir(parents=True)
    (storage.root / dead).write_bytes(b"half")
    age(storage, dead, days=1.5)
    await storage.write_bytes(f"incoming/{live_upload}/model.zip", b"arriving")

    removed = await sweep_storage(db, storage)
    assert sorted(removed) == sorted([f"incoming/{dead_upload}", f"submissions/{orphan}"])
    assert all_paths(storage.root) == sorted(
        [
            *kept,
            f"incoming/{live_upload}",
            f"incoming/{live_upload}/model.zip",
            f"submissions/{young_orphan}",
            f"submissions/{young_orphan}/upload",
            f"submissions/{young_orphan}/upload/model.zip",
        ]
    )

    # Two days later the rest are leftovers too, but the real submission keeps its files.
    later = await sweep_storage(db, storage, now=utcnow() + timedelta(days=2))
    assert sorted(later) == sorted([f"incoming/{live_upload}", f"submissions/{young_orphan}"])
    assert all_paths(storage.root) == kept
    assert await sweep_storage(db, storage, now=utcnow() + timedelta(days=2)) == []


async def test_sweep_age_is_measured_from_the_newest_file_of_a_folder(
    db: Database, storage: LocalStorage
) -> None:
    sid = new_id()
    await storage.write_bytes(f"incoming/{sid}/old", b"1")
    age(storage, f"incoming/{sid}/old", days=3)
    await storage.write_bytes(f"incoming/{sid}/new", b"2")
    assert await sweep_storage(db, storage) == []
    assert await sweep_storage(db, storage, max_age=timedelta(0)) == [f"incoming/{sid}"]


async def test_discard_removes_a_failed_upload_but_never_a_submissions_bundle(
    db: Database, storage: LocalStorage
) -> None:
    real = await real_submission(db, storage)
    before = all_paths(storage.root)
    failed = new_id()
    await storage.write_bytes(f"incoming/{failed}/model.zip", b"x")
    await storage.write_bytes(f"submissions/{failed}/upload/model.zip", b"x")

    await discard_upload(db, storage, failed)
    assert all_paths(storage.root) == before
    # A commit that raised may still have committed: the bundle of a row that exists stays.
    await discard_upload(db, storage, real)
    assert all_paths(storage.root) == before


async def test_discard_leaves_to_the_sweeper_what_it_cannot_decide(
    storage: LocalStorage, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sid = new_id()
    await storage.write_bytes(f"submissions/{sid}/upload/model.zip", b"x")
    broken = Database(f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'no-schema.db'}")
    try:
        with caplog.at_level(logging.WARNING, logger="core.incoming"):
            await discard_upload(broken, storage, sid)  # no table: it cannot tell, so it keeps
    finally:
        await broken.dispose()
    assert await storage.exists(f"submissions/{sid}/upload/model.zip")
    assert "the sweeper will" in caplog.text


class FlakyStorage(LocalStorage):
    """A folder whose first listing fails, as a store that is briefly unreachable does."""

    failures = 1

    async def list_info(self, prefix: str) -> Any:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("store unreachable")
        return await super().list_info(prefix)


async def test_the_sweeper_runs_at_start_then_periodically_and_survives_failures(
    db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    storage = FlakyStorage(tmp_path / "store")
    services: Any = SimpleNamespace(db=db, storage=storage)
    leftover = f"incoming/{new_id()}/model.zip"
    await storage.write_bytes(leftover, b"x")
    age(storage, leftover, days=2)
    stop = asyncio.Event()
    with caplog.at_level(logging.INFO, logger="core.incoming"):
        sweeper = asyncio.create_task(run_sweeper(services, stop, interval=0.05))
        for _ in range(200):
            if not await storage.exists(leftover):
                break
            await asyncio.sleep(0.02)
        stop.set()
        await asyncio.wait_for(sweeper, 5)
    assert not await storage.exists(leftover)
    assert "sweeping storage failed" in caplog.text and "store unreachable" in caplog.text
    assert "swept 1 leftovers" in caplog.text


async def test_the_sweeper_stops_at_once_between_sweeps(db: Database, storage: LocalStorage):
    stop = asyncio.Event()
    services: Any = SimpleNamespace(db=db, storage=storage)
    sweeper = asyncio.create_task(run_sweeper(services, stop))  # the hourly default
    await asyncio.sleep(0.2)
    stop.set()
    await asyncio.wait_for(sweeper, 2)


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (0, "less than a minute"),
        (59.9, "less than a minute"),
        (60, "1 min"),
        (3600, "1 h"),
        (23 * 3600 + 58 * 60 + 30, "23 h 58 min"),
        (2 * 86400 + 3 * 3600 + 4 * 60, "2 d 3 h 4 min"),
        (86400 + 5 * 60, "1 d 5 min"),
    ],
)
def test_human_duration(seconds: float, words: str) -> None:
    assert human_duration(seconds) == words
