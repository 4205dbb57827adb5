"""The one sandbox for user code: bubblewrap namespaces, an unprivileged uid, seccomp, limits.

`Jail.probe()` finds the tools once per process; `jail.cell(job)` holds what one sandboxed
process needs (a user id of its own, cgroups, the seccomp program) and gives the command
line, the descriptors to pass and the pre-exec hook that start it. What the process sees:

- its own user, PID, network (unless the job needs the package index), IPC, UTS, mount and
  cgroup namespaces (`bwrap --unshare-*`), a fresh /proc that shows only its own processes,
  a minimal /dev, and `--die-with-parent` / `--new-session`;
- a root filesystem of read-only binds: /usr (and the /bin, /lib links), the interpreter's
  prefix and the environment's site-packages, the model at /model, the host modules at
  /run/weighbridge; a size-limited tmpfs at /scratch (cwd, HOME, TMPDIR); a synthetic
  /etc/passwd; nothing of Weighbridge's home, storage, database, configuration or other
  submissions;
- as root, bwrap builds the namespaces and util-linux `setpriv` drops to the cell's own
  uid/gid with no capabilities (bounding set emptied) and no_new_privs before the
  interpreter starts (the interpreter may live under a 0700 /root, which only root can bind);
  run by another user, bwrap maps the caller's uid into a user namespace instead;
- the seccomp filter of `sandbox.seccomp` (`bwrap --seccomp`), rlimits (AS, NPROC, NOFILE,
  FSIZE, CORE=0) and, where writable, memory/pids/cpu cgroups.

The only way around it is the operator's `WEIGHBRIDGE_SANDBOX=unsafe-no-isolation`, which runs
user code as plain processes and is written on every receipt and leaderboard.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox.cgroups import Cgroup, CgroupLimits, available_controllers, remove_groups_of
from sandbox.jobs import jobs_root, sweep_jobs
from sandbox.rootfs import (
    HOST_FILES,
    HOST_SOURCE,
    JOBS,
    MODEL,
    OUT,
    SCRATCH,
    MiB,
    Mount,
    base_filesystem,
    gpu_devices,
    interpreter_roots,
    root_filesystem,
    tmp_link,
)
from sandbox.seccomp import Filter, SeccompUnavailable, compile_filter
from sandbox.uids import UidSlot, acquire_uid, uid_range

# Environment variables a sandboxed process may see (everything else: database URLs, cloud
# credentials, WEIGHBRIDGE_* settings, tokens, stays outside).
PASSED_ENV = (
    "LANG",
    "LC_ALL",
    "TZ",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
)
UNSAFE = "unsafe-no-isolation"
MODES = ("bwrap", UNSAFE)
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


class SandboxUnavailable(Exception):
    """The sandbox cannot be built on this machine; the message says what to install."""


@dataclass(frozen=True)
class Limits:
    """Kernel-enforced limits of one sandboxed process tree."""

    memory_mb: int = 2048  # cgroup memory (and swap) limit
    address_space_mb: int | None = None  # RLIMIT_AS; None: memory_mb + 1024 of reservations
    pids: int = 256  # cgroup pids.max and RLIMIT_NPROC for the cell's uid
    open_files: int = 1024  # RLIMIT_NOFILE
    file_mb: int = 64  # RLIMIT_FSIZE: the largest file it may write, its captured log included
    scratch_mb: int = 512  # the tmpfs at /scratch
    cpu_weight: int = 100  # a CPU share (100 = one ordinary process)

    @property
    def address_space_bytes(self) -> int:
        return (self.address_space_mb or self.memory_mb + 1024) * MiB

    def rlimits(self, *, per_uid: bool) -> dict[int, int]:
        limits = {
            resource.RLIMIT_CORE: 0,
            resource.RLIMIT_NOFILE: self.open_files,
            resource.RLIMIT_FSIZE: self.file_mb * MiB,
        }
        if not gpu_devices():  # CUDA reserves tens of GB of address space at start
            limits[resource.RLIMIT_AS] = self.address_space_bytes
        if per_uid:  # counts every process of the uid: only meaningful for a uid of its own
            limits[resource.RLIMIT_NPROC] = self.pids
        return limits

    def describe(self) -> dict[str, Any]:
        return {
            "memory_mb": self.memory_mb,
            "address_space_mb": None if gpu_devices() else self.address_space_bytes // MiB,
            "pids": self.pids,
            "open_files": self.open_files,
            "file_mb": self.file_mb,
            "scratch_mb": self.scratch_mb,
            "cpu_weight": self.cpu_weight,
        }


@dataclass(frozen=True)
class Job:
    """What one sandboxed process is given."""

    python: str
    mounts: tuple[Mount, ...] = ()
    network: bool = False
    limits: Limits = Limits()
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = SCRATCH


def _passwd(uid: int, gid: int) -> bytes:
    return (
        f"root:x:0:0:root:/root:/usr/sbin/nologin\n"
        f"sandbox:x:{uid}:{gid}:Weighbridge sandbox:{SCRATCH}:/usr/sbin/nologin\n"
        f"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    ).encode()


def _group(gid: int) -> bytes:
    return f"root:x:0:\nsandbox:x:{gid}:\nnogroup:x:65534:\n".encode()


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)  # inherited only through pass_fds
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def sandbox_env(job_env: dict[str, str], *, threads: int | None = None) -> dict[str, str]:
    """The environment inside: the allow-list, the job's own values, HOME and TMPDIR."""
    env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    if threads is not None:
        env.setdefault("OMP_NUM_THREADS", str(max(1, threads)))
    env.update(
        PATH=DEFAULT_PATH,
        LANG=env.get("LANG", "C.UTF-8"),
        HOME=SCRATCH,
        TMPDIR=f"{SCRATCH}/tmp",
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONUNBUFFERED="1",
    )
    env.update(job_env)
    return env


