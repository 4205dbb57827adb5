"""Kernel limits for one sandbox through cgroups: memory, process count and a CPU share.

One group per sandbox under `weighbridge/` in each controller that is mounted and writable
(cgroup v1: /sys/fs/cgroup/{memory,pids,cpu}; cgroup v2: one /sys/fs/cgroup tree with the
controllers enabled in its subtree_control). A process joins before it runs anything of the
user's: `join()` in the launcher's pre-exec hook, or by writing "0" to the `cgroup.procs`
descriptors a child of the warm interpreter receives. `close()` kills what is left in the group
and removes it. Where no controller is writable the rlimits alone apply, and the receipt says so.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sandbox.jobs import jobs_root

ROOT = Path("/sys/fs/cgroup")
PARENT = "weighbridge"
MiB = 1 << 20


@dataclass(frozen=True)
class CgroupLimits:
    memory_mb: int
    pids: int
    cpu_weight: int = 100  # relative share, 100 = one ordinary process (v2 cpu.weight scale)


def _writable(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK)


def _v2() -> bool:
    return (ROOT / "cgroup.controllers").is_file()


def available_controllers() -> list[str]:
    """The controllers this process can create groups in (empty: none, rlimits only)."""
    if os.geteuid() != 0 or not ROOT.is_dir():
        return []
    if _v2():
        try:
            enabled = (ROOT / "cgroup.subtree_control").read_text().split()
        except OSError:
            return []
        return [c for c in ("memory", "pids", "cpu") if c in enabled and _writable(ROOT)]
    return [c for c in ("memory", "pids", "cpu") if _writable(ROOT / c)]


STALE_SECONDS = 3600.0
_swept_at = [0.0]


def sweep_stale(*, now: float | None = None) -> int:
    """Remove empty groups left behind (a process killed before it removed its own, or one
    whose last member took longer to die than `close` waited), once every few minutes;
    only groups older than an hour, so a group just made for a starting sandbox is never
    touched. Returns how many were removed."""
    now = time.time() if now is None else now
    if now - _swept_at[0] < 600:
        return 0
    _swept_at[0] = now
    removed = 0
    for folder in _groups("job-"):
        with contextlib.suppress(OSError, ValueError):
            if now - folder.stat().st_mtime < STALE_SECONDS:
                continue
            if (folder / "cgroup.procs").read_text().strip():
                continue
            folder.rmdir()
            removed += 1
    return removed


def remove_groups_of(owners: Iterable[str]) -> int:
    """Remove at once the empty groups of processes known to be gone (`owners`: the names of
    the jobs folders a sweep found unlocked; a group is named after its maker's). Returns how
    many were removed; one with a process still in it waits for `sweep_stale`."""
    removed = 0
    for owner in owners:
        for folder in _groups(f"job-{owner}-"):
            with contextlib.suppress(OSError):
                if (folder / "cgroup.procs").read_text().strip():
                    continue
                folder.rmdir()
                removed += 1
    return removed


def _groups(prefix: str) -> list[Path]:
    """Our groups whose names start with `prefix`, in every controller."""
    parents = [ROOT / PARENT] if _v2() else [ROOT / c / PARENT for c in ("memory", "pids", "cpu")]
    found: list[Path] = []
    for parent in parents:
        with contextlib.suppress(OSError):
            found += [f for f in parent.iterdir() if f.name.startswith(prefix) and f.is_dir()]
    return found


def _write(path: Path, value: str) -> bool:
    try:
        path.write_text(value)
        return True
    except OSError:
        return False


@dataclass
class Cgroup:
    """The groups of one sandbox; `procs_paths()` for joining, `close()` to end them."""

    name: str
    limits: CgroupLimits
    dirs: dict[str, Path] = field(default_factory=dict)

    @classmethod
    def create(cls, limits: CgroupLimits, *, name: str | None = None) -> Cgroup:
        # Named after this process's jobs folder, so that once it is gone its groups are
        # known to be leftovers (remove_groups_of).
        group = cls(name=name or f"job-{jobs_root().name}-{uuid.uuid4().hex[:12]}", limits=limits)
        controllers = available_controllers()
        if not controllers:
            return group
        sweep_stale()
        if _v2():
            parent = ROOT / PARENT
            with contextlib.suppress(OSError):
                parent.mkdir(exist_ok=True)
                (parent / "cgroup.subtree_control").write_text(
                    " ".join(f"+{c}" for c in controllers)
                )
            folder = parent / group.name
            with contextlib.suppress(OSError):
                folder.mkdir()
                group.dirs["unified"] = folder
        else:
            for controller in controllers:
                folder = ROOT / controller / PARENT / group.name
                with contextlib.suppress(OSError):
                    folder.mkdir(parents=True)
                    group.dirs[controller] = folder
        group._apply()
        return group

    def _apply(self) -> None:
        memory = str(self.limits.memory_mb * MiB)
        pids = str(self.limits.pids)
        if "unified" in self.dirs:
            d = self.dirs["unified"]
            _write(d / "memory.max", memory)
            _write(d / "memory.swap.max", "0")
            _write(d / "pids.max", pids)
            _write(d / "cpu.weight", str(self.limits.cpu_weight))
            return
        if "memory" in self.dirs:
            d = self.dirs["memory"]
            _write(d / "memory.limit_in_bytes", memory)
            _write(d / "memory.memsw.limit_in_bytes", memory)  # no escape into swap
        if "pids" in self.dirs:
            _write(self.dirs["pids"] / "pids.max", pids)
        if "cpu" in self.dirs:
            shares = max(2, self.limits.cpu_weight * 1024 // 100)  # v1 default share is 1024
            _write(self.dirs["cpu"] / "cpu.shares", str(shares))

    @property
    def active(self) -> bool:
        return bool(self.dirs)

    def controllers(self) -> list[str]:
        if "unified" in self.dirs:
            return ["memory", "pids", "cpu"]
        return sorted(self.dirs)

    def procs_paths(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs.values()]

    def join(self) -> None:
        """Move the calling process into every group (a pre-exec hook: no allocation worth
        naming, no locks)."""
        me = str(os.getpid())
        for path in self.procs_paths():
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, me.encode())
            finally:
                os.close(fd)

    def open_procs(self) -> list[int]:
        """Write-only descriptors of each group's `cgroup.procs`, for a forked child."""
        return [os.open(p, os.O_WRONLY | os.O_CLOEXEC) for p in self.procs_paths()]

    def memory_peak(self) -> int | None:
        for name, d in self.dirs.items():
            for file in ("memory.peak", "memory.max_usage_in_bytes"):
                if name in ("unified", "memory") and (d / file).is_file():
                    with contextlib.suppress(OSError, ValueError):
                        return int((d / file).read_text())
        return None

    def anon_bytes(self) -> int | None:
        """Anonymous (non-file) memory charged to the group: what its processes allocated,
        counted once however many of them map it. None without a memory controller."""
        d = self.dirs.get("unified") or self.dirs.get("memory")
        if d is None:
            return None
        key = "anon" if "unified" in self.dirs else "total_rss"
        try:
            with open(d / "memory.stat", "rb") as fh:
                for line in fh:
                    name, _, value = line.partition(b" ")
                    if name.decode() == key:
                        return int(value)
        except (OSError, ValueError):
            return None
        return None

    def oom_killed(self) -> bool:
        """Did the kernel kill something in this group for going over its memory limit?"""
        d = self.dirs.get("unified") or self.dirs.get("memory")
        if d is None:
            return False
        file = d / ("memory.events" if "unified" in self.dirs else "memory.oom_control")
        with contextlib.suppress(OSError, ValueError):
            for line in file.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and int(value) > 0:
                    return True
        return False

    def pids_refused(self) -> bool:
        """Did a fork fail because the group reached its process limit?"""
        d = self.dirs.get("unified") or self.dirs.get("pids")
        if d is None:
            return False
        with contextlib.suppress(OSError, ValueError):
            for line in (d / "pids.events").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "max" and int(value) > 0:
                    return True
        return False

    def pids(self) -> list[int]:
        found: set[int] = set()
        for path in self.procs_paths():
            with contextlib.suppress(OSError, ValueError):
                found.update(int(x) for x in Path(path).read_text().split())
        return sorted(found)

    def close(self) -> None:
        """Kill whatever is still in the groups, then remove them."""
        for _ in range(50):
            left = self.pids()
            if not left:
                break
            for pid in left:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)
        for d in self.dirs.values():
            for _ in range(150):  # up to 3 s: a large process takes a while to be torn down
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)
        self.dirs.clear()
