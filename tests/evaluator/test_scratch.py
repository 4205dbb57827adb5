"""Scratch of killed evaluators: an evaluator killed mid-dataset leaves its jobs folder (the
model, the dataset's work folders); the next evaluator to start removes it, and keeps the
folder of one that is alive beside them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

from core.context import Services
from tests.evaluator.factories import (
    events_of,
    make_built_submission,
    make_user,
    store_dataset,
    toy_rows,
    wait_for,
)
from tests.evaluator.models import SLOW, pack_mar, write_folder
from tests.evaluator.test_resume import start_consumer


def folders(shared: Path) -> dict[int, Path]:
    """Each process's jobs folder in the shared root, by its pid."""
    if not shared.is_dir():
        return {}
    return {
        int(p.name.split("-")[0]): p
        for p in shared.iterdir()
        if p.is_dir() and p.name.split("-")[0].isdigit()
    }


def evaluating(folder: Path) -> bool:
    return any(p.name.startswith("eval-") for p in folder.iterdir())


async def test_a_killed_evaluators_scratch_is_removed_by_the_next_to_start(
    services: Services, tmp_path: Path
) -> None:
    dataset = await store_dataset(services, toy_rows(80))
    user = await make_user(services)
    mar = pack_mar(write_folder(tmp_path / "slow", SLOW), tmp_path / "slow.mar")
    sid, _ = await make_built_submission(
        services, user, mar, [dataset], eval_overrides={"batch_size": 2}
    )  # 40 batches of 0.25 s
    scratch = tmp_path / "evaluator-tmp"
    scratch.mkdir()
    shared = scratch / f"weighbridge-jobs-{os.geteuid()}"
    first, second = start_consumer(services, scratch), start_consumer(services, scratch)
    processes: list[subprocess.Popen] = [first, second]
    try:

        async def one_evaluates() -> bool:
            started = any(e.type == "dataset.started" for e in await events_of(services, sid))
            owned = folders(shared)
            return started and any(
                evaluating(owned[p.pid]) for p in (first, second) if p.pid in owned
            )

        await wait_for(one_evaluates, within=60)
        await asyncio.sleep(0.5)
        owned = folders(shared)
        first_busy = first.pid in owned and evaluating(owned[first.pid])
        busy, idle = (first, second) if first_busy else (second, first)
        left = owned[busy.pid]
        os.kill(busy.pid, signal.SIGKILL)
        busy.wait(10)
        assert evaluating(left)  # what the killed one had: nobody removes it but a sweep
        assert (left / ".lock").is_file()

        following = start_consumer(services, scratch)
        processes.append(following)

        async def swept() -> bool:
            return following.pid in folders(shared) and not left.exists()

        await wait_for(swept, within=60)
        now = folders(shared)
        assert set(now) == {idle.pid, following.pid}  # the live ones are kept
        # (the idle one may have made its folder only after the snapshot above)
        assert now[idle.pid].is_dir() and (now[idle.pid] / ".lock").is_file()
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait(10)