@dataclass
class Jail:
    """The sandbox this machine can build (probed once per process)."""

    mode: str
    bwrap: str | None = None
    bwrap_version: str | None = None
    setpriv: str | None = None
    privileged: bool = False
    controllers: list[str] = field(default_factory=list)

    @property
    def isolated(self) -> bool:
        return self.mode != UNSAFE

    def describe(self) -> dict[str, Any]:
        if not self.isolated:
            return {
                "tool": "none",
                "warning": "UNSAFE: user code ran without isolation "
                f"(WEIGHBRIDGE_SANDBOX={UNSAFE})",
            }
        return {
            "tool": f"bubblewrap {self.bwrap_version}",
            "uid_switch": "setpriv (root builds the namespaces, then drops to the cell's uid)"
            if self.privileged
            else "user namespace (the caller's own uid)",
            "cgroups": self.controllers or "none writable (rlimits only)",
        }

    # -- one sandboxed process ---------------------------------------------------------------

    def cell(self, job: Job) -> Cell:
        return Cell(self, job)


class Cell:
    """One sandboxed process's resources: uid, cgroups, seccomp program, data descriptors.

    `command(argv)`, `pass_fds` and `preexec` start it; `close()` kills what is left and gives
    the uid back. Also usable as a context manager."""

    def __init__(self, jail: Jail, job: Job) -> None:
        self.jail = jail
        self.job = job
        self.slot: UidSlot | None = None
        self.cgroup: Cgroup | None = None
        self.filter: Filter | None = None
        self._fds: list[int] = []
        if not jail.isolated:
            return
        try:
            self.filter = compile_filter(network=job.network)
            if jail.privileged:
                self.slot = acquire_uid()
                self.cgroup = Cgroup.create(
                    CgroupLimits(
                        memory_mb=job.limits.memory_mb,
                        pids=job.limits.pids,
                        cpu_weight=job.limits.cpu_weight,
                    )
                )
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Cell:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def uid(self) -> int:
        return self.slot.uid if self.slot is not None else os.geteuid()

    @property
    def gid(self) -> int:
        return self.slot.gid if self.slot is not None else os.getegid()

    @property
    def pass_fds(self) -> tuple[int, ...]:
        return tuple(self._fds)

    def env(self, *, threads: int | None = None) -> dict[str, str]:
        env = sandbox_env(self.job.env, threads=threads)
        if not self.jail.isolated:  # no /scratch without a sandbox
            env.update(HOME=tempfile.gettempdir(), TMPDIR=tempfile.gettempdir())
        return env

    def command(self, argv: list[str], *, threads: int | None = None) -> list[str]:
        """The full command line: bwrap, its options, setpriv (as root), then `argv`."""
        if not self.jail.isolated:
            return list(argv)
        jail, job = self.jail, self.job
        assert jail.bwrap is not None and self.filter is not None
        args = [jail.bwrap, "--die-with-parent", "--new-session"]
        args += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
        if not job.network:
            args.append("--unshare-net")
        if jail.privileged:
            args += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
            args += ["--cap-add", "CAP_SETPCAP"]
        else:
            args += ["--unshare-user", "--disable-userns"]
        args += ["--hostname", "sandbox"]
        args += root_filesystem(
            job.python, mounts=job.mounts, network=job.network, scratch_mb=job.limits.scratch_mb
        )
        passwd = _memfd("passwd", _passwd(self.uid, self.gid))
        group = _memfd("group", _group(self.gid))
        seccomp = self.filter.memfd()
        self._fds += [passwd, group, seccomp]
        args += ["--ro-bind-data", str(passwd), "/etc/passwd"]
        args += ["--ro-bind-data", str(group), "/etc/group"]
        args += ["--chdir", job.cwd, "--clearenv"]
        for key, value in sorted(self.env(threads=threads).items()):
            args += ["--setenv", key, value]
        args += ["--seccomp", str(seccomp), "--"]
        if jail.privileged:
            assert jail.setpriv is not None
            args += [
                jail.setpriv,
                f"--reuid={self.uid}",
                f"--regid={self.gid}",
                "--clear-groups",
                "--inh-caps=-all",
                "--ambient-caps=-all",
                "--bounding-set=-all",
                "--no-new-privs",
                "--",
            ]
        return args + list(argv)

    def zygote_request(self, *, model: str | None, out: str | None = None) -> dict[str, Any]:
        """What a child of the warm interpreter needs to confine itself like this cell
        (`model`/`out`: folders relative to the jobs folder)."""
        assert self.filter is not None and self.slot is not None
        names = {
            resource.RLIMIT_CORE: "RLIMIT_CORE",
            resource.RLIMIT_NOFILE: "RLIMIT_NOFILE",
            resource.RLIMIT_FSIZE: "RLIMIT_FSIZE",
            resource.RLIMIT_AS: "RLIMIT_AS",
            resource.RLIMIT_NPROC: "RLIMIT_NPROC",
        }
        return {
            "uid": self.uid,
            "gid": self.gid,
            "rlimits": {names[k]: v for k, v in self.job.limits.rlimits(per_uid=True).items()},
            "scratch_bytes": self.job.limits.scratch_mb * MiB,
            "model": model,
            "out": out,
            "seccomp": self.filter.program.hex(),
        }

    def cgroup_fds(self) -> list[int]:
        return self.cgroup.open_procs() if self.cgroup is not None else []

    def preexec(self) -> None:
        """In the forked child, before exec: join the cgroups, set the rlimits."""
        if self.cgroup is not None:
            self.cgroup.join()
        if self.jail.isolated:
            for which, value in self.job.limits.rlimits(per_uid=self.slot is not None).items():
                with contextlib.suppress(ValueError, OSError):
                    resource.setrlimit(which, (value, value))

    def describe(self) -> dict[str, Any]:
        """For the receipt: the tool, namespaces, uid, limits and seccomp profile."""
        info = self.jail.describe()
        if not self.jail.isolated:
            return info
        namespaces = ["pid", "ipc", "uts", "mount", "cgroup"]
        if not self.job.network:
            namespaces.append("net")
        if not self.jail.privileged:
            namespaces.append("user")
        info.update(
            namespaces=sorted(namespaces),
            network="package index only (no secrets)" if self.job.network else "none",
            uid=self.uid,
            gid=self.gid,
            limits=self.job.limits.describe(),
            cgroups=self.cgroup.controllers() if self.cgroup else [],
            seccomp=self.filter.describe() if self.filter else None,
        )
        return info

    def close(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        if self.cgroup is not None:
            self.cgroup.close()
            self.cgroup = None
        if self.slot is not None:
            _kill_uid(self.slot.uid)
            self.slot.release()
            self.slot = None

    def oom_killed(self) -> bool:
        return self.cgroup is not None and self.cgroup.oom_killed()

    def memory_in_use(self) -> int | None:
        """Anonymous memory charged to the cell (None: no memory cgroup here)."""
        return self.cgroup.anon_bytes() if self.cgroup is not None else None

    def pids_refused(self) -> bool:
        return self.cgroup is not None and self.cgroup.pids_refused()


def _kill_uid(uid: int) -> None:
    """Nothing may outlive its cell under its uid (the next holder of the id would inherit
    it): kill any process still running as `uid`."""
    proc = Path("/proc")
    for entry in proc.iterdir() if proc.is_dir() else ():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError):
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("Uid:"):
                    if uid in {int(x) for x in line.split()[1:]}:
                        os.kill(int(entry.name), 9)
                    break


