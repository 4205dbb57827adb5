"""Confining a child of the warm interpreter (standard library only; loaded by path).

The warm interpreter runs inside bubblewrap as root with its capabilities (so that it can
hand each child a user of its own), with no network and a root filesystem of read-only binds
plus the jobs folder at /jobs. Before any user code runs, each child:

1. joins its cgroups (descriptors of their `cgroup.procs`, opened by the evaluator);
2. enters new mount, PID, network, IPC and UTS namespaces and forks: the grandchild is PID 1
   of a namespace of its own; the child stays outside as its reaper and reports its exit
   status;
3. PID 1 mounts a fresh /proc, the model read-only at /model (and, for a check, its output
   folder at /out), size-limited tmpfs at /scratch and /dev/shm, and an empty tmpfs over
   /jobs, so no other submission's files are in view; then it forks the worker (PID 2) and
   only reaps, as bubblewrap's own init does (so the worker is an ordinary process that
   signals reach, and when it ends everything it started ends with the namespace);
4. the worker sets its rlimits, drops to its own uid/gid with no groups and no capabilities, sets
   no_new_privs and a parent-death signal, and loads the seccomp program the evaluator
   compiled (the same one bubblewrap loads for an exec'd worker).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import signal

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP = 1, 24, 38, 22
SECCOMP_MODE_FILTER = 2
JOBS = "/jobs"


class ConfineError(Exception):
    """A step of the confinement failed: the child must not run user code."""


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_libc_handle = None


def _libc():
    global _libc_handle
    if _libc_handle is None:
        _libc_handle = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc_handle.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
        _libc_handle.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    return _libc_handle


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise ConfineError(f"{what}: {os.strerror(ctypes.get_errno())}")


def _mount(source, target, fstype, flags, data=None) -> None:
    enc = [None if v is None else os.fsencode(v) for v in (source, target, fstype, data)]
    _check(_libc().mount(enc[0], enc[1], enc[2], flags, enc[3]), f"mount {target}")


def join_cgroups(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.write(fd, b"0")  # "0": the writing process
        finally:
            os.close(fd)


def enter_namespaces() -> None:
    flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
    _check(_libc().unshare(flags), "unshare")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing of ours propagates back


def reap(pid: int) -> int:
    """Wait for the grandchild and end with its status (a signal is passed on as a signal)."""
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
        except ChildProcessError:
            return 1
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        signal.signal(number, signal.SIG_DFL)
        os.kill(os.getpid(), number)
    return os.waitstatus_to_exitcode(status) & 0xFF


def init(worker: int) -> int:
    """PID 1 of the worker's namespace: reap every process until the worker ends, then end
    with its status (the kernel then kills whatever is left in the namespace)."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except InterruptedError:
            continue
        except ChildProcessError:
            return 1
        if pid != worker:
            continue
        if os.WIFSIGNALED(status):
            return 128 + os.WTERMSIG(status)  # as bubblewrap reports it
        return os.waitstatus_to_exitcode(status) & 0xFF


def build_view(spec: dict) -> None:
    """Mounts of the grandchild (PID 1 of its namespace, still root)."""
    nosuid = MS_NOSUID | MS_NODEV
    _mount("proc", "/proc", "proc", nosuid | MS_NOEXEC)
    model = spec.get("model")
    if model:
        _mount(os.path.join(JOBS, model), "/model", None, MS_BIND | MS_REC)
        _mount(None, "/model", None, MS_REMOUNT | MS_BIND | MS_RDONLY | nosuid)
    out = spec.get("out")
    if out:
        _mount(os.path.join(JOBS, out), "/out", None, MS_BIND)
        _mount(None, "/out", None, MS_REMOUNT | MS_BIND | nosuid)
    size = int(spec.get("scratch_bytes") or 64 << 20)
    _mount("tmpfs", "/scratch", "tmpfs", nosuid, f"size={size},mode=1777")
    # Its own /dev/shm (POSIX semaphores and shared memory), never shared with a sibling.
    _mount("tmpfs", "/dev/shm", "tmpfs", nosuid | MS_NOEXEC, f"size={size},mode=1777")
    os.mkdir("/scratch/tmp", 0o1777)
    os.chmod("/scratch/tmp", 0o1777)
    _mount("tmpfs", JOBS, "tmpfs", nosuid | MS_RDONLY | MS_NOEXEC, "size=4k,mode=0755")


def drop_privileges(spec: dict) -> None:
    """Rlimits, then the cell's uid/gid with no capabilities, then seccomp."""
    for name, value in (spec.get("rlimits") or {}).items():
        which = getattr(resource, name)
        resource.setrlimit(which, (int(value), int(value)))
    uid, gid = int(spec["uid"]), int(spec["gid"])
    if uid == 0 or gid == 0:
        raise ConfineError("refusing to run user code as root")
    libc = _libc()
    for cap in range(64):  # the bounding set, so nothing can ever be regained
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != 22:
            _check(-1, "drop capability bounding set")
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)  # clears the permitted and effective capabilities
    if os.getresuid() != (uid, uid, uid):
        raise ConfineError("the uid did not change")
    _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "parent-death signal")
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    program = bytes.fromhex(spec.get("seccomp") or "")
    if not program:
        raise ConfineError("no seccomp program given")
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    _check(
        libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0),
        "seccomp",
    )
