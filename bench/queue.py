"""Throughput of the database queue (DbQueue): send + receive + ack, messages per second.

    .venv/bin/python bench/queue.py [--messages N] [--backends sqlite,postgres,mariadb]

Each backend gets a throwaway database (a temporary SQLite file; a fresh database on the
Postgres / MariaDB server, dropped afterwards), migrated like a real install. One producer
sends in batches (send_many) while 4 consumers, each an asyncio task with its own queue
object and sessions, receive batches of 10 and ack them with ack_many. The clock runs from
the first send to the last ack. Every message must be acked exactly once, or the run fails;
the exit status is 1 when a backend with a target (Postgres: 2,000 msg/s) falls below it.

Servers: WEIGHBRIDGE_BENCH_PG (default postgresql+asyncpg://postgres@127.0.0.1:5432) and
WEIGHBRIDGE_BENCH_MYSQL (default mysql+aiomysql://root@127.0.0.1:3306).
"""

# This file is named like the standard library's `queue`: take its folder off the import path
# (Python put it first) before anything imports `queue`, and put the repository root there.
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import socket  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import AsyncIterator  # noqa: E402
from contextlib import asynccontextmanager  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from urllib.parse import urlparse  # noqa: E402

import sqlalchemy as sa  # noqa: E402
from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402

from core.db import Database  # noqa: E402
from core.envelope import Envelope, Visit  # noqa: E402
from core.migrate import upgrade_database  # noqa: E402
from core.queue import DbQueue  # noqa: E402

PG = os.environ.get("WEIGHBRIDGE_BENCH_PG", "postgresql+asyncpg://postgres@127.0.0.1:5432")
MYSQL = os.environ.get("WEIGHBRIDGE_BENCH_MYSQL", "mysql+aiomysql://root@127.0.0.1:3306")
TARGETS = {"postgres": 2000.0}  # messages per second the distributed default must sustain
QUEUE = "eval.bench"


@dataclass
class Result:
    backend: str
    messages: int
    seconds: float
    note: str = ""

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0


def _reachable(url: str) -> bool:
    parsed = urlparse(url.replace("+asyncpg", "").replace("+aiomysql", ""))
    try:
        with socket.create_connection((parsed.hostname, parsed.port), timeout=1):
            return True
    except OSError:
        return False


async def _admin(url: str, statement: str) -> None:
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text(statement))
    finally:
        await engine.dispose()


@asynccontextmanager
async def throwaway_database(backend: str) -> AsyncIterator[str]:
    """A migrated, empty database for one run; removed afterwards."""
    name = f"wb_bench_{uuid.uuid4().hex[:10]}"
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="wb-bench-") as folder:
            url = f"sqlite+aiosqlite:///{Path(folder) / 'bench.db'}"
            await _migrate(url)
            yield url
        return
    server, admin, quote = {
        "postgres": (PG, f"{PG}/postgres", '"'),
        "mariadb": (MYSQL, f"{MYSQL}/mysql", "`"),
    }[backend]
    if not _reachable(server):
        raise ConnectionError(f"{backend} is not reachable at {server}")
    await _admin(admin, f"CREATE DATABASE {quote}{name}{quote}")
    try:
        url = f"{server}/{name}"
        await _migrate(url)
        yield url
    finally:
        force = " WITH (FORCE)" if backend == "postgres" else ""
        await _admin(admin, f"DROP DATABASE IF EXISTS {quote}{name}{quote}{force}")


async def _migrate(url: str) -> None:
    db = Database(url)
    try:
        await upgrade_database(db)
    finally:
        await db.dispose()


def _messages(n: int) -> list[Envelope]:
    # A realistic, fat-ish envelope (a few hundred bytes), like the eval messages.
    visit = Visit(service="bench")
    return [
        Envelope(
            action_id=uuid.uuid4().hex,
            type="evaluate",
            visited=[visit],
            payload={"submission": {"id": uuid.uuid4().hex, "kind": "model"}, "dataset": "test"},
        )
        for _ in range(n)
    ]