def zygote_command(jail: Jail, python: str, argv: list[str]) -> tuple[list[str], list[int]]:
    """The warm interpreter's sandbox: the same namespaces and root filesystem as a cell, the
    jobs folder at /jobs and mount points for each child's own view, and root's capabilities
    (it hands each child its uid, then the child drops them). It runs only Weighbridge's code.
    Returns the command and the descriptors to pass (close them once it started)."""
    assert jail.bwrap is not None
    first, count = uid_range()
    passwd = _memfd(
        "passwd",
        _passwd(0, 0)
        + "".join(
            f"sandbox{u}:x:{u}:{u}:Weighbridge sandbox:{SCRATCH}:/usr/sbin/nologin\n"
            for u in range(first, first + count)
        ).encode(),
    )
    group = _memfd(
        "group",
        _group(0) + "".join(f"sandbox{u}:x:{u}:\n" for u in range(first, first + count)).encode(),
    )
    args = [jail.bwrap, "--die-with-parent", "--new-session"]
    args += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net"]
    args += ["--unshare-cgroup-try", "--hostname", "sandbox"]
    args += base_filesystem(python, network=False, targets=[JOBS, MODEL, OUT, SCRATCH])
    args += ["--bind", str(jobs_root()), JOBS]
    for folder in (MODEL, OUT, SCRATCH):
        args += ["--perms", "0755", "--dir", folder]
    args += tmp_link(interpreter_roots(python))
    args += ["--ro-bind-data", str(passwd), "/etc/passwd"]
    args += ["--ro-bind-data", str(group), "/etc/group"]
    args += ["--chdir", "/", "--clearenv"]
    for key, value in sorted(sandbox_env({}).items()):
        args += ["--setenv", key, value]
    args += ["--setenv", "HOME", "/", "--"]
    return args + list(argv), [passwd, group]


