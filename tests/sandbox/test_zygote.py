"""Handler workers forked from the warm interpreter: fast, and isolated like exec'd ones."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from sandbox.failures import SandboxError
from sandbox.worker import Sandbox
from sandbox.zygote import Zygote, current_zygote, warm_interpreter
from tests.evaluator.models import BROKEN
from tests.sandbox.workers import (
    POOL_HANDLER,
    answer,
    answer_together,
    failure,
    make_sandbox,
)


@pytest.fixture(scope="module")
async def zygote() -> AsyncIterator[Zygote]:
    warm = Zygote()
    assert await warm.ensure(), "the warm interpreter did not start"
    yield warm
    await warm.close()


def forked_sandbox(tmp_path: Path, source: str, zygote: Zygote | None, **options: Any) -> Sandbox:
    return make_sandbox(tmp_path, source, zygote=zygote, **options)


WHO_AM_I = """
import ctypes, os, resource, sys

def handle(data, context):
    if data is None:
        return None
    libc = ctypes.CDLL(None)
    death = ctypes.c_int()
    libc.prctl(2, ctypes.byref(death))  # PR_GET_PDEATHSIG
    lines = open("/proc/self/net/dev").read().splitlines()[2:]
    return [{
        "pid": os.getpid(),
        "pgid": os.getpgrp(),
        "sid": os.getsid(0),
        "parent": os.getppid(),
        "death_signal": death.value,
        "address_space": resource.getrlimit(resource.RLIMIT_AS)[0],
        "net": os.readlink("/proc/self/ns/net"),
        "pid_ns": os.readlink("/proc/self/ns/pid"),
        "mnt": os.readlink("/proc/self/ns/mnt"),
        "interfaces": sorted(line.split(":")[0].strip() for line in lines),
        "hidden": os.path.exists(HIDDEN),
        "uid": os.getuid(),
        "status": open("/proc/self/status").read(),
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "argv": sys.argv,
        "torch_preloaded": "torch" in sys.modules,
        "fds": [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
                if os.path.exists(f"/proc/self/fd/{fd}")],
    }]
"""


async def test_a_forked_worker_is_isolated_like_an_exec_one(
    tmp_path: Path, zygote: Zygote, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEIGHBRIDGE_SECRET_FOR_TEST", "must-not-leak")
    hidden = tmp_path / "storage" / "datasets"
    hidden.mkdir(parents=True)
    (hidden / "labels.jsonl").write_text("secret\n")
    ours = {ns: os.readlink(f"/proc/self/ns/{ns}") for ns in ("net", "mnt", "pid")}
    runs = ("first", "second")
    sandboxes = [
        forked_sandbox(tmp_path / run, WHO_AM_I, zygote, HIDDEN=str(hidden)) for run in runs
    ]
    seen = await answer_together(sandboxes)  # both alive at once
    for run, sandbox, me in zip(runs, sandboxes, seen, strict=True):
        assert sandbox.forked_from == zygote.pid  # the fast path was taken
        log = (tmp_path / run / "log").read_text()
        assert "forked from the warm interpreter" in log and "audit hook installed" in log
        assert me["torch_preloaded"]  # what makes it fast
        # PID 2 of a namespace of its own, under its init: nothing else is in view.
        assert me["pid"] == 2 and me["parent"] == 1
        assert me["death_signal"] == signal.SIGKILL  # dies with its init (and it with us)
        assert me["address_space"] == (300 + 1024) << 20  # RLIMIT_AS, as when exec'd
        assert me["interfaces"] == ["lo"]  # no network
        assert me["hidden"] is False  # the evaluator's folders are not in its filesystem
        assert me["uid"] >= 424_200  # a user of its own, never root
        assert "NoNewPrivs:\t1" in me["status"] and "CapEff:\t0000000000000000" in me["status"]
        assert "Seccomp:\t2" in me["status"]
        assert all(me[ns] != ours[ns] for ns in ("net", "mnt"))
        assert me["cwd"] == me["env"]["HOME"] == "/scratch"
        assert not [k for k in me["env"] if k.startswith(("WEIGHBRIDGE", "AWS"))]
        assert me["argv"][0].endswith("handler_host.py")
        # Pipes to the evaluator and the log only: no zygote socket, nothing of a sibling.
        assert not [link for link in me["fds"] if link.startswith("socket:")], me["fds"]
    # Each child has namespaces and a user of its own: two handlers cannot meet.
    assert seen[0]["net"] != seen[1]["net"] and seen[0]["mnt"] != seen[1]["mnt"]
    assert seen[0]["uid"] != seen[1]["uid"]
    assert (hidden / "labels.jsonl").exists()  # outside, nothing changed


@pytest.mark.parametrize(
    "name",
    ["import_error", "raises", "hangs", "memory_hog", "reads_labels", "opens_socket", "exits"],
)
async def test_broken_handlers_fail_the_same_way_when_forked(
    tmp_path: Path, zygote: Zygote, name: str
) -> None:
    labels = tmp_path / "data" / "labels.jsonl"
    labels.parent.mkdir()
    labels.write_text('{"label": 1}\n')
    source, words = BROKEN[name]
    sandbox = forked_sandbox(
        tmp_path,
        source,
        zygote,
        timeout=1.5,
        memory_mb=200,
        LABELS=str(labels),
        PORT=9,
    )
    try:
        await sandbox.start()
        data = [{"body": {"x": 1000 if name == "raises" else 1}}]
        with pytest.raises(SandboxError) as caught:
            await sandbox.infer(data, where="batch 1")
    except SandboxError as error:  # failed while initialising
        reason = error.reason
    else:
        reason = caught.value.reason
    finally:
        await sandbox.close()
    assert sandbox.forked_from == zygote.pid
    for word in words:
        if "answers for" in word or word.startswith("batch"):
            continue
        assert word.replace("{labels}", str(labels)).replace("{port}", "9") in reason, reason
    worker = sandbox.proc
    assert worker is not None and worker.returncode is not None
    assert not psutil.pid_exists(worker.pid) or psutil.Process(worker.pid).ppid() != zygote.pid


THREADS = """
import torch