async def run_once(
    url: str, backend: str, *, messages: int, consumers: int, batch: int, send_batch: int
) -> Result:
    db = Database(url)
    try:
        envelopes = _messages(messages)
        producer = DbQueue(db, poll_seconds=0.01)
        acked: list[str] = []
        done = asyncio.Event()

        async def produce() -> None:
            for i in range(0, messages, send_batch):
                await producer.send_many(QUEUE, envelopes[i : i + send_batch])

        async def consume() -> None:
            q = DbQueue(db, poll_seconds=0.01)
            while not done.is_set():
                got = await q.receive([QUEUE], max_messages=batch, wait_seconds=0.05)
                if not got:
                    continue
                count = await q.ack_many(got)
                if count != len(got):
                    raise RuntimeError(f"acked {count} of {len(got)} messages held")
                acked.extend(d.envelope.message_id for d in got)
                if len(acked) >= messages:
                    done.set()

        # Warm the pool so connection set-up is not timed.
        await asyncio.gather(*(producer.depth(QUEUE) for _ in range(consumers + 1)))
        started = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            group.create_task(produce())
            for _ in range(consumers):
                group.create_task(consume())
        seconds = time.perf_counter() - started

        duplicates = [m for m, n in Counter(acked).items() if n > 1]
        if duplicates or set(acked) != {e.message_id for e in envelopes}:
            raise RuntimeError(
                f"{backend}: {len(duplicates)} duplicates, "
                f"{messages - len(set(acked))} missing: the queue is broken"
            )
        if await producer.depth(QUEUE) != 0:
            raise RuntimeError(f"{backend}: the queue is not empty after the run")
        return Result(backend, messages, seconds)
    finally:
        await db.dispose()


def print_table(results: list[Result], *, consumers: int, batch: int) -> None:
    print(
        f"\nDbQueue throughput: send (send_many) + receive (batch {batch}) + ack_many, "
        f"{consumers} concurrent consumers\n"
    )
    header = (
        f"{'backend':<10} {'messages':>9} {'seconds':>8} {'msg/s':>9} {'target':>8} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        if r.note:
            print(f"{r.backend:<10} {'-':>9} {'-':>8} {'-':>9} {'-':>8} {'-':>6}  {r.note}")
            continue
        target = TARGETS.get(r.backend)
        target_s = f"{target:>8,.0f}" if target else f"{'-':>8}"
        ratio_s = f"{r.rate / target:>6.2f}" if target else f"{'-':>6}"
        print(
            f"{r.backend:<10} {r.messages:>9,} {r.seconds:>8.2f} {r.rate:>9,.0f} "
            f"{target_s} {ratio_s}"
        )
    print()


async def main_async(args: argparse.Namespace) -> int:
    results: list[Result] = []
    for backend in args.backends:
        try:
            async with throwaway_database(backend) as url:
                result = await run_once(
                    url,
                    backend,
                    messages=args.messages,
                    consumers=args.consumers,
                    batch=args.batch,
                    send_batch=args.send_batch,
                )
        except (ConnectionError, OSError) as exc:
            result = Result(backend, 0, 0.0, note=f"skipped: {exc}")
        except Exception as exc:  # a broken queue is a result too: report it, go on
            while isinstance(exc, ExceptionGroup):  # a consumer task's error, unwrapped
                exc = exc.exceptions[0]
            first = (str(exc).splitlines() or [""])[0][:160]
            result = Result(backend, 0, 0.0, note=f"FAILED: {type(exc).__name__}: {first}")
        results.append(result)
        print(f"{backend}: {result.note or f'{result.rate:,.0f} msg/s'}", file=sys.stderr)
    print_table(results, consumers=args.consumers, batch=args.batch)
    failed = [r for r in results if r.note.startswith("FAILED")]
    below = [r for r in results if not r.note and r.rate < TARGETS.get(r.backend, 0.0)]
    return 1 if failed or below else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument(
        "--backends",
        type=lambda s: [b.strip() for b in s.split(",") if b.strip()],
        default=["sqlite", "postgres", "mariadb"],
        help="comma-separated: sqlite, postgres, mariadb",
    )
    parser.add_argument("--consumers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=10, help="messages per receive")
    parser.add_argument("--send-batch", type=int, default=100, help="messages per send_many")
    args = parser.parse_args()
    unknown = set(args.backends) - {"sqlite", "postgres", "mariadb"}
    if unknown:
        parser.error(f"unknown backend(s): {', '.join(sorted(unknown))}")
    sys.exit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
