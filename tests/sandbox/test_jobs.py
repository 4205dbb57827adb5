"""The jobs folder: one per process, locked while it lives; a killed worker's is removed by the
next to start, a live worker's never, however many start at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox import jobs
from sandbox.cgroups import available_controllers
from sandbox.jail import sweep_leftovers
from tests.conftest import ROOT

# A worker: starts as a builder or evaluator does (configures the sandbox), leaves scratch in
# its jobs folder (as a build or an evaluation does) and a cgroup, says where, and works until
# it is killed (or, with "exit", ends normally).
WORKER = """
import json, sys, time
from sandbox.cgroups import Cgroup, CgroupLimits
from sandbox.jail import configure
from sandbox.jobs import jobs_root

configure("bwrap")
root = jobs_root()
(root / "builds" / "0123abcd").mkdir(parents=True)
(root / "builds" / "0123abcd" / "model.mar").write_bytes(b"x" * 1000)
(root / "eval-x1y2").mkdir()
group = Cgroup.create(CgroupLimits(memory_mb=64, pids=16))
print(json.dumps([str(root), [str(d) for d in group.dirs.values()]]), flush=True)
if sys.argv[1] != "exit":
    time.sleep(600)
"""


@pytest.fixture
def tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A temporary folder of its own for the test and the workers it starts."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    held: dict = {}
    monkeypatch.setattr(jobs, "_held", held)  # this test process has no folder there yet
    yield folder
    sweep_leftovers()  # the workers' cgroups go with them
    for _root, fd, _pid in held.values():
        os.close(fd)


def launch(tmp: Path, mode: str = "work") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, mode],
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(tmp)},
        stdout=subprocess.PIPE,
        text=True,
    )


def said(process: subprocess.Popen) -> tuple[Path, list[Path]]:
    """(its jobs folder, its cgroup's folders: none where cgroups cannot be made here)"""
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    assert line, "the worker said nothing"
    root, groups = json.loads(line)
    return Path(root), [Path(g) for g in groups]


def folder_of(process: subprocess.Popen) -> Path:
    return said(process)[0]


def start_worker(tmp: Path, mode: str = "work") -> tuple[subprocess.Popen, Path]:
    process = launch(tmp, mode)
    return process, folder_of(process)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(10)


def test_a_killed_workers_scratch_is_removed_at_the_next_start_a_live_ones_kept(
    tmp: Path,
) -> None:
    killed = launch(tmp)
    killed_root, killed_groups = said(killed)
    live = launch(tmp)
    live_root, live_groups = said(live)
    try:
        assert killed_root.parent == live_root.parent == tmp / f"weighbridge-jobs-{os.geteuid()}"
        assert killed_root != live_root and killed_root.name.startswith(f"{killed.pid}-")
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(10)
        assert (killed_root / "builds" / "0123abcd" / "model.mar").is_file()  # left behind
        assert all(g.is_dir() for g in killed_groups)
        if os.geteuid() == 0 and available_controllers():
            assert killed_groups and live_groups

        # The next worker to start sweeps: the killed one's folder and (empty) cgroups go, the
        # live one's stay.
        following, following_root = start_worker(tmp)
        try:
            assert not killed_root.exists()
            assert not any(g.exists() for g in killed_groups)
            assert (live_root / "builds" / "0123abcd" / "model.mar").is_file()
            assert (live_root / "eval-x1y2").is_dir()
            assert all(g.is_dir() for g in live_groups)
            assert following_root.is_dir()
            assert sorted(p.name for p in following_root.parent.iterdir()) == sorted(
                [live_root.name, following_root.name]
            )
        finally:
            stop(following)
    finally:
        stop(killed)
        stop(live)
        sweep_leftovers()  # what this test made: gone with its workers
    assert not any(g.exists() for g in live_groups)


def test_a_worker_that_ends_normally_takes_its_folder_with_it(tmp: Path) -> None:
    process, root = start_worker(tmp, "exit")
    assert process.wait(30) == 0
    assert not root.exists()


def test_workers_starting_together_never_remove_one_anothers_folder(tmp: Path) -> None:
    # All at once: each sweeps while the others are taking their folders.
    processes = [launch(tmp) for _ in range(6)]
    started = [(process, folder_of(process)) for process in processes]
    try:
        for _process, root in started:
            assert (root / "builds" / "0123abcd" / "model.mar").is_file()
            assert (root / jobs.LOCK).is_file()
        assert jobs.sweep_jobs() == []  # all alive
        assert all(root.is_dir() for _p, root in started)
    finally:
        for process, _root in started:
            stop(process)
    # ... and once they are all gone, one sweep removes every folder but the sweeper's own.
    own = jobs.jobs_root()
    removed = jobs.sweep_jobs()
    assert sorted(removed) == sorted(root for _p, root in started)
    assert [p.name for p in own.parent.iterdir()] == [own.name]


def test_what_a_cut_short_sweep_or_a_maker_killed_before_locking_left_is_removed(
    tmp: Path,
) -> None:
    own = jobs.jobs_root()
    shared = own.parent
    trash = shared / f"{jobs.TRASH}123-0badf00d-1234abcd"
    (trash / "builds").mkdir(parents=True)
    unlocked = shared / "124-0badcafe"  # made, and its maker killed before it took the lock
    unlocked.mkdir()
    someone_elses = shared / "notes"  # not a process folder: never touched
    someone_elses.mkdir()
    (own / "scratch").mkdir()

    assert jobs.sweep_jobs() == []
    assert not trash.exists()
    assert unlocked.is_dir()  # it may be a maker between its two steps: not yet
    later = time.time() + jobs.UNLOCKED_SECONDS + 10
    assert jobs.sweep_jobs(now=later) == [unlocked]
    assert not unlocked.exists()
    assert someone_elses.is_dir() and (own / "scratch").is_dir()
    assert jobs.jobs_root() == own
