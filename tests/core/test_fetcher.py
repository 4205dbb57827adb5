"""Data sources fetched once, verified, cached in storage and shared, on every database backend.

The files are served by a local http.server (127.0.0.1, a random port) that counts the
requests it gets and can be told to answer 503, 404, hang, or stall mid-body: what a test
asserts is how many times the server was really asked.
"""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pydantic
import pytest
import sqlalchemy as sa

from core.db import Database
from core.downloads import Sink
from core.fetcher import (
    FetchedSource,
    FetchError,
    FetchPolicy,
    SourceChecksumMismatch,
    SourceSpec,
    fetch_source,
)
from core.models import DataFetch, table_of
from core.queue import database_epoch
from core.storage import LocalStorage
from tests.core.fetch_processes import LOCAL, fetch_in_process

SPAWN = multiprocessing.get_context("spawn")
DATA = os.urandom(300_000)
SHA256 = hashlib.sha256(DATA).hexdigest()
MD5 = hashlib.md5(DATA).hexdigest()
# Quick retries and short timeouts; the behaviour under test is the same as with the defaults.
FAST = FetchPolicy(
    allow_hosts=LOCAL,
    backoff_seconds=0.01,
    max_backoff_seconds=0.05,
    read_timeout=0.5,
    connect_timeout=2.0,
    lease_seconds=2.0,
    poll_seconds=0.02,
    progress_seconds=0.0,
)