def signalled(code: int | None) -> int | None:
    """An exit status as subprocess reports it: bubblewrap ends with 128 + N when the process
    in the sandbox was killed by signal N, which becomes -N here."""
    if code is not None and 128 < code < 128 + 65:
        return -(code - 128)
    return code


def host_file(name: str, jail: Jail | None = None) -> str:
    """A host module's path as the sandboxed process sees it (sandbox/host/<name>): bound at
    /run/weighbridge inside the sandbox, its own path without one."""
    if jail is not None and not jail.isolated:
        return str(HOST_SOURCE / name)
    return f"{HOST_FILES}/{name}"


_JAIL: dict[str, Jail] = {}


def probe(mode: str = "bwrap") -> Jail:
    """The jail for `mode` (WEIGHBRIDGE_SANDBOX), checked once per process: SandboxUnavailable
    with one sentence saying what to install when bubblewrap cannot build it here."""
    if mode not in MODES:
        raise SandboxUnavailable(
            f"WEIGHBRIDGE_SANDBOX is {mode!r}; use 'bwrap' (the default) or {UNSAFE!r}"
        )
    cached = _JAIL.get(mode)
    if cached is not None:
        return cached
    jail = Jail(mode=UNSAFE) if mode == UNSAFE else _probe_bwrap()
    _JAIL[mode] = jail
    return jail


