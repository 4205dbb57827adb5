"""Benchmarks and inspections through the evaluator: a built submission's benchmark message on
the fleet's queue, consumed as the worker consumes it, each run in the real sandbox.

The message's inputs are made here as the builder makes them: the descriptor TOML and a
scripts tar in storage, data files under datasets/<sha256>/, keys and sums in the message.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import socket
import sys
import tarfile
import textwrap
from functools import partial
from typing import Any

import pytest
import sqlalchemy as sa

from core.context import Services
from core.envelope import Envelope, Visit
from core.messages import BenchmarkMessage, payload_of
from core.models import Notification, Run, Score, Submission, User, new_id
from core.queue import eval_queue
from core.states import Status
from core.submissions import cancel_submission
from core.worker import Consumer
from evaluator.benchmark_job import data_path, expand_references
from evaluator.benchmark_run import RUSAGE_FIELDS, extract_metrics
from evaluator.worker import handle_evaluate
from tests.evaluator.factories import (
    FLEET,
    events_of,
    get_submission,
    make_user,
    status_of,
    wait_for,
)

QUEUE = eval_queue(FLEET)


def descriptor(
    *,
    code: str,
    args: str = "",
    count: int = 1,
    timeout: int = 60,
    metrics: list[tuple[str, str, str]] | None = None,
    env: dict[str, str] | None = None,
    sources: list[tuple[str, str]] | None = None,
) -> str:
    """An Anubis-style descriptor (REFERENCES.md's fields) with our [run] table."""
    lines = [
        'spec_version = "0.1.0"',
        "[info]",
        'description = "a benchmark in a test"',
        "[info.labels]",
        'task_name = "test-bench"',
        "[hardware]",
        'instance_type = "t3.small"',
        'strategy = "single_node"',
        "[env]",
        'docker_image = "benchmarkai/hello-world:latest"',
    ]
    if env:
        lines.append("[env.vars]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in env.items()]
    lines += ["[ml]", f"benchmark_code = {json.dumps(code)}"]
    if args:
        lines.append(f"args = {json.dumps(args)}")
    for src, path in sources or []:
        lines += ["[[data.sources]]", f"src = {json.dumps(src)}", f"path = {json.dumps(path)}"]
    for name, units, pattern in metrics or []:
        lines += [
            "[[output.metrics]]",
            f"name = {json.dumps(name)}",
            f"units = {json.dumps(units)}",
            f"pattern = {json.dumps(pattern)}",
        ]
    lines += ["[run]", f"count = {count}", f"timeout = {timeout}"]
    return "\n".join(lines) + "\n"


def scripts_tar(files: dict[str, str]) -> bytes:
    """The scripts folder as the builder stores it: a tar of its files."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, text in sorted(files.items()):
            data = textwrap.dedent(text).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


async def make_benchmark(
    services: Services,
    user: User,
    toml: str,
    *,
    scripts: dict[str, str] | None = None,
    data: list[tuple[str, str, bytes]] | None = None,
    values: dict[str, Any] | None = None,
    warnings: list[str] | None = None,
    kind: str = "benchmark",
) -> str:
    """A built benchmark submission with its inputs in storage and its message staged."""
    sid = new_id()
    storage = services.storage
    text = toml.encode()
    descriptor_sha = hashlib.sha256(text).hexdigest()
    descriptor_key = f"submissions/{sid}/upload/bench.toml"
    await storage.write_bytes(descriptor_key, text)
    benchmark: dict[str, Any] = {
        "descriptor_key": descriptor_key,
        "descriptor_sha256": descriptor_sha,
        "warnings": warnings or [],
    }
    if scripts is not None:
        archive = scripts_tar(scripts)
        sha = hashlib.sha256(archive).hexdigest()
        benchmark["scripts_key"] = f"scripts/{sha}/scripts.tar"
        benchmark["scripts_sha256"] = sha
        await storage.write_bytes(benchmark["scripts_key"], archive)
    refs = []
    for path, name, body in data or []:
        sha = hashlib.sha256(body).hexdigest()
        key = f"datasets/{sha}/{name}"
        await storage.write_bytes(key, body)
        refs.append(
            {"key": key, "sha256": sha, "size": len(body), "path": path, "src": f"file:///{path}"}
        )
    message = BenchmarkMessage.model_validate(
        {
            "submission": {"id": sid, "kind": kind, "name": f"a {kind}"},
            "owner": {"id": user.id, "name": user.name, "email": user.email},
            "benchmark": benchmark,
            "data": refs,
            "values": values or {},
        }
    )
    async with services.db.session() as session:
        session.add(
            Submission(
                id=sid,
                kind=kind,
                user_id=user.id,  # type: ignore[arg-type]
                name=f"a {kind}",
                status=Status.BUILT.value,
                upload_key=descriptor_key,
            )
        )
        await session.flush()
        envelope = Envelope(
            action_id=sid,
            type=BenchmarkMessage.TYPE,
            visited=[Visit(service="test")],
            payload=payload_of(message),
        )
        await services.outbox.stage(session, QUEUE, envelope)
    return sid


def consumer(services: Services) -> Consumer:
    return Consumer(
        services.queue, [QUEUE], partial(handle_evaluate, services), name="test", lease_seconds=60
    )


async def evaluate(services: Services) -> None:
    """Consume the staged message as the fleet's evaluator does."""
    assert await consumer(services).run_once() == 1


async def result_of(services: Services, sid: str, n: int) -> dict[str, Any]:
    key = f"submissions/{sid}/results/{n}/result.json"
    return json.loads(await services.storage.read_bytes(key))


async def text_of(services: Services, sid: str, n: int, name: str) -> str:
    return (await services.storage.read_bytes(f"submissions/{sid}/results/{n}/{name}")).decode()


async def scores_of(services: Services, sid: str) -> dict[tuple[str, str], Score]:
    async with services.db.session() as session:
        rows = await session.scalars(sa.select(Score).where(Score.submission_id == sid))
        return {(s.dataset, s.metric): s for s in rows}


async def runs_of(services: Services, sid: str) -> dict[str, Run]:
    async with services.db.session() as session:
        rows = await session.scalars(sa.select(Run).where(Run.submission_id == sid))
        return {r.name: r for r in rows}


# Runs for half a second, so that the live sampler sees it (an instant script finished
# before its first sample on a loaded machine: peak 0).
ELAPSED = """
import sys
import time
for i in range(3):
    print("elapsed: 12.5")
print("warming up", file=sys.stderr)
time.sleep(0.5)
"""


async def test_a_script_mode_benchmark_yields_a_series_per_run_with_usage_and_hwinfo(
    services: Services,
) -> None:
    user = await make_user(services)
    toml = descriptor(
        code="python3 $(BAI_SCRIPTS_PATH)/src/run.py",
        count=3,
        metrics=[("elapsed", "ms", r"elapsed: ([-+]?\d*\.\d+|\d+)")],
    )
    sid = await make_benchmark(
        services,
        user,
        toml,
        scripts={"src/run.py": ELAPSED},
        warnings=["env.docker_image = 'benchmarkai/hello-world:latest' is not used"],
    )
    await evaluate(services)
    submission = await get_submission(services, sid)
    assert submission.status == "done", submission.error

    scores = await scores_of(services, sid)
    for n in (1, 2, 3):
        result = await result_of(services, sid, n)
        assert result["metrics"] == {"elapsed": [12.5, 12.5, 12.5]}
        assert result["exit_code"] == 0 and result["timed_out"] is False and not result["oom"]
        assert set(RUSAGE_FIELDS) <= set(result["usage"])
        assert result["usage"]["ru_maxrss"] > 0 and result["usage"]["ru_utime"] > 0
        assert result["start_datetime"].endswith("+00:00") and result["seconds"] > 0
        assert result["start_datetime"] <= result["end_datetime"]
        assert result["summary"]["elapsed"]["median"] == 12.5
        assert result["summary"]["elapsed"]["n"] == 3
        assert result["peak"]["rss_bytes"] > 0 and result["samples"]
        # Script mode: the archive's sum (what ran), not the command's.
        assert len(result["script_sha256"]) == 64
        log = await text_of(services, sid, n, "log")
        assert log.count("elapsed: 12.5") == 3 and "warming up" in log
        assert "warming up" in await text_of(services, sid, n, "stderr")
        assert "warming up" not in await text_of(services, sid, n, "stdout")
        info = json.loads(await text_of(services, sid, n, "hwinfo.json"))
        assert info["cpu"]["logical_cores"] >= 1 and info["memory"]["total_bytes"] > 0
        assert "caches" in info["cpu"]
        score = scores[(f"run-{n}", "elapsed")]
        assert (score.value, score.n_examples, score.ci_low, score.ci_high) == (12.5, 3, 12.5, 12.5)
    overall = scores[("all", "elapsed")]
    assert overall.value == 12.5 and overall.n_examples == 9 and overall.extra["unit"] == "ms"

    runs = await runs_of(services, sid)
    assert sorted(runs) == ["run-1", "run-2", "run-3"]
    assert all(r.status == "done" and r.attempt == 1 for r in runs.values())
    events = await events_of(services, sid)
    kinds = [e.type for e in events]
    assert kinds.count("run.started") == 3 and kinds.count("run.finished") == 3
    assert kinds.count("benchmark.warnings") == 1 and kinds[-1] == "receipt"
    finished = next(e for e in events if e.type == "run.finished")
    assert "exit code 0" in finished.message and "elapsed 12.5 ms" in finished.message
    receipt = events[-1].envelope["payload"]
    assert receipt["sandbox"]["tool"].startswith("bubblewrap")
    assert receipt["packages"]["weighbridge"] and receipt["hardware"]["cores"] >= 1
    async with services.db.session() as session:
        [email] = await session.scalars(
            sa.select(Notification).where(Notification.submission_id == sid)
        )
    assert "done" in email.subject and "rank" not in email.subject
    assert "run-1" in email.body_text and "elapsed" in email.body_text
    # A benchmark's words, not a model's: it finished (not "evaluated"), values not examples.
    assert "has finished" in email.body_text and "(3 values)" in email.body_text
    assert "examples" not in email.body_text


PROBE = """
import json, os, sys
from benchmarkai import emit as anubis_emit
from weighbridge_metrics import emit

anubis_emit({"loss": 0.25, "accuracy": 0.5})
emit({"accuracy": 0.75})
found = {"env": {k: v for k, v in os.environ.items() if not k.startswith("LC_")}}
found["argv"] = sys.argv[1:]
found["python"] = sys.executable
found["cwd"] = os.getcwd()
with open("/data/train/numbers.csv") as fh:
    found["data"] = fh.read()
with open("/data/extra/labels.txt") as fh:
    found["extra"] = fh.read()
for path in ("/data/train/numbers.csv", "/scripts/probe.py", "/data/new"):
    try:
        with open(path, "w") as fh:
            fh.write("changed")
        found[path] = "written"
    except OSError as exc:
        found[path] = type(exc).__name__
with open("/scratch/mine", "w") as fh:
    found["scratch"] = fh.write("ok")
print("PROBE " + json.dumps(found))
"""


async def test_emit_env_values_and_read_only_data_inside_the_job(services: Services) -> None:
    user = await make_user(services)
    toml = descriptor(
        code="python3 $(WEIGHBRIDGE_SCRIPTS_PATH)/probe.py",
        args="--batch $(BATCH) --keep '$$(BATCH)' --undefined '$(NOT_SET)'",
        env={"BATCH": "32", "GREETING": "hello"},
        sources=[("file:///n.csv", "~/train/numbers.csv"), ("file:///labels.txt", "/extra/")],
        metrics=[("accuracy", "ratio", r"accuracy=(\d+\.\d+)")],
    )
    sid = await make_benchmark(
        services,
        user,
        toml,
        scripts={"probe.py": PROBE},
        data=[
            ("~/train/numbers.csv", "n.csv", b"1,2,3\n"),
            ("/extra/", "labels.txt", b"cat\ndog\n"),
        ],
        values={"batch_size": 32, "use_amp": True},
    )
    await evaluate(services)
    submission = await get_submission(services, sid)
    assert submission.status == "done", submission.error
    stdout = await text_of(services, sid, 1, "stdout")
    found = json.loads(next(x for x in stdout.splitlines() if x.startswith("PROBE "))[6:])
    env = found["env"]
    assert env["GREETING"] == "hello" and env["BATCH"] == "32"
    assert env["WEIGHBRIDGE_SCRIPTS_PATH"] == env["BAI_SCRIPTS_PATH"] == "/scripts"
    assert env["WEIGHBRIDGE_DATA_PATH"] == "/data"
    assert (env["WEIGHBRIDGE_RUN"], env["WEIGHBRIDGE_RUN_COUNT"]) == ("1", "1")
    assert env["WEIGHBRIDGE_PARAM_BATCH_SIZE"] == "32"
    assert env["WEIGHBRIDGE_PARAM_USE_AMP"] == "true"
    # (quoted for the shell, which would run `$(...)` as a command)
    assert found["argv"] == ["--batch", "32", "--keep", "$(BATCH)", "--undefined", "$(NOT_SET)"]
    assert found["cwd"] == "/scratch" and found["scratch"] == 2
    assert found["data"] == "1,2,3\n" and found["extra"] == "cat\ndog\n"
    # Data and scripts are read-only; nothing new appears under /data.
    assert found["/data/train/numbers.csv"] in ("OSError", "PermissionError")
    assert found["/scripts/probe.py"] in ("OSError", "PermissionError")
    assert found["/data/new"] in ("OSError", "PermissionError")
    # python3 is the build's interpreter (here the service's own: no env_key).
    assert env["PATH"].startswith("/opt/weighbridge/bin:") and found["python"] == sys.executable

    result = await result_of(services, sid, 1)
    # Both names of emit(): Anubis's values first, in call order, then ours.
    assert result["metrics"] == {"accuracy": [0.5, 0.75], "loss": [0.25]}
    assert result["values"] == {"batch_size": 32, "use_amp": True}
    assert result["data"] == {
        "/data/train/numbers.csv": hashlib.sha256(b"1,2,3\n").hexdigest(),
        "/data/extra/labels.txt": hashlib.sha256(b"cat\ndog\n").hexdigest(),
    }
    scores = await scores_of(services, sid)
    assert scores[("run-1", "accuracy")].value == 0.625
    assert scores[("all", "loss")].value == 0.25


FLAKY = """
import os, sys
print("elapsed: 1.5")
if os.environ["WEIGHBRIDGE_RUN"] == "2":
    print("CUDA error: out of patience", file=sys.stderr)
    sys.exit(3)
"""


async def test_a_failing_run_fails_the_submission_naming_it(services: Services) -> None:
    user = await make_user(services)
    toml = descriptor(
        code="python3 $(BAI_SCRIPTS_PATH)/flaky.py",
        count=3,
        metrics=[("elapsed", "s", r"elapsed: (\d+\.\d+)"), ("accuracy", "", r"acc=(\d+)")],
    )
    sid = await make_benchmark(services, user, toml, scripts={"flaky.py": FLAKY})
    await evaluate(services)
    submission = await get_submission(services, sid)
    assert submission.status == "failed"
    assert submission.failed_stage == "run:run-2"
    assert "run-2 exited with code 3" in (submission.error or "")
    assert "CUDA error: out of patience" in (submission.error or "")
    assert submission.error_log_key == f"submissions/{sid}/results/2/log"
    runs = await runs_of(services, sid)
    assert {n: r.status for n, r in runs.items()} == {
        "run-1": "done",
        "run-2": "failed",
        "run-3": "done",
    }
    # The other runs' results are kept; the failed run's files too.
    scores = await scores_of(services, sid)
    assert ("run-1", "elapsed") in scores and ("run-3", "elapsed") in scores
    assert ("run-2", "elapsed") not in scores and ("all", "elapsed") not in scores
    assert (await result_of(services, sid, 2))["exit_code"] == 3
    events = await events_of(services, sid)
    warnings = [e for e in events if e.type == "run.warning"]
    assert len(warnings) == 2 and "accuracy matched nothing" in warnings[0].message
    async with services.db.session() as session:
        [email] = await session.scalars(
            sa.select(Notification).where(Notification.submission_id == sid)
        )
    assert "failed" in email.subject and "run-2" in email.body_text
    body = " ".join(email.body_text.split())
    assert "command failed in the run(s)" in body and "handler" not in body  # not a model's


async def test_a_run_past_its_timeout_is_killed_and_the_reason_says_so(
    services: Services,
) -> None:
    user = await make_user(services)
    toml = descriptor(code="echo started; sleep 60; echo never", timeout=2)
    sid = await make_benchmark(services, user, toml, kind="inspection")
    await evaluate(services)
    submission = await get_submission(services, sid)
    assert submission.status == "failed"
    assert "run-1 timed out after 2 s (run.timeout) and was killed" in (submission.error or "")
    result = await result_of(services, sid, 1)
    assert result["timed_out"] is True and result["seconds"] < 20
    # Without scripts, the sum is the command's.
    assert (
        result["script_sha256"] == hashlib.sha256(b"echo started; sleep 60; echo never").hexdigest()
    )
    log = await text_of(services, sid, 1, "log")
    assert "started" in log and "never" not in log


async def test_a_run_over_its_memory_is_killed_and_called_out_of_memory(
    services: Services,
) -> None:
    from sandbox.jail import current_jail

    if "memory" not in current_jail().controllers:
        pytest.skip("no writable memory cgroup here: only RLIMIT_AS limits memory")
    services.settings.benchmark_memory_mb = 96
    user = await make_user(services)
    hog = "python3 -c 'import time; x = bytearray(512 << 20); time.sleep(5)'"
    sid = await make_benchmark(services, user, descriptor(code=hog))
    await evaluate(services)
    submission = await get_submission(services, sid)
    assert submission.status == "failed"
    assert "run-1 was killed at the sandbox's memory limit (out of memory)" in (
        submission.error or ""
    )
    result = await result_of(services, sid, 1)
    assert result["oom"] is True and result["limits"]["memory_mb"] == 96


async def test_a_crashed_evaluation_resumes_without_running_finished_runs_again(
    services: Services,
) -> None:
    user = await make_user(services)
    toml = descriptor(
        code="python3 $(BAI_SCRIPTS_PATH)/run.py",
        count=2,
        metrics=[("elapsed", "ms", r"elapsed: (\d+\.\d+)")],
    )
    sid = await make_benchmark(services, user, toml, scripts={"run.py": ELAPSED})
    [staged] = await services.queue.receive([QUEUE])
    await services.queue.ack(staged)

    async def deliver() -> None:  # the message (again: a lease that ran out with its worker)
        copy = Envelope(action_id=sid, type=BenchmarkMessage.TYPE, payload=staged.envelope.payload)
        await services.queue.send(QUEUE, copy)
        await evaluate(services)

    await deliver()
    assert await status_of(services, sid) == "done"
    # As a worker that died inside run 2 leaves it: evaluating, run 2 running, no end yet.
    async with services.db.session() as session:
        submission = await session.get(Submission, sid)
        assert submission is not None
        submission.status = Status.EVALUATING.value
        run = (await runs_of(services, sid))["run-2"]
        await session.execute(
            sa.update(Run).where(Run.id == run.id).values(status="running", summary={})
        )
        await session.execute(
            sa.delete(Score).where(Score.submission_id == sid, Score.dataset != "run-1")
        )
        await session.execute(sa.delete(Notification).where(Notification.submission_id == sid))
    await deliver()
    assert await status_of(services, sid) == "done"
    runs = await runs_of(services, sid)
    assert (runs["run-1"].attempt, runs["run-2"].attempt) == (1, 2)
    skipped = [e for e in await events_of(services, sid) if e.type == "run.skipped"]
    assert [e.envelope["payload"]["run"] for e in skipped] == ["run-1"]
    assert (await scores_of(services, sid))[("all", "elapsed")].n_examples == 6


async def test_a_cancel_stops_the_run_in_progress(services: Services) -> None:
    user = await make_user(services)
    sid = await make_benchmark(services, user, descriptor(code="sleep 60", count=2))
    work = asyncio.create_task(evaluate(services))

    async def running() -> bool:
        run = (await runs_of(services, sid)).get("run-1")
        return run is not None and run.status == "running"

    await wait_for(running, within=30)
    async with services.db.session() as session:
        await cancel_submission(session, sid, user=user)
    await asyncio.wait_for(work, 15)
    assert await status_of(services, sid) == "cancelled"
    assert {r.status for r in (await runs_of(services, sid)).values()} == {"cancelled"}
    assert any(e.type == "run.stopped" for e in await events_of(services, sid))


async def test_inputs_that_changed_or_escape_fail_before_anything_runs(
    services: Services,
) -> None:
    user = await make_user(services)
    toml = descriptor(code="cat /data/d.csv", sources=[("file:///d.csv", "d.csv")])
    changed = await make_benchmark(services, user, toml, data=[("d.csv", "d.csv", b"1\n")])
    sha = hashlib.sha256(b"1\n").hexdigest()
    await services.storage.write_bytes(f"datasets/{sha}/d.csv", b"2\n")  # changed under it
    await evaluate(services)
    failed = await get_submission(services, changed)
    assert failed.status == "failed" and failed.failed_stage == "evaluate"
    assert f"data file d.csv (from file:///d.csv, stored at datasets/{sha}/d.csv)" in (
        failed.error or ""
    )
    assert sha in (failed.error or "") and hashlib.sha256(b"2\n").hexdigest() in (
        failed.error or ""
    )

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("../../outside.py")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    escaping = await make_benchmark(services, user, descriptor(code="true"), scripts={})
    [staged] = await services.queue.receive([QUEUE])
    await services.queue.ack(staged)
    payload = json.loads(json.dumps(staged.envelope.payload))
    archive = buffer.getvalue()
    payload["benchmark"]["scripts_key"] = "scripts/evil/scripts.tar"
    payload["benchmark"]["scripts_sha256"] = hashlib.sha256(archive).hexdigest()
    await services.storage.write_bytes("scripts/evil/scripts.tar", archive)
    await services.queue.send(
        QUEUE, Envelope(action_id=escaping, type=BenchmarkMessage.TYPE, payload=payload)
    )
    await evaluate(services)
    failed = await get_submission(services, escaping)
    assert failed.status == "failed"
    assert "the scripts archive cannot be extracted safely" in (failed.error or "")
    assert await runs_of(services, escaping) == {}  # nothing ran


async def test_an_unreadable_benchmark_message_fails_naming_the_field(
    services: Services,
) -> None:
    user = await make_user(services)
    sid = await make_benchmark(services, user, descriptor(code="true"))
    [staged] = await services.queue.receive([QUEUE])
    await services.queue.ack(staged)
    payload = {**staged.envelope.payload, "benchmark": {"descriptor_key": "x"}}
    await services.queue.send(
        QUEUE, Envelope(action_id=sid, type=BenchmarkMessage.TYPE, payload=payload)
    )
    await evaluate(services)
    failed = await get_submission(services, sid)
    assert failed.status == "failed" and failed.failed_stage == "evaluate"
    assert "benchmark message refused: benchmark.descriptor_sha256" in (failed.error or "")


# -- the sandbox's guarantees, for a benchmark script ----------------------------------------

ATTACKS = """
import glob, json, os, signal, socket

TARGETS = json.loads(os.environ["TARGETS"])
found = {}


def read(path):
    try:
        with open(path, "rb") as fh:
            return "read %d bytes" % len(fh.read())
    except OSError as exc:
        return type(exc).__name__


found["storage"] = [read(p) for p in glob.glob(TARGETS["storage"] + "/**", recursive=True)
                    if os.path.isfile(p)] or "nothing visible"
found["database"] = read(TARGETS["database"])
found["other"] = read(TARGETS["other"])
found["home"] = os.path.exists(TARGETS["home"])
try:
    s = socket.create_connection(("127.0.0.1", TARGETS["port"]), timeout=2)
    found["network"] = "connected"
except OSError as exc:
    found["network"] = type(exc).__name__
try:
    socket.create_connection(("1.1.1.1", 53), timeout=2)
    found["internet"] = "connected"
except OSError as exc:
    found["internet"] = type(exc).__name__
written = []
for folder in ("/", "/usr", "/etc", "/scripts", "/data", "/run/weighbridge", TARGETS["home"]):
    try:
        with open(os.path.join(folder, "pwned"), "w") as fh:
            fh.write("x")
        written.append(folder)
    except OSError:
        pass
found["written"] = written
found["secrets"] = sorted(k for k in os.environ if k.startswith("WEIGHBRIDGE_")
                          and k not in ("WEIGHBRIDGE_SCRIPTS_PATH", "WEIGHBRIDGE_DATA_PATH",
                                        "WEIGHBRIDGE_RUN", "WEIGHBRIDGE_RUN_COUNT"))
environs = []
for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
    try:
        with open("/proc/%s/environ" % pid, "rb") as fh:
            environs.append(fh.read())
    except OSError:
        pass
found["environ_secret"] = any(b"weighbridge-secret" in e for e in environs)
try:
    os.kill(TARGETS["server"], signal.SIGKILL)
    found["kill"] = "killed"
except OSError as exc:
    found["kill"] = type(exc).__name__
found["uid"] = os.getuid()
print("ATTACKS " + json.dumps(found))
"""


async def test_a_benchmark_script_gets_the_sandboxs_guarantees(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEIGHBRIDGE_TEST_TOKEN", "weighbridge-secret")
    user = await make_user(services)
    # Someone else's results and a hidden dataset, in the same storage.
    other = await make_benchmark(services, user, descriptor(code="true"))
    [staged] = await services.queue.receive([QUEUE])
    await services.queue.ack(staged)
    await services.storage.write_bytes(f"submissions/{other}/results/1/log", b"their secret log")
    await services.storage.write_bytes("datasets/" + "a" * 64 + "/hidden.jsonl", b'{"label": 1}\n')
    storage_root = services.storage.local_path("datasets")
    assert storage_root is not None, "this attack needs the local storage"
    url = sa.engine.make_url(services.settings.database_url)
    database = url.database if url.get_backend_name() == "sqlite" else "/nonexistent"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    targets = {
        "storage": str(storage_root.parent),
        "database": str(database),
        "other": str(storage_root.parent / "submissions" / other / "results" / "1" / "log"),
        "home": str(services.settings.home),
        "port": listener.getsockname()[1],
        "server": os.getpid(),
    }
    toml = descriptor(code="python3 /scripts/attacks.py", env={"TARGETS": json.dumps(targets)})
    sid = await make_benchmark(services, user, toml, scripts={"attacks.py": ATTACKS})
    try:
        await evaluate(services)
    finally:
        listener.close()
    submission = await get_submission(services, sid)
    assert submission.status == "done", submission.error
    stdout = await text_of(services, sid, 1, "stdout")
    found = json.loads(next(x for x in stdout.splitlines() if x.startswith("ATTACKS "))[8:])
    assert found["storage"] == "nothing visible"
    assert found["database"] in ("FileNotFoundError", "PermissionError")
    assert found["other"] in ("FileNotFoundError", "PermissionError")
    assert found["home"] is False
    assert found["network"] != "connected" and found["internet"] != "connected"
    assert found["written"] == []
    assert found["secrets"] == [] and found["environ_secret"] is False
    assert found["kill"] in ("ProcessLookupError", "PermissionError")
    assert found["uid"] != 0
    assert not (storage_root.parent / "pwned").exists()


# -- the pieces --------------------------------------------------------------------------------


def test_kubernetes_references_expand_like_kubernetes() -> None:
    env = {"BAI_SCRIPTS_PATH": "/scripts", "N": "3"}
    assert expand_references("python3 $(BAI_SCRIPTS_PATH)/src/run.py", env) == (
        "python3 /scripts/src/run.py"
    )
    assert expand_references("$(N) $$(N) $(MISSING) $$ $( $(N", env) == (
        "3 $(N) $(MISSING) $$ $( $(N"
    )


def test_data_paths_stay_below_data() -> None:
    assert str(data_path("~/data/mnist.npz")) == "data/mnist.npz"
    assert str(data_path("/abs/file")) == "abs/file"
    with pytest.raises(Exception, match="climbs out of /data"):
        data_path("../../etc/passwd")


def test_metrics_from_patterns_and_emit_lines() -> None:
    from core.descriptor import Metric

    metrics = [
        Metric(name="elapsed", units="ms", pattern=r"elapsed: ([-+]?\d*\.\d+|\d+)"),
        Metric(name="acc", units="", pattern=r"acc(uracy)?=(\S+)"),
        Metric(name="loss", units="", pattern=r"loss \d+"),
    ]
    stdout = 'elapsed: 1\nWEIGHBRIDGE_METRIC {"acc": 0.5, "elapsed": 2.5}\nWEIGHBRIDGE_METRIC x\n'
    log = stdout + "elapsed: .5\naccuracy=abc\nloss 7\n"
    extracted = extract_metrics(metrics, log=log, stdout=stdout)
    # group 1 of a pattern with groups (here 'uracy', not a number: a warning)
    assert extracted.series["elapsed"] == [1.0, 0.5, 2.5]
    assert extracted.series["acc"] == [0.5]
    assert extracted.series["loss"] == []  # 'loss 7' is not a number
    assert any("not JSON" in w for w in extracted.warnings)
    assert sum("not a number" in w for w in extracted.warnings) == 2


async def test_a_running_run_s_cpu_and_memory_are_exported_at_metrics(
    services: Services,
) -> None:
    """Issue 11 part 9: while a run goes, its process tree's CPU and memory are sampled,
    kept on its row and exported by /metrics; once it ends, the gauges go."""
    import httpx

    from api.app import create_app

    user = await make_user(services)
    # Holds ~64 MiB and burns CPU for a few seconds, then ends.
    code = (
        'python3 -c "import time; b = bytearray(64 << 20); e = time.time() + 6\n'
        'while time.time() < e: sum(range(1000))"'
    )
    sid = await make_benchmark(services, user, descriptor(code=code))
    work = asyncio.create_task(evaluate(services))
    transport = httpx.ASGITransport(app=create_app(services))
    seen: dict[str, float] = {}
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:

        async def exported() -> bool:
            text = (await client.get("/metrics")).text
            for line in text.splitlines():
                if line.startswith("weighbridge_run_") and f'submission_id="{sid}"' in line:
                    seen[line.split("{", 1)[0]] = float(line.rsplit(" ", 1)[1])
            return {"weighbridge_run_rss_bytes", "weighbridge_run_cpu_percent"} <= set(seen)

        await wait_for(exported, within=30)
        await asyncio.wait_for(work, 60)
        assert seen["weighbridge_run_rss_bytes"] > 60 * 2**20
        assert seen["weighbridge_run_processes"] >= 1
        assert f'submission_id="{sid}"' not in (await client.get("/metrics")).text
    assert await status_of(services, sid) == "done"
    result = await result_of(services, sid, 1)
    assert result["peak"]["rss_bytes"] > 60 * 2**20  # the samples are kept with the run


def test_the_sandboxed_measurer_reports_every_amun_usage_field() -> None:
    """sandbox/host/measured.py runs inside the sandbox with the standard library only, so
    it keeps its own list of rusage fields; it must be Amun's, in Amun's order."""
    import ast
    from pathlib import Path

    import sandbox

    source = Path(sandbox.__file__).parent / "host" / "measured.py"
    tree = ast.parse(source.read_text())
    (fields,) = [
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "FIELDS"
    ]
    assert fields == RUSAGE_FIELDS


def test_gpu_readings_parse_nvidia_smi_and_are_kept_per_run() -> None:
    from evaluator.benchmark_run import _gpu_peak, latest_sample, parse_nvidia_smi

    text = "0, 87, 30500, 81559\n1, [N/A], 12, 81559\nnot a gpu line\n"
    gpus = parse_nvidia_smi(text)
    assert gpus == [
        {
            "index": 0,
            "utilization_percent": 87.0,
            "memory_used_bytes": 30500 * 2**20,
            "memory_total_bytes": 81559 * 2**20,
        },
        {
            "index": 1,
            "utilization_percent": None,
            "memory_used_bytes": 12 * 2**20,
            "memory_total_bytes": 81559 * 2**20,
        },
    ]
    samples = [{"t": 0.0, "gpus": gpus}, {"t": 0.5}, {"t": 1.0}]
    assert latest_sample(samples) == {"t": 1.0, "gpus": gpus}
    assert _gpu_peak(samples) == {"gpu_percent": 87.0, "gpu_memory_used_bytes": 30500 * 2**20}
    assert _gpu_peak([{"t": 0.0}]) == {}  # no GPU here: nothing claimed