class FileServer:
    """Files by path; `faults` are used one per request ("503", "404", "hang", "stall"),
    `delay` holds every answer back (so that concurrent askers overlap)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.redirects: dict[str, str] = {}
        self.requests: Counter[str] = Counter()
        self.faults: list[str] = []
        self.always: str | None = None
        self.delay = 0.0
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def serve(self, path: str, data: bytes = DATA) -> str:
        self.files[path] = data
        return self.url(path)

    def next_fault(self, path: str) -> str | None:
        with self.lock:
            self.requests[path] += 1
            return self.faults.pop(0) if self.faults else self.always


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        server: FileServer = self.server.owner  # type: ignore[attr-defined]
        fault = server.next_fault(self.path)
        if self.path in server.redirects:
            self.send_response(302)
            self.send_header("Location", server.redirects[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if fault == "hang":
            server.release.wait(10)
            return
        if fault == "503":
            self.send_error(503, "Slow Down")
            return
        data = server.files.get(self.path)
        if fault == "404" or data is None:
            self.send_error(404, "Not Found")
            return
        time.sleep(server.delay)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if fault == "stall":
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            server.release.wait(30)
            return
        for start in range(0, len(data), 64 * 1024):
            self.wfile.write(data[start : start + 64 * 1024])

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def server() -> Iterator[FileServer]:
    files = FileServer()
    files.thread.start()
    yield files
    files.release.set()
    files.httpd.shutdown()
    files.httpd.server_close()


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "storage")


async def fetch_row(db: Database, source: SourceSpec) -> sa.Row:
    table = table_of(DataFetch)
    async with db.engine.connect() as conn:
        row = (
            await conn.execute(sa.select(table).where(table.c.fetch_key == source.fetch_key()))
        ).first()
    assert row is not None
    return row


async def wait_until(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)


def dataset_files(storage: LocalStorage) -> list[str]:
    root = storage.root / "datasets"
    return sorted(p.relative_to(storage.root).as_posix() for p in root.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------------------
# Fetched once, verified, cached


async def test_a_source_is_stored_under_its_sha256_with_its_sums_and_progress(
    db: Database, storage: LocalStorage, server: FileServer
) -> None:
    src = server.serve("/data/train.bin")
    seen: list[tuple[int, int | None]] = []

    async def progress(done: int, total: int | None) -> None:
        seen.append((done, total))

    source = SourceSpec(src=src, md5=MD5, sha256=SHA256)
    fetched = await fetch_source(db, storage, source, policy=FAST, progress=progress)

    assert fetched == FetchedSource(
        src=src,
        key=f"datasets/{SHA256}/train.bin",
        sha256=SHA256,
        md5=MD5,
        size=len(DATA),
        cached=False,
    )
    assert await storage.read_bytes(fetched.key) == DATA
    assert seen[-1] == (len(DATA), len(DATA))
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    row = await fetch_row(db, source)
    assert (row.status, row.storage_key, row.size, row.holder) == (
        "done",
        fetched.key,
        len(DATA),
        None,
    )


async def test_a_cached_source_is_not_fetched_again_by_anyone(
    db: Database, storage: LocalStorage, server: FileServer
) -> None:
    src = server.serve("/cached.bin")
    source = SourceSpec(src=src, sha256=SHA256)
    first = await fetch_source(db, storage, source, policy=FAST)
    again = await fetch_source(db, storage, source, policy=FAST)
    other_db = Database(db.url)  # another process's view of the same database
    try:
        elsewhere = await fetch_source(other_db, storage, source, policy=FAST)
    finally:
        await other_db.dispose()
    assert server.requests["/cached.bin"] == 1
    assert (first.cached, again.cached, elsewhere.cached) == (False, True, True)
    assert first.key == again.key == elsewhere.key

    # Another file name for the same bytes is a copy within storage, not a download.
    renamed = await fetch_source(
        db, storage, source.model_copy(update={"name": "b.bin"}), policy=FAST
    )
    assert renamed.key == f"datasets/{SHA256}/b.bin" and renamed.cached
    assert server.requests["/cached.bin"] == 1

    # A cached copy deleted from storage is fetched again (once), not reported as present.
    await storage.delete_prefix("datasets")
    refetched = await fetch_source(db, storage, source, policy=FAST)
    assert not refetched.cached and await storage.read_bytes(refetched.key) == DATA
    assert server.requests["/cached.bin"] == 2


@pytest.mark.parametrize("pin", ["md5", "sha256", "anubis-prefixed"])
async def test_a_checksum_mismatch_fails_naming_the_file_and_both_sums(
    db: Database, storage: LocalStorage, server: FileServer, pin: str
) -> None:
    src = server.serve("/imagenet/val.tar")
    if pin == "md5":
        alg, wrong, got = "md5", "0" * 32, MD5
        source = SourceSpec(src=src, md5=wrong)
    elif pin == "sha256":
        alg, wrong, got = "sha256", "f" * 64, SHA256
        source = SourceSpec(src=src, sha256=wrong)
    else:
        alg, wrong, got = "sha256", "a" * 64, SHA256
        source = SourceSpec(src=src, md5=f"sha256:{wrong}")

    with pytest.raises(SourceChecksumMismatch) as err:
        await fetch_source(db, storage, source, policy=FAST)
    message = str(err.value)
    assert src in message and "val.tar" in message
    assert f"{alg} expected {wrong}, got {got}" in message
    assert err.value.mismatches == [(alg, wrong, got)]
    assert not (storage.root / "datasets").exists() or dataset_files(storage) == []
    row = await fetch_row(db, source)
    assert row.status == "failed" and wrong in row.error

    # A later ask tries again (the server may have been fixed); it still fails the same way.
    with pytest.raises(SourceChecksumMismatch):
        await fetch_source(db, storage, source, policy=FAST)
    assert server.requests["/imagenet/val.tar"] == 2


# ---------------------------------------------------------------------------------------------
# Two askers at once download once


async def test_two_concurrent_fetches_in_one_process_make_one_request(
    db: Database, storage: LocalStorage, server: FileServer
) -> None:
    server.delay = 0.3
    source = SourceSpec(src=server.serve("/shared.bin"), md5=MD5)
    results = await asyncio.gather(
        *(fetch_source(db, storage, source, policy=FAST) for _ in range(3))
    )
    assert server.requests["/shared.bin"] == 1
    assert {r.key for r in results} == {f"datasets/{SHA256}/shared.bin"}
    assert sorted(r.cached for r in results) == [False, True, True]


async def test_two_databases_fetching_at_once_make_one_request(
    db: Database, storage: LocalStorage, server: FileServer
) -> None:
    server.delay = 0.3
    source = SourceSpec(src=server.serve("/two-dbs.bin"), sha256=SHA256)
    other = Database(db.url)
    try:
        first, second = await asyncio.gather(
            fetch_source(db, storage, source, policy=FAST),
            fetch_source(other, storage, source, policy=FAST),
        )
    finally:
        await other.dispose()
    assert server.requests["/two-dbs.bin"] == 1
    assert first.key == second.key and {first.cached, second.cached} == {False, True}


async def test_waiters_share_the_holders_failure_without_asking_again(
    db: Database, storage: LocalStorage, server: FileServer
) -> None:
    server.delay = 0.3
    source = SourceSpec(src=server.serve("/bad.bin"), md5="1" * 32)
    other = Database(db.url)
    try:
        outcomes = await asyncio.gather(
            fetch_source(db, storage, source, policy=FAST),
            fetch_source(other, storage, source, policy=FAST),
            return_exceptions=True,
        )
    finally:
        await other.dispose()
    assert server.requests["/bad.bin"] == 1
    assert all(isinstance(o, FetchError) for o in outcomes), outcomes
    assert any("the job that was fetching it failed" in str(o) and MD5 in str(o) for o in outcomes)


async def test_the_holders_lease_is_renewed_while_a_long_download_runs(
    db: Database, storage: LocalStorage, server: FileServer
) -> None:
    # The download takes three leases; the waiter must not think the holder dead.
    server.delay = 1.8
    policy = FetchPolicy(
        allow_hosts=LOCAL,
        lease_seconds=0.6,
        poll_seconds=0.02,
        read_timeout=5.0,
        backoff_seconds=0.01,
    )
    source = SourceSpec(src=server.serve("/long.bin"))
    first = asyncio.create_task(fetch_source(db, storage, source, policy=policy))
    await wait_until(lambda: server.requests["/long.bin"] > 0)
    second = await fetch_source(db, storage, source, policy=policy)
    assert (await first).key == second.key
    assert server.requests["/long.bin"] == 1
    assert (await fetch_row(db, source)).attempts == 1


async def test_a_dead_holders_lease_is_taken_over(
    db: Database, storage: LocalStorage, server: FileServer
) -> None:
    """A process holding the fetch is killed mid-body (SIGKILL: no clean-up of any kind);
    the next asker waits for its lease to run out, then downloads the file itself."""
    server.faults = ["stall"]
    source = SourceSpec(src=server.serve("/killed.bin"))
    child = SPAWN.Process(
        target=fetch_in_process, args=(db.url, str(storage.root), source.src, 1.0)
    )
    child.start()
    try:
        await wait_until(lambda: server.requests["/killed.bin"] > 0 or not child.is_alive(), 60)
        assert child.is_alive(), "the child stopped before fetching"
        assert (await fetch_row(db, source)).status == "fetching"
    finally:
        os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
        child.join(10)

    policy = FetchPolicy(
        allow_hosts=LOCAL, lease_seconds=1.0, poll_seconds=0.05, backoff_seconds=0.01
    )
    fetched = await fetch_source(db, storage, source, policy=policy)
    assert await storage.read_bytes(fetched.key) == DATA and not fetched.cached
    assert server.requests["/killed.bin"] == 2
    row = await fetch_row(db, source)
    assert (row.status, row.attempts) == ("done", 2)


async def test_a_cancelled_fetch_hands_the_source_on_at_once(
    db: Database, storage: LocalStorage, server: FileServer
) -> None:
    server.delay = 1.0
    policy = FetchPolicy(
        allow_hosts=LOCAL, lease_seconds=60.0, poll_seconds=0.02, backoff_seconds=0.01
    )
    source = SourceSpec(src=server.serve("/cancelled.bin"))
    job = asyncio.create_task(fetch_source(db, storage, source, policy=policy))
    await wait_until(lambda: server.requests["/cancelled.bin"] > 0)
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    # Not after the 60 s lease: the cancelled holder ended it on its way out.
    fetched = await asyncio.wait_for(fetch_source(db, storage, source, policy=policy), 10)
    assert await storage.read_bytes(fetched.key) == DATA
    assert server.requests["/cancelled.bin"] == 2


async def test_a_holder_that_lost_its_lease_stops_and_waits_for_the_new_holder(
    db: Database, storage: LocalStorage, server: FileServer
) -> None:
    server.delay = 1.0
    policy = FetchPolicy(allow_hosts=LOCAL, lease_seconds=0.6, poll_seconds=0.02, read_timeout=5.0)
    source = SourceSpec(src=server.serve("/stolen.bin"))
    job = asyncio.create_task(fetch_source(db, storage, source, policy=policy))
    await wait_until(lambda: server.requests["/stolen.bin"] > 0)
    # Another job takes the row over, as it would had our renewals failed for a whole lease.
    table = table_of(DataFetch)
    async with db.engine.begin() as conn:
        await conn.execute(
            sa.update(table)
            .where(table.c.fetch_key == source.fetch_key())
            .values(
                holder="thief",
                attempts=table.c.attempts + 1,
                lease_until=database_epoch(db.dialect) + 1.5,
            )
        )
    fetched = await asyncio.wait_for(job, 20)
    # The first download was abandoned; the thief never finished, so after its lease ran out
    # the original asker took the row back and fetched the file again.
    assert await storage.read_bytes(fetched.key) == DATA
    assert server.requests["/stolen.bin"] == 2
    row = await fetch_row(db, source)
    assert (row.status, row.attempts) == ("done", 3)


# ---------------------------------------------------------------------------------------------
# Retries: 5xx and timeouts only


async def test_a_5xx_is_retried_then_succeeds(
    db: Database, storage: LocalStorage, server: FileServer
) -> None:
    server.faults = ["503", "503"]
    fetched = await fetch_source(
        db, storage, SourceSpec(src=server.serve("/flaky.bin")), policy=FAST
    )
    assert await storage.read_bytes(fetched.key) == DATA
    assert server.requests["/flaky.bin"] == 3


async def test_a_5xx_that_lasts_fails_after_five_attempts(
    db: Database, storage: LocalStorage, server: FileServer
) -> None:
    server.always = "503"
    src = server.serve("/down.bin")
    with pytest.raises(FetchError, match=r"after 5 attempts.*503") as err:
        await fetch_source(db, storage, SourceSpec(src=src), policy=FAST)
    assert src in str(err.value)
    assert server.requests["/down.bin"] == 5


async def test_a_404_is_not_retried(
    db: Database, storage: LocalStorage, server: FileServer
) -> None:
    src = server.url("/missing.bin")
    with pytest.raises(FetchError, match="404") as err:
        await fetch_source(db, storage, SourceSpec(src=src), policy=FAST)
    assert src in str(err.value) and "not retried" in str(err.value)
    assert server.requests["/missing.bin"] == 1


async def test_a_timeout_is_retried(
    db: Database, storage: LocalStorage, server: FileServer
) -> None:
    server.faults = ["hang"]
    fetched = await fetch_source(
        db, storage, SourceSpec(src=server.serve("/slow.bin")), policy=FAST
    )
    assert await storage.read_bytes(fetched.key) == DATA
    assert server.requests["/slow.bin"] == 2


async def test_a_file_over_the_size_limit_is_refused_and_not_kept(
    db: Database, storage: LocalStorage, server: FileServer
) -> None:
    policy = FetchPolicy(allow_hosts=LOCAL, max_bytes=1000, poll_seconds=0.02)
    with pytest.raises(FetchError, match="larger than the limit of 1000 bytes"):
        await fetch_source(db, storage, SourceSpec(src=server.serve("/big.bin")), policy=policy)
    assert server.requests["/big.bin"] == 1
    assert not (storage.root / "datasets").exists() or dataset_files(storage) == []


# ---------------------------------------------------------------------------------------------
# file:// and s3://


async def test_file_sources_are_read_only_under_the_allowed_folders(
    db: Database, storage: LocalStorage, tmp_path: Path
) -> None:
    allowed = tmp_path / "shared-data"
    allowed.mkdir()
    (allowed / "local.bin").write_bytes(DATA)
    policy = FetchPolicy(allow_hosts=LOCAL, file_roots=(allowed,), poll_seconds=0.02)

    fetched = await fetch_source(
        db, storage, SourceSpec(src=f"file://{allowed}/local.bin", sha256=SHA256), policy=policy
    )
    assert fetched.key == f"datasets/{SHA256}/local.bin"
    assert await storage.read_bytes(fetched.key) == DATA

    secret = tmp_path / "secret.txt"
    secret.write_text("hidden labels")
    for src in (f"file://{secret}", f"file://{allowed}/../secret.txt"):
        with pytest.raises(FetchError, match="may only read under the allowed folders"):
            await fetch_source(db, storage, SourceSpec(src=src), policy=policy)
    (allowed / "link.txt").symlink_to(secret)
    with pytest.raises(FetchError, match="may only read under the allowed folders"):
        await fetch_source(db, storage, SourceSpec(src=f"file://{allowed}/link.txt"), policy=policy)
    with pytest.raises(FetchError, match=r"may only read under.*none in this deployment"):
        await fetch_source(db, storage, SourceSpec(src=f"file://{allowed}/local.bin", md5=MD5))
    with pytest.raises(FetchError, match=r"cannot read .*gone\.bin"):
        await fetch_source(db, storage, SourceSpec(src=f"file://{allowed}/gone.bin"), policy=policy)


async def test_s3_sources_read_through_a_storage_for_the_bucket_or_say_why_not(
    db: Database, storage: LocalStorage, tmp_path: Path
) -> None:
    source = SourceSpec(src="s3://benchmarks/cifar/train.bin", md5=MD5)
    with pytest.raises(FetchError, match="s3:// sources are not available in this deployment"):
        await fetch_source(db, storage, source, policy=FAST)

    # A folder stands in for the bucket: the fetcher reads it through the Storage protocol,
    # as it would read an S3 storage object for that bucket.
    bucket = LocalStorage(tmp_path / "bucket")
    await bucket.write_bytes("cifar/train.bin", DATA)
    asked: list[str] = []

    def buckets(name: str) -> LocalStorage | None:
        asked.append(name)
        return bucket if name == "benchmarks" else None

    fetched = await fetch_source(db, storage, source, policy=FAST, buckets=buckets)
    assert asked == ["benchmarks"]
    assert fetched.key == f"datasets/{SHA256}/train.bin"
    assert await storage.read_bytes(fetched.key) == DATA

    with pytest.raises(FetchError, match="no such object"):
        await fetch_source(
            db, storage, SourceSpec(src="s3://benchmarks/nope.bin"), policy=FAST, buckets=buckets
        )


# ---------------------------------------------------------------------------------------------
# The source as the descriptor gives it


def test_a_source_is_refused_with_the_field_and_what_is_allowed() -> None:
    cases = {
        "ftp://host/file": "scheme 'ftp' is not supported",
        "https://host/": "names no file",
    }
    for src, expected in cases.items():
        with pytest.raises(pydantic.ValidationError, match=expected):
            SourceSpec(src=src)
    with pytest.raises(pydantic.ValidationError, match="md5 'xyz' is not a checksum"):
        SourceSpec(src="https://h/f", md5="xyz")
    with pytest.raises(pydantic.ValidationError, match="algorithm 'crc32' is not supported"):
        SourceSpec(src="https://h/f", md5="crc32:abcd1234")
    with pytest.raises(pydantic.ValidationError, match="a sha256 digest has 64 hex digits"):
        SourceSpec(src="https://h/f", md5="sha256:abcd")
    with pytest.raises(pydantic.ValidationError, match="sha256 'ab' is not 64 hex digits"):
        SourceSpec(src="https://h/f", sha256="ab")
    with pytest.raises(pydantic.ValidationError, match="give one value"):
        SourceSpec(src="https://h/f", md5=f"sha256:{'a' * 64}", sha256="b" * 64)
    with pytest.raises(pydantic.ValidationError, match="cannot be a file name"):
        SourceSpec(src="https://h/f", name="../escape")


def test_a_source_names_its_file_and_its_identity() -> None:
    plain = SourceSpec(src="https://h/some%20dir/train%201.tar?token=x", md5="")
    assert plain.file_name == "train 1.tar" and plain.checksums() == {}
    pinned = SourceSpec(src="https://h/f.bin", md5=MD5.upper(), sha256=SHA256.upper())
    assert pinned.expected() == f"md5:{MD5},sha256:{SHA256}"
    # The same file pinned differently is another fetch; the same pins in other case are not.
    assert pinned.fetch_key() != SourceSpec(src="https://h/f.bin").fetch_key()
    assert (
        pinned.fetch_key() == SourceSpec(src="https://h/f.bin", md5=MD5, sha256=SHA256).fetch_key()
    )


async def test_progress_is_reported_at_most_once_per_interval_and_at_the_end(
    tmp_path: Path,
) -> None:
    calls: list[tuple[int, int | None]] = []
    policy = FetchPolicy(allow_hosts=LOCAL, progress_seconds=3600.0)
    sink = Sink(
        tmp_path / "f", SourceSpec(src="https://h/f"), policy, lambda d, t: calls.append((d, t))
    )
    await sink.reset(30)
    for _ in range(3):
        await sink.write(b"x" * 10)
    await sink.report(final=True)
    sink.close()
    # The first write reports (nothing was reported yet); the next two fall in its interval.
    assert calls == [(10, 30), (30, 30)]


async def test_a_source_on_a_non_public_address_is_refused_unless_allowed(
    db: Database, storage: LocalStorage, server: FileServer
) -> None:
    """A descriptor is user input: it must not make the service fetch from its own network
    (a database, the cloud's metadata service) and hand the answer to the job."""
    source = SourceSpec(src=server.serve("/data.bin"), sha256=SHA256)
    public_only = FetchPolicy(backoff_seconds=0.01, poll_seconds=0.02)
    with pytest.raises(FetchError) as refused:
        await fetch_source(db, storage, source, policy=public_only)
    assert "127.0.0.1, a non-public address" in str(refused.value)
    assert "WEIGHBRIDGE_DATA_ALLOW_HOSTS" in str(refused.value)
    assert server.requests["/data.bin"] == 0  # refused before any request was sent
    fetched = await fetch_source(db, storage, source, policy=FAST)  # the operator allows it
    assert fetched.sha256 == SHA256


async def test_a_redirect_to_a_non_public_address_is_refused(
    db: Database, storage: LocalStorage, server: FileServer
) -> None:
    """Allowed by name, `localhost` redirects to 127.0.0.1 by address, which is not."""
    server.redirects["/hop"] = server.serve("/data.bin")
    source = SourceSpec(src=server.url("/hop").replace("127.0.0.1", "localhost"))
    policy = FetchPolicy(allow_hosts=("localhost",), backoff_seconds=0.01, poll_seconds=0.02)
    with pytest.raises(FetchError) as refused:
        await fetch_source(db, storage, source, policy=policy)
    assert "non-public address" in str(refused.value)
    assert server.requests["/hop"] == 1 and server.requests["/data.bin"] == 0
