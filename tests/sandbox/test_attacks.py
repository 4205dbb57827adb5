"""Hostile handlers against the sandbox: every attack fails, on both ways a worker starts.

Each test is an attack written as a model's handler and runs twice: in a worker exec'd inside
bubblewrap (`setpriv` to the cell's uid, `bwrap --seccomp`) and in one forked from the warm
interpreter (which confines itself: `sandbox/host/confine.py`). The attack must get nothing:
a SandboxError with a reason a person can act on, or an answer showing every attempt failed
(the handlers report errno names, so a failure says which layer let what through). After each
attack a normal handler still answers on the same path, the warm interpreter is the one the
module started, and no process is left running under a sandbox uid that no sandbox holds.

System calls go through ctypes (`libc.syscall`, x86_64 numbers) rather than Python's wrappers:
the worker's audit hook refuses `os.kill`, sockets' `connect` and program starts before the
kernel sees them, and these tests are about the kernel's layers (namespaces, uid, seccomp,
cgroups, rlimits, mounts).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import platform
import selectors
import shutil
import signal
import socket
import stat
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from sandbox.rootfs import HOST_FILES
from sandbox.uids import lock_folder, uid_range
from sandbox.worker import Sandbox
from sandbox.zygote import Zygote
from tests.sandbox.workers import answer, answer_together, failure, job_folder, make_sandbox

X86_64 = platform.machine() in ("x86_64", "AMD64")
needs_x86_64 = pytest.mark.skipif(not X86_64, reason="system call numbers are x86_64's")
MARKER = "weighbridge-attack-secret-7d1f"  # what no attack may ever read back

GOOD = """
def handle(data, context):
    if data is None:
        return None
    return [{"label": item["body"]["x"] % 2} for item in data]
"""

# Shared by the hostile handlers (prepended to their source): raw system calls, and each
# attempt's outcome as a string, "ok: ..." or the errno's name.
PRELUDE = """
import ctypes, errno, os

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def arg(value):
    if value is None:
        return ctypes.c_void_p(None)
    if isinstance(value, bytes):
        return ctypes.c_char_p(value)
    if isinstance(value, int):
        return ctypes.c_long(value)
    return value


def syscall(number, *args):
    ctypes.set_errno(0)
    result = libc.syscall(ctypes.c_long(number), *map(arg, args))
    return result, ctypes.get_errno()


def outcome(result, code):
    return f"ok: {result}" if result >= 0 else errno.errorcode.get(code, str(code))