def handle(data, context):
    if data is None:
        return None
    return [{"label": 0, "threads": torch.get_num_threads()} for item in data]
"""


@pytest.mark.parametrize("threads", [1, 2])
async def test_a_forked_worker_takes_the_thread_count_it_is_given(
    tmp_path: Path, zygote: Zygote, threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # torch read the zygote's thread count at import; workers side by side need their share.
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    sandbox = forked_sandbox(tmp_path, THREADS, zygote, threads=threads)
    (reply,) = await answer(sandbox)
    assert sandbox.forked_from == zygote.pid
    assert reply["threads"] == threads


async def test_a_worker_killed_by_a_signal_is_reported(tmp_path: Path, zygote: Zygote) -> None:
    source = """
    import os, signal

    def handle(data, context):
        if data is None:
            return None
        os.kill(os.getpid(), signal.SIGSEGV)
    """
    sandbox = forked_sandbox(tmp_path, source, zygote)
    error = await failure(sandbox)
    assert sandbox.forked_from == zygote.pid
    assert error.kind == "died" and "killed by SIGSEGV" in error.reason


async def test_memory_shared_with_the_zygote_is_not_charged(tmp_path: Path, zygote: Zygote) -> None:
    source = """
    def handle(data, context):
        if data is None:
            return None
        return [{"label": 1}]
    """
    # The zygote's torch alone is resident past 100 MB; the handler itself uses a few MB.
    sandbox = forked_sandbox(tmp_path, source, zygote, memory_mb=100)
    assert await answer(sandbox) == [{"label": 1}]  # not stopped for the zygote's memory
    assert sandbox.forked_from == zygote.pid
    figures = (sandbox.inherited_bytes >> 20, sandbox.peak_rss >> 20)
    assert sandbox.inherited_bytes > 100 << 20, figures
    assert sandbox.peak_rss < 100 << 20, figures  # what the limit counts
    # What is reported includes the shared runtime, as an exec'd worker importing torch has.
    assert sandbox.peak_memory_bytes >= sandbox.inherited_bytes


async def test_another_interpreter_gets_a_fresh_process(tmp_path: Path, zygote: Zygote) -> None:
    # Like a per-requirements virtualenv: its python links to the same binary, but its
    # packages are not the zygote's, so it must not be served by the zygote.
    env = tmp_path / "env" / "bin"
    env.mkdir(parents=True)
    python = env / "python"
    python.symlink_to(await asyncio.to_thread(os.path.realpath, sys.executable))
    assert not zygote.serves(str(python)) and zygote.serves(None)
    source = "def handle(data, context):\n    return None if data is None else [{'ok': 1}]\n"
    sandbox = forked_sandbox(tmp_path / "env-run", source, zygote, python=str(python))
    assert await answer(sandbox) == [{"ok": 1}]
    assert sandbox.forked_from is None
    assert f"starting the handler worker: {python}" in sandbox.log_path.read_text()
    sandbox = forked_sandbox(tmp_path / "own", source, zygote, python=sys.executable)
    assert await answer(sandbox) == [{"ok": 1}] and sandbox.forked_from == zygote.pid


async def test_a_dead_zygote_is_started_again(tmp_path: Path) -> None:
    source = "def handle(data, context):\n    return None if data is None else [{'ok': 1}]\n"
    async with warm_interpreter() as warm:
        assert current_zygote() is warm
        assert await warm.ensure()
        first = warm.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        # Dead (a zombie until reaped), not merely signalled: a fork it made while dying
        # would die with it, which is the message's next attempt's business, not this test's.
        for _ in range(100):
            try:
                if psutil.Process(first).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            await asyncio.sleep(0.05)
        # Whether or not its death has been noticed yet, the next worker runs: forked from a
        # new zygote, or (if the request reached the dead one) from a fresh interpreter.
        sandbox = forked_sandbox(tmp_path / "a", source, None)
        assert await answer(sandbox) == [{"ok": 1}]
        sandbox = forked_sandbox(tmp_path / "b", source, None)
        assert await answer(sandbox) == [{"ok": 1}]
        assert sandbox.forked_from is not None and sandbox.forked_from != first
        assert warm.starts == 2
    assert current_zygote() is None
    assert not psutil.pid_exists(sandbox.forked_from) or (
        psutil.Process(sandbox.forked_from).status() == psutil.STATUS_ZOMBIE
    )


async def test_without_a_zygote_the_worker_is_exec_as_before(tmp_path: Path) -> None:
    closed = Zygote()
    await closed.close()
    source = "def handle(data, context):\n    return None if data is None else [{'ok': 1}]\n"
    sandbox = forked_sandbox(tmp_path, source, closed)
    assert await answer(sandbox) == [{"ok": 1}]
    assert sandbox.forked_from is None
    log = (tmp_path / "log").read_text()
    assert "starting a fresh interpreter instead" in log and "starting the handler worker" in log


async def test_closing_the_zygote_ends_its_workers(tmp_path: Path) -> None:
    source = """
    import time

    def handle(data, context):
        if data is None:
            return None
        time.sleep(60)
    """
    warm = Zygote()
    assert await warm.ensure()
    sandbox = forked_sandbox(tmp_path, source, warm, timeout=30)
    await sandbox.start()
    await sandbox.send(0, [{"body": {"x": 1}}], where="batch")
    worker = psutil.Process(sandbox.proc.pid)
    zygote_pid = warm.pid
    await warm.close()
    _gone, alive = await asyncio.to_thread(psutil.wait_procs, [worker], timeout=10)
    assert not alive
    with pytest.raises(SandboxError):
        await sandbox.receive(where="batch")
    await sandbox.close()
    assert zygote_pid is not None and not psutil.pid_exists(zygote_pid)


async def test_what_a_forked_handler_starts_ends_with_it(tmp_path: Path, zygote: Zygote) -> None:
    source = """
    import os, time

    def handle(data, context):
        if data is None:
            return None
        child = os.fork()
        if child == 0:
            time.sleep(120)
            os._exit(0)
        return [{"child": child, "uid": os.getuid()}]
    """
    sandbox = forked_sandbox(tmp_path, source, zygote)
    [out] = await answer(sandbox)
    assert sandbox.forked_from == zygote.pid
    assert out["child"] > 2  # a pid of its own namespace (the worker is 2)
    # Nothing runs as its uid any more: the child ended with the worker's namespace.
    left = [p for p in psutil.process_iter(["uids"]) if p.info["uids"].real == out["uid"]]
    assert not left


async def test_a_handler_calling_sys_exit_ends_as_when_exec(tmp_path: Path, zygote: Zygote) -> None:
    source = """
    import sys

    def handle(data, context):
        if data is None:
            return None
        sys.exit(5)
    """
    results = []
    for name, warm in (("forked", zygote), ("exec", None)):
        sandbox = forked_sandbox(tmp_path / name, source, warm)
        error = await failure(sandbox)
        assert (sandbox.forked_from is not None) == (name == "forked")
        results.append((error.kind, error.reason))
    assert (
        results[0]
        == results[1]
        == ("died", "batch: the handler's worker process exited with code 5")
    )


async def test_a_forked_handler_may_use_multiprocessing(tmp_path: Path, zygote: Zygote) -> None:
    # Its own /dev/shm (semaphores for the pool's queues), mounted by the child itself.
    sandbox = forked_sandbox(tmp_path, POOL_HANDLER, zygote)
    assert await answer(sandbox, [{"body": {"x": 4}}]) == [{"label": 16}]
    assert sandbox.forked_from == zygote.pid