def _probe_bwrap() -> Jail:
    if not sys.platform.startswith("linux"):
        raise SandboxUnavailable(
            "the sandbox needs Linux namespaces (bubblewrap); run the evaluator on Linux"
        )
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailable(
            "bubblewrap is not installed, and user code never runs unsandboxed: install it "
            "(Debian/Ubuntu: apt-get install bubblewrap) and start again"
        )
    privileged = os.geteuid() == 0
    setpriv = shutil.which("setpriv") if privileged else None
    if privileged and setpriv is None:
        raise SandboxUnavailable(
            "util-linux setpriv is missing (it drops root to the sandbox's own user): install "
            "util-linux and start again"
        )
    try:
        compile_filter(network=False)
    except SeccompUnavailable as exc:
        raise SandboxUnavailable(
            f"{exc}; install libseccomp2 (apt-get install libseccomp2) and pyseccomp"
        ) from None
    version = subprocess.run(
        [bwrap, "--version"], capture_output=True, text=True, timeout=10, check=False
    ).stdout.split()
    jail = Jail(
        mode="bwrap",
        bwrap=bwrap,
        bwrap_version=version[-1] if version else "unknown",
        setpriv=setpriv,
        privileged=privileged,
        controllers=available_controllers(),
    )
    # One real start proves the namespaces are allowed here (containers may refuse them).
    with jail.cell(Job(python=sys.executable, limits=Limits(memory_mb=256))) as cell:
        run = subprocess.run(
            cell.command(["/usr/bin/true" if Path("/usr/bin/true").exists() else "true"]),
            pass_fds=cell.pass_fds,
            preexec_fn=cell.preexec,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    if run.returncode != 0:
        detail = (run.stderr.strip().splitlines() or ["no message"])[-1]
        raise SandboxUnavailable(
            f"bubblewrap cannot create the sandbox's namespaces here ({detail}); allow "
            "unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1) or run "
            "the workers as root"
        )
    return jail


def reset_probe() -> None:
    """Forget the probed jail (tests that change the machine's tools)."""
    _JAIL.clear()


def configure(mode: str) -> Jail:
    """Choose the sandbox for this process (WEIGHBRIDGE_SANDBOX, read once by its settings);
    raises SandboxUnavailable when it cannot be built here. A worker starting up also removes
    the jobs folders that workers killed before it left behind (never a live one's)."""
    jail = probe(mode)
    _MODE[0] = mode
    sweep_leftovers()
    return jail


def sweep_leftovers() -> None:
    """What workers killed before this one started left behind: their jobs folders (never a
    live process's) and their empty cgroups."""
    gone = sweep_jobs()
    remove_groups_of(p.name for p in gone)


def current_jail() -> Jail:
    """The configured sandbox (bubblewrap unless `configure` said otherwise)."""
    return probe(_MODE[0])


_MODE = ["bwrap"]
