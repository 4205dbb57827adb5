"""Crash and resume: an evaluator killed mid-dataset; another finishes with one set of scores."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil

from core.context import Services
from core.submissions import list_runs, list_scores
from tests.conftest import ROOT
from tests.evaluator.factories import (
    events_of,
    make_built_submission,
    make_user,
    status_of,
    store_dataset,
    toy_rows,
    wait_for,
    wait_terminal,
)
from tests.evaluator.models import SLOW, pack_mar, write_folder
from tests.evaluator.test_worker import PERFORMANCE, evaluator


def command_of(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def start_consumer(services: Services, scratch: Path) -> subprocess.Popen:
    settings = services.settings
    values = {
        "home": str(settings.home),
        "database_url": settings.database_url,
        "task_configs": str(settings.task_configs),
        # A short lease: the message is free for another evaluator 2 s after the kill.
        "lease_seconds": 2.0,
        "retry_backoff_seconds": settings.retry_backoff_seconds,
        "poll_seconds": settings.poll_seconds,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "tests.evaluator.consumer_process", json.dumps(values)],
        cwd=ROOT,
        # A killed evaluator cannot remove its scratch folder: keep it under the test's.
        env={**os.environ, "TMPDIR": str(scratch)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def test_a_killed_evaluator_is_resumed_by_another(services: Services, tmp_path: Path) -> None:
    first = await store_dataset(services, toy_rows(16), name="test")
    second = await store_dataset(services, toy_rows(40), name="second")
    user = await make_user(services)
    folder = write_folder(tmp_path / "slow", SLOW)
    sid, _ = await make_built_submission(
        services,
        user,
        pack_mar(folder, tmp_path / "slow.mar"),
        [first, second],
        eval_overrides={"batch_size": 4},  # `second`: 10 batches of 0.25 s
    )

    scratch = tmp_path / "evaluator-tmp"
    scratch.mkdir()
    process = start_consumer(services, scratch)
    try:

        async def second_running() -> bool:
            events = await events_of(services, sid)
            return any(
                e.type == "dataset.started" and e.envelope["payload"]["dataset"] == "second"
                for e in events
            )

        await wait_for(second_running, within=60)
        await asyncio.sleep(0.8)
        workers = psutil.Process(process.pid).children(recursive=True)
        commands = [" ".join(command_of(w)) for w in workers]
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    # The handler's worker dies with its evaluator (parent-death signal); nothing lingers.
    assert any("handler_host.py" in c for c in commands), commands
    assert any("--zygote" in c for c in commands), commands  # the warm interpreter goes too
    _gone, alive = await asyncio.to_thread(psutil.wait_procs, workers, timeout=10)
    assert not alive
    assert await status_of(services, sid) == "evaluating"
    async with services.db.session() as session:
        runs = {r.name: r for r in await list_runs(session, sid)}
    assert (runs["test"].status, runs["second"].status) == ("done", "running")

    # After the lease runs out, another evaluator takes the message over.
    async with evaluator(services):
        await wait_terminal(services, [sid], within=60)

    assert await status_of(services, sid) == "done"
    async with services.db.session() as session:
        scores = await list_scores(session, sid)
        runs = {r.name: r for r in await list_runs(session, sid)}
    per_dataset = sorted((s.dataset, s.metric) for s in scores)
    expected = sorted(
        (d, m) for d in ("test", "second") for m in ("accuracy", "macro_f1", *PERFORMANCE)
    )
    assert per_dataset == expected  # exactly one set, no duplicates
    assert (runs["test"].attempt, runs["second"].attempt) == (1, 2)
    types = [(e.type, e.envelope["payload"].get("dataset")) for e in await events_of(services, sid)]
    assert types.count(("dataset.started", "second")) == 2
    assert ("dataset.skipped", "test") in types
    assert types.count(("dataset.finished", "test")) == 1
    assert types[-1] == ("receipt", None)
