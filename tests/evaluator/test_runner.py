"""The local runner on one dataset: several handler workers side by side (the task's
`eval.max_concurrent_transforms`), their answers in order, their logs kept, their failures."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import psutil
import pytest

from core.errors import JobFailed
from core.storage import LocalStorage
from core.taskconfig import TaskConfig
from evaluator.runner import DatasetRun, DatasetSpec, ModelSpec, run_dataset
from tests.evaluator.factories import toy_rows
from tests.evaluator.models import BROKEN, write_folder

# Each worker says who it is (every sandboxed worker is the same pid in a namespace of its
# own, so a name drawn at start and its uid); a short sleep per batch lets every worker take
# batches.
PID_HANDLER = """
import os
import time

NAME = os.urandom(6).hex()


def initialize(context):
    print(f"worker {NAME} uid {os.getuid()}", flush=True)


def handle(data, context):
    if data is None:  # TorchServe's load-time call: it never calls initialize itself
        initialize(context)
        return None
    time.sleep(0.02)
    if any(item["body"]["x"] > FAIL_ABOVE for item in data):
        raise ValueError("x is too large for this model")
    return [{"label": item["body"]["x"] % 2, "pid": NAME} for item in data]
"""


def toy_task(
    *,
    batch_size: int,
    workers: int,
    timeout: float = 20,
    memory_mb: int = 300,
    hidden_output: bool = True,
) -> TaskConfig:
    """A task with one hidden dataset; these tests read what the handler printed, so the
    task shows it (`[logs] hidden_output`) unless a test says otherwise."""
    return TaskConfig.model_validate(
        {
            "slug": "toy",
            "name": "Toy",
            "input_fields": ["x"],
            "output_fields": {"label": "int"},
            "datasets": [{"name": "test", "source": "generator:toy"}],
            "metrics": [{"name": "accuracy"}],
            "eval": {
                "batch_size": batch_size,
                "max_concurrent_transforms": workers,
                "timeout_seconds": timeout,
                "memory_mb": memory_mb,
            },
            "logs": {"hidden_output": hidden_output},
        }
    )


async def run_toy(
    tmp_path: Path,
    rows: list[dict[str, Any]],
    *,
    batch_size: int,
    workers: int,
    fail_above: int = 10**9,
    source: str = PID_HANDLER,
    time_limit: float = 20,
    memory_mb: int = 300,
    hidden_output: bool = True,
) -> tuple[DatasetRun, LocalStorage]:
    storage = LocalStorage(tmp_path / "storage")
    data = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    sha = hashlib.sha256(data).hexdigest()
    key = f"datasets/{sha}/test.jsonl"
    await storage.write_bytes(key, data)
    folder = write_folder(tmp_path / "model", source, FAIL_ABOVE=fail_above, PORT=9, LABELS="")
    run = await run_dataset(
        storage,
        submission_id="s1",
        task=toy_task(
            batch_size=batch_size,
            workers=workers,
            timeout=time_limit,
            memory_mb=memory_mb,
            hidden_output=hidden_output,
        ),
        dataset=DatasetSpec(name="test", key=key, sha256=sha),
        model=ModelSpec(model_dir=folder, handler="handler.py", manifest={}),
        scratch=tmp_path / "scratch",
    )
    return run, storage


async def test_concurrent_workers_answer_every_batch_in_order(tmp_path: Path) -> None:
    rows = toy_rows(200)
    run, storage = await run_toy(tmp_path, rows, batch_size=8, workers=3, fail_above=10**9)

    assert run.uids == [r["uid"] for r in rows]
    assert [a["label"] for a in run.answers] == [r["x"] % 2 for r in rows]
    # Every batch went to one worker, and the work was shared.
    pids = [a["pid"] for a in run.answers]
    assert all(len(set(pids[i : i + 8])) == 1 for i in range(0, len(pids), 8))
    assert len(set(pids)) == 3
    assert run.worker["workers"] == 3
    assert run.performance["examples_per_second"] > 0

    stored = [
        json.loads(line)
        for line in (await storage.read_bytes(run.keys["predictions"])).splitlines()
    ]
    assert [p["uid"] for p in stored] == run.uids
    log = (await storage.read_bytes(run.keys["log"])).decode()
    for i in (1, 2, 3):
        assert f"handler worker {i} of 3" in log
    assert set(re.findall(r"worker ([0-9a-f]{12}) uid", log)) == set(pids)


async def test_no_more_workers_than_batches(tmp_path: Path) -> None:
    run, _ = await run_toy(tmp_path, toy_rows(10), batch_size=8, workers=4, fail_above=10**9)
    assert run.worker["workers"] == 2
    assert len({a["pid"] for a in run.answers}) == 2


async def test_one_failing_worker_stops_the_others_and_names_its_batch(tmp_path: Path) -> None:
    rows = toy_rows(200)
    # x > 990 first appears at example 28 (uid t-027): batch 4 of 25 of 8 examples each.
    first = next(i for i, r in enumerate(rows) if r["x"] > 990)
    with pytest.raises(JobFailed) as caught:
        await run_toy(tmp_path, rows, batch_size=8, workers=2, fail_above=990)

    failure = caught.value
    assert failure.stage == "evaluate:test"
    assert f"batch {first // 8 + 1} of 25" in failure.reason
    assert "x is too large for this model" in failure.reason
    log = (tmp_path / "storage" / "submissions/s1/results/test/log").read_text()
    assert "handler worker 1 of 2" in log and "handler worker 2 of 2" in log
    assert "ValueError: x is too large" in log
    # Both workers are gone, the one that did nothing wrong included: nothing runs as
    # their users any more.
    uids = {int(u) for u in re.findall(r"worker [0-9a-f]{12} uid (\d+)", log)}
    assert len(uids) == 2 and 0 not in uids
    left = [p for p in psutil.process_iter(["uids"]) if p.info["uids"].real in uids]
    assert not left


@pytest.mark.parametrize("name", ["import_error", "hangs", "memory_hog", "wrong_count", "exits"])
async def test_a_broken_handler_fails_the_same_way_with_workers_side_by_side(
    tmp_path: Path, name: str
) -> None:
    source, words = BROKEN[name]
    with pytest.raises(JobFailed) as caught:
        await run_toy(
            tmp_path,
            toy_rows(40),
            batch_size=16,
            workers=2,
            source=source,
            time_limit=1.5,
            memory_mb=200,
        )
    for word in words:
        assert word in caught.value.reason, caught.value.reason
    assert caught.value.log_tail


ECHO_HANDLER = """
import sys


