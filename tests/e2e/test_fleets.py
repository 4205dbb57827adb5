"""Two evaluator fleets side by side: `serve api`, `serve builder` and one `serve evaluator
--fleet ID` per fleet, each its own process on one database. A submission is evaluated only by
the evaluator of its task's `eval_server_id`, never by the other (not even while its own
fleet's evaluator is not running yet): the evaluating events and the receipt name the fleet and
the process (host, pid) that did the work."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from tests.cli.conftest import free_port
from tests.e2e.stack import (
    create_token,
    query,
    stack_env,
    start,
    stop,
    submission,
    tail,
    upload,
    wait_healthy,
    wait_settled,
    write_task,
)

pytestmark = pytest.mark.slow

NORTH, SOUTH = "toy-fleet", "south-fleet"
FLEETS = {"toy": NORTH, "toy-south": SOUTH}
PER_TASK = 3


def test_each_fleet_evaluates_only_its_own_tasks(tmp_path: Path, stack_database: str) -> None:
    fleets(tmp_path, stack_database)


def test_each_fleet_receives_only_its_own_sqs_queue(
    tmp_path: Path, aws_stack: dict[str, str]
) -> None:
    """The same two fleets with the queues on SQS and the storage on S3 (moto's server over
    HTTP), on SQLite: each evaluator process long-polls only its fleet's SQS queue, so no
    message ever goes to the other fleet."""
    fleets(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'home' / 'weighbridge.db'}", **aws_stack)


def fleets(tmp_path: Path, stack_database: str, **extra: str) -> None:
    configs = tmp_path / "task_configs"
    for slug, fleet in FLEETS.items():
        write_task(configs, slug, fleet=fleet)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = stack_env(tmp_path, configs, url, WEIGHBRIDGE_DATABASE_URL=stack_database, **extra)
    logs = {name: tmp_path / f"{name}.log" for name in ("api", "builder", *FLEETS.values())}
    processes = {}
    try:
        # The API first: it migrates the database the others then share.
        processes["api"] = start(["serve", "api", "--port", str(port)], env, logs["api"])
        wait_healthy(url, processes["api"], logs["api"])
        processes["builder"] = start(["serve", "builder"], env, logs["builder"])
        # The south fleet's evaluator starts late: until then its submissions wait, built,
        # however idle the other fleet's evaluator is.
        processes[NORTH] = start(["serve", "evaluator", "--fleet", NORTH], env, logs[NORTH])
        token = create_token(env, tmp_path, "fleets")
        task_of = {
            upload(url, token, task=slug, name=f"{slug}-{i}"): slug
            for i in range(PER_TASK)
            for slug in FLEETS
        }
        north = [sid for sid, slug in task_of.items() if FLEETS[slug] == NORTH]
        south = [sid for sid in task_of if sid not in north]
        watch = [(processes[name], logs[name]) for name in processes]
        wait_settled(url, token, north, timeout=120, watch=watch)
        deadline = time.monotonic() + 30
        while {submission(url, token, sid)["status"] for sid in south} != {"built"}:
            assert time.monotonic() < deadline, "the south submissions were not built"
            time.sleep(0.2)
        time.sleep(2)  # twenty polls of the idle north evaluator
        assert {submission(url, token, sid)["status"] for sid in south} == {"built"}

        processes[SOUTH] = start(["serve", "evaluator", "--fleet", SOUTH], env, logs[SOUTH])
        watch.append((processes[SOUTH], logs[SOUTH]))
        states = wait_settled(url, token, list(task_of), timeout=120, watch=watch)
        pids = {fleet: processes[fleet].pid for fleet in FLEETS.values()}
    finally:
        for process in processes.values():
            stop(process)

    for sid, state in states.items():
        assert state["status"] == "done", (sid, state["error"], tail(logs[FLEETS[task_of[sid]]]))
    evaluated: dict[str, list[dict]] = {sid: [] for sid in task_of}
    receipts: dict[str, dict] = {}
    for sid, kind, envelope in query(
        stack_database,
        "SELECT submission_id, type, envelope FROM events "
        "WHERE type IN ('status.evaluating', 'receipt') ORDER BY id",
    ):
        # A JSON column reads back as text on SQLite and MariaDB, as a document on Postgres.
        payload = (json.loads(envelope) if isinstance(envelope, str) else envelope)["payload"]
        if kind == "receipt":
            receipts[sid] = payload["evaluator"]
        else:
            evaluated[sid].append(payload["evaluator"])
    host = socket.gethostname()
    for sid, slug in task_of.items():
        fleet = FLEETS[slug]
        mine = {"fleet": fleet, "host": host, "pid": pids[fleet]}
        # Every delivery (a first one, and any after a retry) went to the task's fleet.
        assert evaluated[sid] and all(e == mine for e in evaluated[sid]), (slug, evaluated[sid])
        assert receipts[sid] == mine, (slug, receipts[sid])
    # Each evaluator received only its own queue (and its dead letters).
    for slug, fleet in FLEETS.items():
        other = next(f for f in FLEETS.values() if f != fleet)
        logged = logs[fleet].read_text(errors="replace")
        assert f"eval-{fleet}" in logged and f"eval-{other}" not in logged, logged[-3000:]
        assert sum(1 for s in task_of.values() if s == slug) == PER_TASK
