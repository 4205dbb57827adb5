"""A data fetch that runs in its own OS process (spawned), for the tests that kill its holder.

Kept apart from the test module so a spawned child imports only what it needs.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from core.db import Database
from core.fetcher import FetchPolicy, SourceSpec, fetch_source
from core.storage import LocalStorage

# The test's own data server on loopback, allowed as an operator would allow theirs.
LOCAL = ("127.0.0.1",)


def fetch_in_process(url: str, storage_root: str, src: str, lease_seconds: float) -> None:
    """Fetch `src` holding the lock; the test kills this process with SIGKILL mid-download."""
    asyncio.run(_fetch(url, storage_root, src, lease_seconds))


async def _fetch(url: str, storage_root: str, src: str, lease_seconds: float) -> None:
    db = Database(url)
    try:
        policy = FetchPolicy(allow_hosts=LOCAL, lease_seconds=lease_seconds, read_timeout=60.0)
        await fetch_source(db, LocalStorage(Path(storage_root)), SourceSpec(src=src), policy=policy)
    finally:
        await db.dispose()