def initialize(context):
    pass


def handle(data, context):
    if data is None:
        return None
    for item in data:
        print("stolen input", item["body"]["x"], file=sys.stderr)
    if any(item["body"]["x"] > FAIL_ABOVE for item in data):
        raise ValueError("inputs were " + " ".join(str(i["body"]["x"]) * 40 for i in data))
    return [{"label": item["body"]["x"] % 2} for item in data]
"""


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_handler_cannot_echo_hidden_examples_into_its_owners_log(
    tmp_path: Path, workers: int
) -> None:
    """On a hidden dataset the handler's own output is kept for the organisers, not put in
    the log its owner reads, and a failure's reason (which quotes the handler) is cut short:
    printing the hidden examples, or raising with them, does not hand them to the owner."""
    rows = toy_rows(40)
    run, storage = await run_toy(
        tmp_path, rows, batch_size=8, workers=workers, source=ECHO_HANDLER, hidden_output=False
    )
    log = (await storage.read_bytes(run.keys["log"])).decode()
    assert "stolen input" not in log
    assert "kept for the task's organisers" in log
    kept = (await storage.read_bytes("submissions/s1/results/test/handler-output.log")).decode()
    assert kept.count("stolen input") == len(rows)

    with pytest.raises(JobFailed) as caught:
        await run_toy(
            tmp_path / "again",
            rows,
            batch_size=8,
            workers=workers,
            source=ECHO_HANDLER,
            fail_above=0,
            hidden_output=False,
        )
    failure = caught.value
    assert len(failure.reason) < 400 and "[cut:" in failure.reason
    assert "stolen input" not in (failure.log_tail or "")
    stored = (tmp_path / "again/storage/submissions/s1/results/test/log").read_text()
    assert "stolen input" not in stored


async def test_a_task_may_show_the_handlers_output_on_hidden_datasets(tmp_path: Path) -> None:
    run, storage = await run_toy(
        tmp_path, toy_rows(8), batch_size=8, workers=1, source=ECHO_HANDLER, hidden_output=True
    )
    log = (await storage.read_bytes(run.keys["log"])).decode()
    assert log.count("stolen input") == 8
    assert not await storage.exists("submissions/s1/results/test/handler-output.log")
