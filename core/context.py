"""The services a process holds (settings, database, storage, queue, tasks), built in one place."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from core.db import Database
from core.migrate import upgrade_database
from core.outbox import Outbox, outbox_for
from core.queue import Queue, queue_from_url
from core.settings import Settings
from core.storage import Storage, storage_from_url
from core.taskconfig import TaskConfig, load_task_configs
from core.tasks import sync_tasks

if TYPE_CHECKING:
    from starlette.requests import HTTPConnection


@dataclass
class Services:
    """Built by `start_services` at process start and passed down; nothing is global."""

    settings: Settings
    db: Database
    storage: Storage
    queue: Queue
    # Where senders stage messages in their transaction (for the database queue, its table).
    outbox: Outbox
    tasks: dict[str, TaskConfig] = field(default_factory=dict)
    # Roles sharing a process prepare datasets one at a time: the second finds them ready
    # (across processes the content-addressed writes make racing harmless, only wasted).
    datasets_lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    async def close(self) -> None:
        await self.queue.close()
        await self.storage.close()
        await self.db.dispose()


def services_of(connection: HTTPConnection) -> Services:
    """The services the ASGI app serving this request was built with (kept on `app.state`)."""
    return connection.app.state.services


async def start_services(
    settings: Settings, *, migrate: bool = True, sync: bool = True
) -> Services:
    """Connect to every backend the settings name; apply migrations and load task configs."""
    settings.home.mkdir(parents=True, exist_ok=True)
    db = Database(settings.database_url)
    try:
        if migrate:
            await upgrade_database(db)
        tasks = load_task_configs(settings.task_configs) if sync else {}
        if sync:
            async with db.session() as session:
                await sync_tasks(session, tasks)
        storage = storage_from_url(
            settings.storage_url,
            endpoint_url=settings.s3_endpoint_url or settings.aws_endpoint_url,
            region=settings.aws_region,
        )
        queue = queue_from_url(
            settings.queue_url,
            database=db,
            endpoint_url=settings.sqs_endpoint_url or settings.aws_endpoint_url,
            region=settings.aws_region,
            lease_seconds=settings.lease_seconds,
            max_attempts=settings.max_attempts,
            backoff_seconds=settings.retry_backoff_seconds,
            poll_seconds=settings.poll_seconds,
        )
    except BaseException:
        await db.dispose()
        raise
    outbox = outbox_for(settings.queue_url, database=db, queue=queue)
    return Services(
        settings=settings, db=db, storage=storage, queue=queue, outbox=outbox, tasks=tasks
    )


def fleets_to_serve(settings: Settings, tasks: dict[str, TaskConfig]) -> list[str]:
    """WEIGHBRIDGE_FLEETS when set, else `default` plus every task's eval_server_id."""
    explicit = settings.fleet_ids()
    if explicit:
        return explicit
    return sorted({"default", *(t.eval.eval_server_id for t in tasks.values())})
