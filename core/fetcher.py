"""Benchmark data sources, fetched once into storage, verified, and shared by every later job.

A source (`[[data.sources]]` of a descriptor) names a file by URL: `http(s)://`, `s3://`
(read through a storage object for the bucket, where the deployment has one) or `file://`
(under the folders the deployment allows). `fetch_source` streams it to a temporary file,
hashing as it goes, checks it against the md5/sha256 the descriptor pins, and stores it under
`datasets/<sha256>/<file name>`. A database row per src + expected checksums is both the
cache record (a later fetch makes no request at all) and the lock: two jobs asking at once,
in one process or two, download the file once; the other waits for the holder's result. The
holder extends its lease while it works, and a holder that died is taken over when its lease
runs out (the database's clock decides, never a worker's).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from core.datasets import ChecksumMismatch
from core.db import Database
from core.downloads import BucketResolver, FetchError, Progress, download_to
from core.models import DataFetch, new_id, table_of
from core.queue import database_epoch
from core.storage import Storage

__all__ = [
    "BucketResolver",
    "FetchError",
    "FetchPolicy",
    "FetchedSource",
    "Progress",
    "SourceChecksumMismatch",
    "SourceSpec",
    "dataset_key",
    "fetch_source",
]

log = logging.getLogger(__name__)

SCHEMES = ("http", "https", "s3", "file")
# Anubis' `md5` field: 32 hex digits, "<algorithm>:<hex digits>", or empty (no checksum).
ANUBIS_MD5 = re.compile(r"^([^:]+:[a-fA-F0-9]+|[a-fA-F0-9]{32}|)$")
DIGEST_LENGTHS = {"md5": 32, "sha1": 40, "sha256": 64, "sha512": 128}

FETCHING, DONE, FAILED = "fetching", "done", "failed"


class SourceChecksumMismatch(FetchError, ChecksumMismatch):
    """The downloaded bytes do not match the checksum the descriptor pins; they were not kept."""

    def __init__(self, src: str, name: str, mismatches: list[tuple[str, str, str]]) -> None:
        sums = "; ".join(f"{alg} expected {want}, got {got}" for alg, want, got in mismatches)
        super().__init__(
            src,
            f"checksum mismatch for {name}: {sums}. The file was not kept: check that the "
            "source serves the file you meant, or fix the checksum in the descriptor",
        )
        self.name = name
        self.mismatches = mismatches


class SourceSpec(BaseModel):
    """One source to fetch: where from, the checksums it must match, its file name in storage.

    `md5` takes what Anubis' field allows (32 hex digits, or "<algorithm>:<hex>" with md5,
    sha1, sha256 or sha512); `sha256` is ours. `name` defaults to the last part of the URL's
    path; the descriptor's `path` (where the job sees the file) is not part of the cache key.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    src: str
    md5: str | None = None
    sha256: str | None = None
    name: str | None = None

    @field_validator("src")
    @classmethod
    def _check_src(cls, src: str) -> str:
        parsed = urlparse(src)
        if parsed.scheme not in SCHEMES:
            raise ValueError(
                f"src {src!r}: scheme {parsed.scheme or '(none)'!r} is not supported; "
                "use http://, https://, s3://bucket/key or file:///absolute/path"
            )
        if parsed.scheme in ("http", "https", "s3") and not parsed.netloc:
            raise ValueError(f"src {src!r}: no host or bucket after {parsed.scheme}://")
        if not parsed.path.strip("/"):
            raise ValueError(f"src {src!r}: names no file (the URL has no path)")
        return src

    @field_validator("md5")
    @classmethod
    def _check_md5(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not ANUBIS_MD5.match(value):
            raise ValueError(
                f"md5 {value!r} is not a checksum: use 32 hex digits or "
                "'<algorithm>:<hex digits>' (md5, sha1, sha256, sha512)"
            )
        _digest_of(value, "md5")
        return value

    @field_validator("sha256")
    @classmethod
    def _check_sha256(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not re.fullmatch(r"[a-fA-F0-9]{64}", value):
            raise ValueError(f"sha256 {value!r} is not 64 hex digits")
        return value.lower()

    @model_validator(mode="after")
    def _check_consistent(self) -> SourceSpec:
        self.checksums()  # conflicting pins are refused at once, not after a download
        name = self.file_name
        if name in ("", ".", "..") or "/" in name or "\\" in name or "\x00" in name:
            raise ValueError(
                f"name {name!r} cannot be a file name in storage; give a plain `name` "
                "such as 'train.tar'"
            )
        return self

    @property
    def file_name(self) -> str:
        if self.name:
            return self.name
        return unquote(urlparse(self.src).path.rstrip("/").rsplit("/", 1)[-1])

    def checksums(self) -> dict[str, str]:
        """Every pinned checksum, {algorithm: lowercase hex}."""
        pinned: dict[str, str] = {}
        if self.md5:
            alg, digest = _digest_of(self.md5, "md5")
            pinned[alg] = digest
        if self.sha256:
            if pinned.get("sha256", self.sha256) != self.sha256:
                raise ValueError(
                    f"md5 pins sha256 {pinned['sha256']} but sha256 pins {self.sha256}; "
                    "give one value"
                )
            pinned["sha256"] = self.sha256
        return pinned

    def expected(self) -> str:
        """The pinned checksums as one canonical string ("md5:<hex>,sha256:<hex>")."""
        return ",".join(f"{alg}:{hex_}" for alg, hex_ in sorted(self.checksums().items()))

    def fetch_key(self) -> str:
        """The identity of a fetch: same src, same pinned checksums (64 hex digits)."""
        return hashlib.sha256(f"{self.src}\n{self.expected()}".encode()).hexdigest()


def _digest_of(value: str, field_name: str) -> tuple[str, str]:
    alg, _, digest = value.rpartition(":")
    alg = alg.lower() or "md5"
    if alg not in DIGEST_LENGTHS:
        raise ValueError(
            f"{field_name} {value!r}: algorithm {alg!r} is not supported; "
            f"use one of {', '.join(DIGEST_LENGTHS)}"
        )
    if len(digest) != DIGEST_LENGTHS[alg]:
        raise ValueError(
            f"{field_name} {value!r}: a {alg} digest has {DIGEST_LENGTHS[alg]} hex digits, "
            f"not {len(digest)}"
        )
    return alg, digest.lower()


@dataclass(frozen=True)
class FetchedSource:
    """Where a verified source lies in storage; `cached` when this call downloaded nothing."""

    src: str
    key: str
    sha256: str
    md5: str
    size: int
    cached: bool


@dataclass(frozen=True)
class FetchPolicy:
    """How hard and how long to try, how to share the work, and what a source may read.

    `file_roots` are the only folders `file://` sources may read (none: file:// refused): a
    descriptor is user input and must not copy the server's own files into a job. For the
    same reason an http(s) source (and every redirect it takes) must resolve to public
    addresses only: loopback, private, link-local (cloud metadata at 169.254.169.254) and
    reserved ones are refused, unless its host is one of `allow_hosts` (an operator's own
    data server; WEIGHBRIDGE_DATA_ALLOW_HOSTS).
    """

    attempts: int = 5
    backoff_seconds: float = 1.0
    max_backoff_seconds: float = 60.0
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    lease_seconds: float = 60.0
    poll_seconds: float = 1.0
    progress_seconds: float = 0.5
    max_bytes: int | None = None
    file_roots: tuple[Path, ...] = ()
    allow_hosts: tuple[str, ...] = ()
    scratch: Path | None = None


DEFAULT_POLICY = FetchPolicy()


# ---------------------------------------------------------------------------------------------
# The lock and cache: one row per fetch key


async def fetch_source(
    db: Database,
    storage: Storage,
    source: SourceSpec,
    *,
    policy: FetchPolicy = DEFAULT_POLICY,
    progress: Progress | None = None,
    buckets: BucketResolver | None = None,
) -> FetchedSource:
    """The source, verified and in storage: from the cache, from another job's download that
    was running when we asked, or downloaded now (by this call alone among all askers).

    Raises SourceChecksumMismatch when the bytes do not match a pinned checksum, FetchError
    for anything else that stops the fetch. A job that waited for another's download gets
    that download's failure; a later ask tries again.
    """
    table = table_of(DataFetch)
    key = source.fetch_key()
    waited_on: str | None = None
    while True:
        row = await _read_row(db, key)
        if row is None:
            token = new_id()
            if await _insert_row(db, source, token, policy):
                held = await _fetch_holding(db, storage, source, token, policy, progress, buckets)
                if held is not None:
                    return held
            continue
        if row.status == DONE:
            found = await _from_cache(storage, source, row)
            if found is not None:
                return found
            log.warning(
                "%s: the cached copy %s is gone; fetching again", source.src, row.storage_key
            )
        elif row.status == FAILED and waited_on is not None and row.holder == waited_on:
            raise FetchError(source.src, f"the job that was fetching it failed: {row.error}")
        elif row.status == FETCHING and row.live:
            waited_on = row.holder
            await asyncio.sleep(policy.poll_seconds)
            continue
        # Not there (gone from storage), failed before we asked, or its holder died: take it.
        token = new_id()
        if await _take_row(db, table, row, token, policy):
            if row.status == FETCHING:
                log.warning("%s: its fetcher stopped renewing its lease; taking over", source.src)
            held = await _fetch_holding(db, storage, source, token, policy, progress, buckets)
            if held is not None:
                return held


async def _read_row(db: Database, key: str) -> Any:
    table = table_of(DataFetch)
    live = (table.c.lease_until > database_epoch(db.dialect)).label("live")
    async with db.autocommit_engine.connect() as conn:
        return (await conn.execute(sa.select(table, live).where(table.c.fetch_key == key))).first()


async def _insert_row(db: Database, source: SourceSpec, token: str, policy: FetchPolicy) -> bool:
    """Create the row holding it; False when another asker created it first."""
    table = table_of(DataFetch)
    now = database_epoch(db.dialect)
    values = {
        "fetch_key": source.fetch_key(),
        "src": source.src,
        "expected": source.expected(),
        "status": FETCHING,
        "holder": token,
        "lease_until": now + policy.lease_seconds,
        "attempts": 1,
        "created_at": now,
        "updated_at": now,
    }
    try:
        async with db.autocommit_engine.connect() as conn:
            await conn.execute(sa.insert(table).values(**values))
    except sa.exc.IntegrityError:
        return False
    return True


async def _take_row(
    db: Database, table: sa.Table, row: Any, token: str, policy: FetchPolicy
) -> bool:
    """Hold a row that is not held (or whose holder's lease ran out) as it was when read.

    `attempts` is the row's version: of two askers taking the same row, one matches it.
    """
    now = database_epoch(db.dialect)
    async with db.autocommit_engine.connect() as conn:
        result = await conn.execute(
            sa.update(table)
            .where(
                table.c.id == row.id,
                table.c.attempts == row.attempts,
                sa.or_(table.c.status != FETCHING, table.c.lease_until <= now),
            )
            .values(
                status=FETCHING,
                holder=token,
                lease_until=now + policy.lease_seconds,
                attempts=table.c.attempts + 1,
                error=None,
                updated_at=now,
            )
        )
    return result.rowcount == 1


async def _update_held(
    db: Database, fetch_key: str, token: str, *, lease_for: float, **values: Any
) -> bool:
    """Set `values` and a lease ending `lease_for` seconds from now (the database's clock;
    zero or less ends it) only while `token` holds the row; True when it did."""
    table = table_of(DataFetch)
    now = database_epoch(db.dialect)
    async with db.autocommit_engine.connect() as conn:
        result = await conn.execute(
            sa.update(table)
            .where(
                table.c.fetch_key == fetch_key,
                table.c.holder == token,
                table.c.status == FETCHING,
            )
            .values(lease_until=now + lease_for, updated_at=now, **values)
        )
    return result.rowcount == 1


async def _from_cache(storage: Storage, source: SourceSpec, row: Any) -> FetchedSource | None:
    """The stored copy under this source's file name (copied within storage when an earlier
    fetch stored the same bytes under another name), or None when it is gone."""
    key = dataset_key(row.sha256, source.file_name)
    if not await storage.exists(key):
        if not await storage.exists(row.storage_key):
            return None
        stored = await storage.write_stream(key, storage.read_stream(row.storage_key))
        if stored.sha256 != row.sha256:
            await storage.delete_prefix(key)
            return None
    return FetchedSource(
        src=source.src, key=key, sha256=row.sha256, md5=row.md5, size=row.size, cached=True
    )


def dataset_key(sha256: str, name: str) -> str:
    """Where a fetched file lies: `datasets/<sha256>/<file name>`, the same on every backend."""
    return f"datasets/{sha256}/{name}"


async def _fetch_holding(
    db: Database,
    storage: Storage,
    source: SourceSpec,
    token: str,
    policy: FetchPolicy,
    progress: Progress | None,
    buckets: BucketResolver | None,
) -> FetchedSource | None:
    """Download while holding the row, renewing the lease; record the outcome for the waiters.

    Returns None when the lease was lost (the caller goes back to waiting on the new holder).
    """
    fetch_key = source.fetch_key()
    work = asyncio.ensure_future(_download_and_store(storage, source, policy, progress, buckets))
    beat = asyncio.create_task(_renew_lease(db, fetch_key, token, policy, work))
    try:
        try:
            fetched = await asyncio.shield(work)
        except asyncio.CancelledError:
            if work.cancelled() and beat.done() and not beat.cancelled() and beat.result():
                log.error("%s: lost the fetch lease to another job; waiting for it", source.src)
                return None
            raise
    except asyncio.CancelledError:
        work.cancel()
        # Leave the row at once to whoever asks next, rather than after the lease runs out.
        await _record(db, fetch_key, token, source, lease_for=-1.0)
        raise
    except Exception as exc:
        reason = exc.reason if isinstance(exc, FetchError) else f"{type(exc).__name__}: {exc}"
        await _record(db, fetch_key, token, source, status=FAILED, error=reason[:8000])
        raise
    finally:
        beat.cancel()
    recorded = await _update_held(
        db,
        fetch_key,
        token,
        status=DONE,
        holder=None,
        storage_key=fetched.key,
        sha256=fetched.sha256,
        md5=fetched.md5,
        size=fetched.size,
        error=None,
        lease_for=0.0,
    )
    if not recorded:
        # Another job took the row over meanwhile; our copy is stored and verified all the same.
        log.warning("%s: fetched, but another job holds its record now", source.src)
    return fetched


async def _record(
    db: Database,
    fetch_key: str,
    token: str,
    source: SourceSpec,
    *,
    lease_for: float = 0.0,
    **values: Any,
) -> None:
    """Record how a held fetch ended, without hiding the reason it ended: if the database
    cannot be told, the lease runs out and the next asker takes the row over."""
    try:
        await asyncio.shield(_update_held(db, fetch_key, token, lease_for=lease_for, **values))
    except Exception as exc:
        log.warning("%s: could not record the end of its fetch: %s", source.src, exc)


async def _renew_lease(
    db: Database, fetch_key: str, token: str, policy: FetchPolicy, work: asyncio.Future[Any]
) -> bool:
    """Extend the lease every third of it; cancel the work and return True when it is lost.

    A failed renewal (the database briefly away) is retried at the next beat; only when no
    renewal succeeded for a whole lease is the lease taken as lost.
    """
    held_until = time.monotonic() + policy.lease_seconds
    while True:
        await asyncio.sleep(policy.lease_seconds / 3)
        try:
            kept = await _update_held(db, fetch_key, token, lease_for=policy.lease_seconds)
        except Exception as exc:
            log.warning("could not renew the fetch lease of %s: %s", fetch_key[:12], exc)
            if time.monotonic() < held_until:
                continue
            kept = False
        if not kept:
            work.cancel()
            return True
        held_until = time.monotonic() + policy.lease_seconds


# ---------------------------------------------------------------------------------------------
# Downloading: stream to a temporary file, hashing as it goes; verify; put into storage


async def _download_and_store(
    storage: Storage,
    source: SourceSpec,
    policy: FetchPolicy,
    progress: Progress | None,
    buckets: BucketResolver | None,
) -> FetchedSource:
    with tempfile.TemporaryDirectory(prefix="weighbridge-fetch-", dir=policy.scratch) as scratch:
        path = Path(scratch) / "data"
        sink = await download_to(path, source, policy, progress=progress, buckets=buckets)
        digests = sink.digests()
        pinned = source.checksums()
        wrong = [(alg, want, digests[alg]) for alg, want in pinned.items() if digests[alg] != want]
        if wrong:
            raise SourceChecksumMismatch(source.src, source.file_name, wrong)
        key = dataset_key(digests["sha256"], source.file_name)
        if not await storage.exists(key):
            stored = await storage.write_file(key, path)
            if stored.sha256 != digests["sha256"]:
                await storage.delete_prefix(key)
                raise FetchError(
                    source.src,
                    f"the temporary copy changed on its way into storage (sha256 "
                    f"{stored.sha256}, downloaded {digests['sha256']}); check the scratch disk",
                )
    log.info("fetched %s (%d bytes, sha256 %s)", source.src, sink.size, digests["sha256"][:12])
    return FetchedSource(
        src=source.src,
        key=key,
        sha256=digests["sha256"],
        md5=digests["md5"],
        size=sink.size,
        cached=False,
    )
