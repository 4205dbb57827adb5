"""`weighbridge serve scheduler` runs the scheduler: a schedule that fell due while nothing ran
gets its latest tick submitted (the earlier ones reported), and the process stops cleanly."""

from __future__ import annotations

import asyncio
import signal
import time
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlmodel import col

from core.context import start_services
from core.models import Event, Submission, utcnow
from tests.cli.conftest import WEIGHBRIDGE, clean_env
from tests.conftest import make_settings
from tests.scheduler.conftest import make_owner, make_schedule


async def test_serve_scheduler_submits_the_due_tick(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'home' / 'weighbridge.db'}"
    settings = make_settings(tmp_path, url)
    services = await start_services(settings)
    try:
        owner = await make_owner(services)
        # Made three and a half minutes ago; no scheduler ran since.
        parent = await make_schedule(
            services, owner, "* * * * *", created_at=utcnow() - timedelta(minutes=3, seconds=30)
        )
        env = clean_env(
            tmp_path,
            WEIGHBRIDGE_HOME=str(settings.home),
            WEIGHBRIDGE_DATABASE_URL=url,
            WEIGHBRIDGE_STORAGE_URL=settings.storage_url,
        )
        process = await asyncio.create_subprocess_exec(
            WEIGHBRIDGE,
            "serve",
            "scheduler",
            env=env,
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        children: list[Submission] = []
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not children:
                await asyncio.sleep(0.2)
                async with services.db.session() as session:
                    children = list(
                        await session.scalars(
                            sa.select(Submission).where(col(Submission.parent_id) == parent.id)
                        )
                    )
        finally:
            process.send_signal(signal.SIGINT)
            stdout, _ = await asyncio.wait_for(process.communicate(), timeout=40)
        output = stdout.decode(errors="replace")
        assert process.returncode == 0, output
        assert len(children) == 1, output
        async with services.db.session() as session:
            missed = list(
                await session.scalars(
                    sa.select(Event).where(
                        col(Event.submission_id) == parent.id,
                        col(Event.type) == "benchmark.ticks_missed",
                    )
                )
            )
        # 3 or 4 ticks fell due (depending on the second it started): the newest ran.
        assert len(missed) == 1 and missed[0].envelope["payload"]["missed"] in (2, 3)
    finally:
        await services.close()