def attempt(action):
    try:
        value = action()
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return f"ok: {value}"[:4000]
"""


def hostile(body: str) -> str:
    return PRELUDE + body


@pytest.fixture(scope="module")
async def zygote() -> AsyncIterator[Zygote]:
    warm = Zygote()
    assert await warm.ensure(), "the warm interpreter did not start"
    yield warm
    await warm.close()


@dataclass
class StartPath:
    """One way of starting workers (exec'd, or forked from the module's warm interpreter)."""

    name: str
    zygote: Zygote | None
    tmp_path: Path
    made: list[Sandbox] = field(default_factory=list)

    @property
    def forked(self) -> bool:
        return self.zygote is not None

    def sandbox(self, source: str, name: str = "attack", **options: Any) -> Sandbox:
        sandbox = make_sandbox(self.tmp_path / name, source, zygote=self.zygote, **options)
        self.made.append(sandbox)
        return sandbox


@pytest.fixture(params=["exec", "forked"])
async def path(
    request: pytest.FixtureRequest, tmp_path: Path, zygote: Zygote
) -> AsyncIterator[StartPath]:
    warm = zygote if request.param == "forked" else None
    starts = warm.starts if warm is not None else 0
    started = StartPath(request.param, warm, tmp_path)
    yield started
    for sandbox in started.made:  # the attack ran where the test says it did
        if sandbox.proc is not None:
            assert (sandbox.forked_from is not None) == started.forked, started.name
    # Afterwards: a normal handler answers, the warm interpreter survived, nothing is left.
    assert await answer(started.sandbox(GOOD, "after")) == [{"label": 1}]
    if warm is not None:
        assert warm.usable and warm.starts == starts, "the attack took the warm interpreter"
    assert await asyncio.to_thread(leftovers) == []


def sandbox_uids() -> dict[int, list[int]]:
    """Processes running under a sandbox uid: {uid: [pids]} (from /proc/*/status)."""
    first, count = uid_range()
    found: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("Uid:"):
                    uid = int(line.split()[1])
                    if first <= uid < first + count:
                        found.setdefault(uid, []).append(int(entry.name))
                    break
    return found


def leftovers(seconds: float = 3.0) -> list[str]:
    """Processes under a sandbox uid that no sandbox holds (its lock is free), after giving
    killed ones `seconds` to disappear. Uids still held belong to live sandboxes, this test's
    or another process's on the same machine, and are none of this test's business."""
    deadline = time.monotonic() + seconds
    while True:
        stray = []
        for uid, pids in sandbox_uids().items():
            lock = lock_folder() / f"{uid}.lock"
            try:
                fd = os.open(lock, os.O_RDWR)
            except FileNotFoundError:
                stray += [f"pid {pid} uid {uid} (no lock file)" for pid in pids]
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # held: a live sandbox's processes
            else:
                # Holding the lock, nobody can start a process under the uid: anything
                # still there outlived its sandbox.
                stray += [f"pid {p} uid {uid}" for p in sandbox_uids().get(uid, [])]
            finally:
                os.close(fd)
        if not stray or time.monotonic() > deadline:
            return stray
        time.sleep(0.1)


def assert_all_refused(outcomes: dict[str, str], allowed: dict[str, set[str]]) -> None:
    """Every attempt ended in one of its allowed errno names (a default applies to the rest)."""
    wrong = {
        name: got
        for name, got in outcomes.items()
        if got not in allowed.get(name, allowed.get("*", set()))
    }
    assert not wrong, f"attempts that did not fail as expected: {wrong}"


# -- 1. other processes and host files ---------------------------------------------------------

PEEK = hostile(
    """
def handle(data, context):
    if data is None:
        return None
    me = os.getpid()
    tries = {
        "test root": lambda: open(f"/proc/{TEST_PID}/root{SECRET}").read(),
        "test environ": lambda: open(f"/proc/{TEST_PID}/environ", "rb").read(),
        "test mem": lambda: open(f"/proc/{TEST_PID}/mem", "rb").read(64),
        "test fds": lambda: os.listdir(f"/proc/{TEST_PID}/fd"),
        "test cwd": lambda: os.listdir(f"/proc/{TEST_PID}/cwd"),
        "parent root": lambda: open(f"/proc/{os.getppid() or 1}/root{SECRET}").read(),
        "pid 1 root": lambda: open(f"/proc/1/root{SECRET}").read(),
        "pid 1 environ": lambda: open("/proc/1/environ", "rb").read(),
        "pid 1 mem": lambda: open("/proc/1/mem", "rb").read(64),
        "pid 1 fds": lambda: [os.readlink(f"/proc/1/fd/{f}") for f in os.listdir("/proc/1/fd")],
        "open": lambda: open(SECRET).read(),
        "os.open": lambda: os.read(os.open(SECRET, os.O_RDONLY), 4096),
        "dir_fd /": lambda: os.read(
            os.open(SECRET.lstrip("/"), os.O_RDONLY,
                    dir_fd=os.open("/", os.O_RDONLY | os.O_DIRECTORY)), 4096),
        "dir_fd /model ..": lambda: os.read(
            os.open("../" * 16 + SECRET.lstrip("/"), os.O_RDONLY,
                    dir_fd=os.open("/model", os.O_RDONLY | os.O_DIRECTORY)), 4096),
        "self root": lambda: open(f"/proc/self/root{SECRET}").read(),
        "sibling job": lambda: open(SIBLING).read(),
        "sibling in /jobs": lambda: open(f"/jobs/{SIBLING_IN_JOBS}").read(),
    }
    seen = {name: attempt(action) for name, action in tries.items()}

    class OpenHow(ctypes.Structure):
        _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                    ("resolve", ctypes.c_uint64)]

    for name, target in (("openat2", SECRET), ("openat2 sibling", SIBLING)):
        how = OpenHow(os.O_RDONLY, 0, 0)
        fd, code = syscall(437, -100, target.encode(), ctypes.byref(how), ctypes.sizeof(how))
        seen[name] = outcome(fd, code) if fd < 0 else "ok: " + os.read(fd, 4096).decode()
    pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    return [{"me": me, "pids": pids, "seen": seen}]
"""
)


@needs_x86_64
async def test_other_processes_and_host_files_are_out_of_sight(
    path: StartPath, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text(MARKER)
    # Another submission's file, next to this model's folder in the jobs folder (which the
    # warm interpreter has in view: each child covers it).
    sibling = job_folder(tmp_path) / "labels.jsonl"
    sibling.write_text(MARKER)
    monkeypatch.setenv("WEIGHBRIDGE_ATTACK_SECRET", MARKER)  # in this process's environ
    sandbox = path.sandbox(
        PEEK,
        TEST_PID=os.getpid(),
        SECRET=str(secret),
        SIBLING=str(sibling),
        SIBLING_IN_JOBS=f"{sibling.parent.name}/{sibling.name}",
    )
    (result,) = await answer(sandbox)
    assert MARKER not in json.dumps(result)
    seen = result["seen"]
    # The test process is in no PID namespace the handler can see; the files are in no mount.
    assert_all_refused(
        {k: v for k, v in seen.items() if not k.startswith(("pid 1", "parent"))},
        {"*": {"ENOENT"}},
    )
    # /proc lists the sandbox's own processes only: the handler and its namespace's init
    # (bubblewrap's, or the warm interpreter's child), which is root, so its entries are
    # closed to the handler's uid. Where the handler is PID 1 itself, "pid 1" is no secret.
    me, pids = result["me"], result["pids"]
    assert me in pids and set(pids) <= {1, me} and os.getpid() not in pids
    if me == 1:
        assert seen["pid 1 root"] == seen["parent root"] == "ENOENT"
    else:
        assert_all_refused(
            {k: v for k, v in seen.items() if k.startswith(("pid 1", "parent"))},
            {"*": {"EACCES"}},
        )
    assert secret.read_text() == MARKER


# -- 2. system calls seccomp refuses -----------------------------------------------------------

# (name, x86_64 number, arguments). The arguments are chosen so that, were the filter missing,
# most calls would succeed or fail with another errno (EFAULT, EBADF, ESRCH, EINVAL): EPERM
# then says the filter answered, not merely a missing capability.
CLONE_NEWUSER = 0x10000000
NAMESPACE_FLAGS = {
    "NEWNS": 0x00020000,
    "NEWCGROUP": 0x02000000,
    "NEWUTS": 0x04000000,
    "NEWIPC": 0x08000000,
    "NEWUSER": CLONE_NEWUSER,
    "NEWPID": 0x20000000,
    "NEWNET": 0x40000000,
}
CLONE_NEWTIME = 0x00000080  # for unshare only: in clone's flags these bits are the exit signal
SYSCALLS: list[tuple[str, int, tuple[Any, ...]]] = [
    ("setns", 308, (-1, 0)),
    *((f"unshare {n}", 272, (flag,)) for n, flag in NAMESPACE_FLAGS.items()),
    ("unshare NEWTIME", 272, (CLONE_NEWTIME,)),
    ("mount", 165, (b"none", b"/scratch", b"tmpfs", 0, None)),
    ("umount2", 166, (b"/model", 2)),  # MNT_DETACH
    ("umount", 166, (b"/scratch", 0)),
    ("pivot_root", 155, (b"/scratch", b"/scratch")),
    ("chroot", 161, (b"/scratch",)),
    ("ptrace attach parent", 101, (16, "PARENT", 0, 0)),
    ("ptrace attach 1", 101, (16, 1, 0, 0)),
    ("ptrace traceme", 101, (0, 0, 0, 0)),
    ("process_vm_readv", 310, ("PARENT", None, 0, None, 0, 0)),
    ("process_vm_writev", 311, ("PARENT", None, 0, None, 0, 0)),
    ("kexec_load", 246, (0, 0, None, 0)),
    ("kexec_file_load", 320, (-1, -1, 0, None, 0)),
    ("bpf", 321, (0, None, 0)),
    ("perf_event_open", 298, (None, 0, -1, -1, 0)),
    ("keyctl", 250, (0, -3, 0)),  # KEYCTL_GET_KEYRING_ID of the session keyring
    ("add_key", 248, (b"user", b"weighbridge", b"x", 1, -2)),
    ("request_key", 249, (b"user", b"weighbridge", None, 0)),
    ("init_module", 175, (None, 0, b"")),
    ("finit_module", 313, (-1, b"", 0)),
    ("delete_module", 176, (b"weighbridge", 0)),
    ("open_by_handle_at", 304, (-100, None, 0)),
    ("name_to_handle_at", 303, (-100, b"/", None, None, 0)),
    ("userfaultfd", 323, (1,)),  # UFFD_USER_MODE_ONLY: allowed to anyone without the filter
    ("io_uring_setup", 425, (1, None)),
    ("io_uring_enter", 426, (-1, 0, 0, 0, None, 0)),
    ("io_uring_register", 427, (-1, 0, None, 0)),
    ("open_tree", 428, (-100, b"/", 0)),
    ("move_mount", 429, (-1, b"", -1, b"", 0)),
    ("fsopen", 430, (b"tmpfs", 0)),
    ("fsconfig", 431, (-1, 0, None, None, 0)),
    ("fsmount", 432, (-1, 0, 0)),
    ("fspick", 433, (-100, b"/", 0)),
    ("mount_setattr", 442, (-100, b"/", 0, None, 0)),
    ("swapon", 167, (None, 0)),
    ("swapoff", 168, (None,)),
    ("reboot", 169, (0, 0, 0, None)),  # bad magic: EINVAL without the filter
    ("acct", 163, (b"/scratch/acct",)),
    ("quotactl", 179, (0, None, 0, None)),
    ("fanotify_init", 300, (0, 0)),
    ("lookup_dcookie", 212, (0, None, 0)),
    *(
        (f"clone {n}", 56, (flag | signal.SIGCHLD, 0, None, None, 0))
        for n, flag in NAMESPACE_FLAGS.items()
    ),
    ("clone3", 435, (None, 0)),
]
ESCAPE = hostile(
    """
def handle(data, context):
    if data is None:
        return None
    parent = os.getppid() or 1
    seen = {}
    for name, number, args in CALLS:
        args = [parent if a == "PARENT" else a for a in args]
        result, code = syscall(number, *args)
        if result == 0 and name.startswith("clone"):  # a child: it must not answer
            os._exit(0)
        seen[name] = outcome(result, code)
    return [seen]
"""
)


@needs_x86_64
async def test_escape_system_calls_are_refused_by_seccomp(path: StartPath) -> None:
    calls = [(name, number, list(args)) for name, number, args in SYSCALLS]
    sandbox = path.sandbox(ESCAPE, CALLS=calls)
    (seen,) = await answer(sandbox)
    assert set(seen) == {name for name, _, _ in SYSCALLS}
    # clone3's flags are in memory the filter cannot read: it answers ENOSYS so that the C
    # library falls back to clone, whose flags it checks.
    assert_all_refused(seen, {"*": {"EPERM"}, "clone3": {"ENOSYS"}})


OTHER_ABIS = hostile(
    """
import mmap, signal


def in_child(action):
    # A forked child makes the call: the filter kills the caller, and the handler reports how.
    pid = os.fork()
    if pid == 0:
        action()
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return signal.Signals(os.WTERMSIG(status)).name
    return f"exit {os.waitstatus_to_exitcode(status)}"


def int80(number, argument):
    # push rbx; mov eax, number; mov ebx, argument; int 0x80; pop rbx; ret
    code = (b"\\x53\\xb8" + number.to_bytes(4, "little") + b"\\xbb"
            + argument.to_bytes(4, "little") + b"\\xcd\\x80\\x5b\\xc3")
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(code)
    return ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(page)))()


def handle(data, context):
    if data is None:
        return None
    return [{
        "i386 unshare": in_child(lambda: int80(310, CLONE_NEWUSER)),
        "i386 getpid": in_child(lambda: int80(20, 0)),
        "x32 unshare": in_child(lambda: syscall(0x40000000 | 272, CLONE_NEWUSER)),
    }]
"""
)


@needs_x86_64
async def test_system_calls_of_other_abis_kill_the_caller(path: StartPath) -> None:
    # The filter's numbers are x86_64's; the i386 (int 0x80) and x32 numbering would pass
    # them by, so libseccomp's architecture check kills any call made through them.
    (seen,) = await answer(path.sandbox(OTHER_ABIS, CLONE_NEWUSER=CLONE_NEWUSER))
    assert seen == {"i386 unshare": "SIGSYS", "i386 getpid": "SIGSYS", "x32 unshare": "SIGSYS"}


# -- 3. network ----------------------------------------------------------------------------------


class Listener:
    """A TCP listener on 127.0.0.1 and an abstract unix socket, with a thread accepting:
    `connections` lists whoever reached either."""

    def __init__(self) -> None:
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.abstract = f"\0weighbridge-attack-{os.getpid()}-{id(self)}"
        self.unix.bind(self.abstract)
        self.unix.listen()
        self.port = self.tcp.getsockname()[1]
        self.connections: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        with selectors.DefaultSelector() as selector:
            for listener in (self.tcp, self.unix):
                selector.register(listener, selectors.EVENT_READ, listener)
            while not self._stop.is_set():
                for key, _ in selector.select(0.05):
                    peer, address = key.data.accept()
                    self.connections.append(f"{key.data.family.name} {address!r}")
                    peer.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.tcp.close()
        self.unix.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    opened = Listener()
    yield opened
    opened.close()


NETWORK = hostile(
    """
import socket, struct


def handle(data, context):
    if data is None:
        return None
    seen = {}
    for family, kinds in (
        ("AF_INET", ("SOCK_STREAM", "SOCK_DGRAM", "SOCK_RAW")),
        ("AF_INET6", ("SOCK_STREAM", "SOCK_DGRAM")),
        ("AF_NETLINK", ("SOCK_RAW", "SOCK_DGRAM")),
        ("AF_PACKET", ("SOCK_RAW", "SOCK_DGRAM")),
    ):
        for kind in kinds:
            make = lambda: socket.socket(getattr(socket, family), getattr(socket, kind))
            seen[f"{family} {kind}"] = attempt(lambda: make().fileno())
    # The raw system calls, with a connect() to the test's listener should a socket appear.
    fd, code = syscall(41, socket.AF_INET, socket.SOCK_STREAM, 0)
    seen["socket(2)"] = outcome(fd, code)
    if fd >= 0:
        # struct sockaddr_in: the family in host order, then port and address in network order
        address = struct.pack("=H", socket.AF_INET) + struct.pack("!H4s8x", PORT, b"\\x7f\\0\\0\\1")
        seen["connect(2)"] = outcome(*syscall(42, fd, address, len(address)))
    # AF_UNIX is allowed (multiprocessing needs it), but abstract names live in the network
    # namespace: the test's listener is in another one.
    def unix():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as peer:
            peer.connect(ABSTRACT)
    seen["abstract unix"] = attempt(unix)
    lines = open("/proc/self/net/dev").read().splitlines()[2:]
    seen["interfaces"] = sorted(line.split(":")[0].strip() for line in lines)
    return [seen]
"""
)


@needs_x86_64
async def test_no_network_but_its_own_loopback(path: StartPath, listener: Listener) -> None:
    sandbox = path.sandbox(NETWORK, PORT=listener.port, ABSTRACT=listener.abstract)
    (seen,) = await answer(sandbox)
    assert seen.pop("interfaces") == ["lo"]  # a network namespace of its own
    # seccomp answers every family but AF_UNIX with EAFNOSUPPORT (AF_NETLINK would otherwise
    # open for anyone); the abstract name is not in the sandbox's network namespace.
    assert_all_refused(seen, {"*": {"EAFNOSUPPORT"}, "abstract unix": {"ECONNREFUSED"}})
    await asyncio.sleep(0.2)  # anything in flight reaches the accepting thread
    assert listener.connections == []


async def test_connecting_through_python_is_a_violation(
    path: StartPath, listener: Listener
) -> None:
    # The audit hook sees the address before the kernel refuses the socket: the reason names it.
    source = """
    import socket

    def handle(data, context):
        if data is None:
            return None
        try:
            socket.create_connection(("127.0.0.1", PORT), timeout=1)
        except OSError:
            pass
        return [{"label": 1}]
    """
    error = await failure(path.sandbox(source, PORT=listener.port))
    assert error.kind == "violation" and "network" in error.reason
    assert listener.connections == []


# -- 4. signals ----------------------------------------------------------------------------------

KILL = hostile(
    """
def handle(data, context):
    if data is None:
        return None
    seen = {"me": os.getpid()}
    targets = [("test", TEST_PID), ("test group", -TEST_PGID), ("pid 1", 1), ("everyone", -1)]
    targets += [(f"neighbour {pid}", pid) for pid in NEIGHBOURS]
    for name, pid in targets:
        seen[name] = outcome(*syscall(62, pid, 9))  # kill(pid, SIGKILL)
    return [seen]
"""
)


@needs_x86_64
async def test_signals_reach_nothing_outside_the_sandbox(path: StartPath) -> None:
    neighbour = path.sandbox(GOOD, "neighbour")
    await neighbour.start()
    try:
        assert neighbour.proc is not None and neighbour.cell is not None
        pids = [neighbour.proc.pid, *sandbox_uids().get(neighbour.cell.uid, [])]
        attacker = path.sandbox(KILL, TEST_PID=os.getpid(), TEST_PGID=os.getpgrp(), NEIGHBOURS=pids)
        (seen,) = await answer(attacker)
        me = seen.pop("me")
        # Outside its PID namespace nothing exists for it (ESRCH). PID 1 is the namespace's
        # init, root: EPERM; or, where the handler is PID 1 itself, the kernel drops a SIGKILL
        # sent to a namespace's init from inside (it lived to answer).
        pid_1 = {"ok: 0"} if me == 1 else {"EPERM"}
        assert_all_refused(seen, {"*": {"ESRCH"}, "pid 1": pid_1})
        # Python's os.kill does not even reach the kernel: the audit hook names the attempt.
        source = """
        import os, signal

        def handle(data, context):
            if data is None:
                return None
            os.kill(TEST_PID, signal.SIGKILL)
            return [{"label": 1}]
        """
        error = await failure(path.sandbox(source, "os.kill", TEST_PID=os.getpid()))
        assert error.kind == "violation" and f"os.kill({os.getpid()})" in error.reason
        # The neighbour, alive all along, still answers.
        answered = await neighbour.infer([{"body": {"x": 3}}])
        assert answered.outputs == [{"label": 1}]
    finally:
        await neighbour.close()
    os.kill(os.getpid(), 0)  # and so does this process, obviously


# -- 5. fork bombs -------------------------------------------------------------------------------

ENDLESS_BOMB = """
import os


def handle(data, context):
    if data is None:
        return None
    while True:  # every child forks too, forever
        try:
            os.fork()
        except OSError:
            pass
"""
COUNTED_BOMB = hostile(
    """
import time


def handle(data, context):
    if data is None:
        return None
    born = 0
    while True:
        try:
            pid = os.fork()
        except OSError as exc:
            return [{"born": born, "error": errno.errorcode[exc.errno]}]
        if pid == 0:  # the children stay (and keep their pids) until the sandbox ends
            time.sleep(1000)
            os._exit(0)
        born += 1
"""
)


async def test_an_endless_fork_bomb_is_stopped(path: StartPath) -> None:
    # The pids cgroup (and RLIMIT_NPROC) cap the copies; the handler then fails on EAGAIN,
    # or the memory watch or the time limit ends it.
    started = time.monotonic()
    error = await failure(path.sandbox(ENDLESS_BOMB, timeout=3))
    assert error.kind in ("handler", "memory", "timeout"), error.reason
    assert time.monotonic() - started < 3 + 5


async def test_a_fork_bomb_meets_the_process_limit(path: StartPath) -> None:
    # The memory watch counts the cgroup's anonymous memory (each copy adds a few MB), so
    # the kernel's process limit is what answers.
    sandbox = path.sandbox(COUNTED_BOMB, timeout=5)
    sandbox.limits = replace(sandbox.limits, pids=32)
    (result,) = await answer(sandbox)
    # The pids cgroup (and RLIMIT_NPROC for the cell's uid) refuse the 33rd process.
    assert result["error"] == "EAGAIN" and 0 < result["born"] < 32


# -- 6. memory -----------------------------------------------------------------------------------

MEMORY_BOMBS = {
    # One huge allocation: RLIMIT_AS refuses it at once (MemoryError, reported as memory).
    "8 GB at once": """
    def handle(data, context):
        if data is None:
            return None
        block = bytearray(8 << 30)
        return [{"n": len(block)}]
    """,
    # Growing 100 MB at a time, every page touched: the resident-memory watch stops it.
    "100 MB chunks": """
    def handle(data, context):
        if data is None:
            return None
        kept = []
        while True:
            kept.append(b"x" * (100 << 20))
    """,
}


@pytest.mark.parametrize("bomb", sorted(MEMORY_BOMBS))
async def test_memory_bombs_hit_the_memory_limit(path: StartPath, bomb: str) -> None:
    error = await failure(path.sandbox(MEMORY_BOMBS[bomb], memory_mb=300))
    assert error.kind == "memory", error.reason
    assert "memory" in error.reason and "300 MB" in error.reason


# -- 7. floods -----------------------------------------------------------------------------------

SCRATCH_FLOOD = hostile(
    """
def handle(data, context):
    if data is None:
        return None
    chunk = b"z" * (1 << 20)
    written, files, too_large = 0, 0, False
    try:
        while True:  # file after file: each stops at RLIMIT_FSIZE, the tmpfs at its size
            with open(f"/scratch/flood-{files}", "wb", buffering=0) as fh:
                files += 1
                while True:
                    try:
                        written += fh.write(chunk)
                    except OSError as exc:
                        if exc.errno != errno.EFBIG:
                            raise
                        too_large = True
                        break
    except OSError as exc:
        return [{"mb": written >> 20, "files": files, "too_large": too_large,
                 "error": errno.errorcode[exc.errno]}]
"""
)


async def test_filling_scratch_stops_at_its_size(path: StartPath, tmp_path: Path) -> None:
    sandbox = path.sandbox(SCRATCH_FLOOD, timeout=10)
    # 128 MB of tmpfs (memory charged to the cell): two files at the 64 MB file limit.
    sandbox.limits = replace(sandbox.limits, scratch_mb=128)
    (result,) = await answer(sandbox)
    assert result["too_large"]  # EFBIG: RLIMIT_FSIZE
    assert result["error"] == "ENOSPC" and 120 <= result["mb"] <= 128
    # Nothing reached the host: the model folder and this test's folder hold no flood.
    assert sorted(p.name for p in sandbox.model_dir.iterdir()) == ["handler.py"]
    assert bytes_under(tmp_path) < 1 << 20


def bytes_under(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


async def test_flooding_stdout_stops_at_the_output_limit(path: StartPath, tmp_path: Path) -> None:
    source = """
    def handle(data, context):
        if data is None:
            return None
        line = "y" * (1 << 20)
        for _ in range(200):  # 200 MB
            print(line)
        return [{"label": 1}]
    """
    sandbox = path.sandbox(source)
    error = await failure(sandbox)
    # RLIMIT_FSIZE on the log (64 MB): print raises EFBIG, and the worker says so.
    assert error.kind == "output", error.reason
    assert "more than 64 MB of output" in error.reason
    assert sandbox.log_path.stat().st_size <= (64 << 20) + (64 << 10)


async def test_a_huge_answer_frame_is_refused_before_it_is_read(path: StartPath) -> None:
    # Past the host's encoder: the handler writes a frame header of its own onto the protocol
    # pipe, announcing 1 GB of answers that would cost the evaluator ~20 GB to decode.
    source = """
    import fcntl, os, struct, time

    def handle(data, context):
        if data is None:
            return None
        for fd in map(int, os.listdir("/proc/self/fd")):
            try:
                link = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            if link.startswith("pipe:") and flags & os.O_ACCMODE == os.O_WRONLY:
                os.write(fd, struct.pack(">I", 1 << 30) + b"[]," * 1000)
        time.sleep(60)
    """
    started = time.monotonic()
    error = await failure(path.sandbox(source, timeout=30))
    assert error.kind == "protocol" and "more than the 16 MB allowed" in error.reason
    assert time.monotonic() - started < 10


# -- 8. time -------------------------------------------------------------------------------------

SLEEPERS = {
    "initialisation": """
    import time

    def handle(data, context):
        time.sleep(3600)
    """,
    "batch": """
    import time

    def handle(data, context):
        if data is None:
            return None
        time.sleep(3600)
    """,
}


@pytest.mark.parametrize("where", sorted(SLEEPERS))
async def test_sleeping_forever_hits_the_time_limit(path: StartPath, where: str) -> None:
    started = time.monotonic()
    error = await failure(path.sandbox(SLEEPERS[where], timeout=1.5))
    assert error.kind == "timeout" and error.reason.startswith(f"{where}: ")
    assert "within 1.5 s" in error.reason
    assert time.monotonic() - started < 1.5 + 5


# -- 9. writes outside scratch -------------------------------------------------------------------

WRITES = hostile(
    """
import sys


def create(path):
    with open(path, "w") as fh:
        fh.write("owned")


def handle(data, context):
    if data is None:
        return None
    targets = {
        "/model": "/model/planted.py",
        "/model/handler.py": "/model/handler.py",
        "/usr": "/usr/planted",
        "/usr/bin": "/usr/bin/planted",
        "/": "/planted",
        "/etc": "/etc/planted",
        "/etc/passwd": "/etc/passwd",
        "/dev": "/dev/planted",
        "host modules": HOST + "/handler_host.py",
        "interpreter": sys.prefix + "/planted",
        "stdlib": os.path.dirname(os.__file__) + "/planted.py",
        "core_pattern": "/proc/sys/kernel/core_pattern",
    }
    seen = {name: attempt(lambda: create(target)) for name, target in targets.items()}
    seen["chmod /model"] = attempt(lambda: os.chmod("/model/handler.py", 0o777))
    seen["rename /model"] = attempt(lambda: os.rename("/model/handler.py", "/model/x.py"))
    seen["scratch"] = attempt(lambda: create("/scratch/mine"))  # the writable places
    seen["shm"] = attempt(lambda: create("/dev/shm/mine"))  # its own, for multiprocessing
    seen["shm listing"] = sorted(os.listdir("/dev/shm"))
    return [seen]
"""
)


async def test_writes_outside_scratch_are_refused(path: StartPath) -> None:
    sandbox = path.sandbox(WRITES, HOST=HOST_FILES)
    (seen,) = await answer(sandbox)
    assert seen.pop("scratch") == "ok: None" and seen.pop("shm") == "ok: None"
    assert seen.pop("shm listing") == ["mine"]  # nothing of another sandbox's
    # Read-only binds answer EROFS; the root tmpfs, /dev and /proc's files belong to root.
    assert_all_refused(seen, {"*": {"EROFS", "EACCES"}, "chmod /model": {"EROFS", "EPERM"}})
    assert sorted(p.name for p in sandbox.model_dir.iterdir()) == ["handler.py"]


# -- 10. privileges ------------------------------------------------------------------------------

PRIVILEGES = hostile(
    """
def handle(data, context):
    if data is None:
        return None
    seen = {
        "setuid(0)": attempt(lambda: os.setuid(0)),
        "setresuid(0)": attempt(lambda: os.setresuid(0, 0, 0)),
        "setgid(0)": attempt(lambda: os.setgid(0)),
        "setgroups": attempt(lambda: os.setgroups([0])),
    }
    status = dict(
        line.split(":", 1) for line in open("/proc/self/status").read().splitlines()
    )
    for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp"):
        seen[key] = status[key].strip()
    # The bundle's setuid-root copy of id(1), run by a forked child through libc's execv
    # (Python's os.exec* would be refused by the audit hook first).
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        os.dup2(write, 1)
        argv = (ctypes.c_char_p * 3)(SUID.encode(), b"-u", None)
        libc.execv(SUID.encode(), argv)
        os._exit(127)
    os.close(write)
    output = b""
    while chunk := os.read(read, 4096):
        output += chunk
    _, status = os.waitpid(child, 0)
    seen["setuid binary"] = [output.decode().strip(), os.waitstatus_to_exitcode(status)]
    seen["uid"] = os.getuid()
    return [seen]
"""
)


@needs_x86_64
async def test_no_way_back_to_root(path: StartPath) -> None:
    sandbox = path.sandbox(PRIVILEGES, SUID="/model/suid-id")
    planted = sandbox.model_dir / "suid-id"
    shutil.copy2("/usr/bin/id", planted)
    if os.geteuid() == 0:
        os.chown(planted, 0, 0)
    planted.chmod(0o4755)
    assert planted.stat().st_mode & stat.S_ISUID
    (seen,) = await answer(sandbox)
    uid = seen.pop("uid")
    for call in ("setuid(0)", "setresuid(0)", "setgid(0)", "setgroups"):
        assert seen[call] == "EPERM", (call, seen[call])
    zero = "0000000000000000"
    assert [seen[k] for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")] == [zero] * 5
    assert seen["NoNewPrivs"] == "1" and seen["Seccomp"] == "2"
    # nosuid binds and no_new_privs: the setuid bit gives nothing, it runs as the cell's uid.
    assert seen["setuid binary"] == [str(uid), 0]


# -- 11. identity --------------------------------------------------------------------------------

WHO = """
import os


def handle(data, context):
    if data is None:
        return None
    return [{"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(),
             "groups": os.getgroups()}]
"""


async def test_each_sandbox_has_a_uid_of_its_own(path: StartPath) -> None:
    first, count = uid_range()
    sandboxes = [path.sandbox(WHO, f"who-{n}") for n in range(2)]
    seen = await answer_together(sandboxes)  # both alive at once
    for me in seen:
        assert first <= me["uid"] < first + count and me["uid"] != 0
        assert me["euid"] == me["uid"] == me["gid"] and me["groups"] == []
    assert seen[0]["uid"] != seen[1]["uid"]
