"""The warm interpreter ("zygote"): imports torch and numpy once, then forks a fresh child
per handler worker or handler check (standard library only).

`handler_host.py --zygote` loads this file by path and calls `serve`. The zygote is started
once per evaluator/builder process by `sandbox.zygote`, inside bubblewrap (its own PID,
network, IPC, UTS and mount namespaces; a root filesystem of read-only binds and the jobs
folder), as root so that it can give each child a user of its own. It never runs user code
itself. Each child is confined by `confine.py` (cgroups, new namespaces with the child as PID
1 of its own, its model and scratch only, rlimits, its own uid, no capabilities,
no_new_privs, seccomp) before the handler worker (or a script) starts in it.

Protocol, over a SOCK_SEQPACKET unix socket from the parent (one datagram per message):

    parent -> {"op": "spawn", "mode": "host" | "script", "argv", "cwd", "env", "uid", "gid",
               "rlimits", "scratch_bytes", "model", "out", "seccomp"}
              with descriptors: stdin, stdout, stderr, a per-child channel socket, then one
              `cgroup.procs` per cgroup the child joins
    zygote -> (channel) {"pid": N} with a pidfd for the child, then {"exit": code}
              (code as subprocess reports it: negative for a signal), then closes it

The zygote starts no threads and never touches a GPU; OpenBLAS' worker thread (started when
numpy is imported) is stopped by OpenBLAS' own fork handler at the first fork, which the
namespace probe at start-up performs. When its parent goes away the zygote dies (bubblewrap's
--die-with-parent), and its children with it (their parent-death signals).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import importlib.util
import json
import os
import runpy
import select
import signal
import socket
import sys
import time
import traceback

PR_SET_PDEATHSIG = 1
PRELOAD = ("numpy", "torch")
MAX_MESSAGE = 1 << 20
confine = None  # confine.py, loaded by path by handler_host.py and handed to serve()
EXIT_CONFINE = 71  # a child could not be confined: it ran nothing of the user's


def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _die_with_parent(parent: int) -> None:
    """A parent-death signal; `parent` 0: the parent is outside this PID namespace."""
    if sys.platform.startswith("linux"):
        _libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent and os.getppid() != parent:
        os._exit(3)


def _send(channel: socket.socket, message: dict, fds: list[int] | None = None) -> None:
    with contextlib.suppress(OSError):
        data = json.dumps(message).encode()
        if fds:
            socket.send_fds(channel, [data], fds)
        else:
            channel.send(data)


class Zygote:
    """The fork server: one control socket, one channel per live child."""

    def __init__(self, control: socket.socket, run_host) -> None:
        self.control = control
        self.run_host = run_host
        self.children: dict[int, socket.socket] = {}
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        os.set_blocking(self.wake_r, False)

    # -- start-up ------------------------------------------------------------------------------

    def preload(self) -> dict:
        started = time.perf_counter()
        loaded, failed = [], {}
        for name in PRELOAD:
            if importlib.util.find_spec(name) is None:
                continue
            try:
                __import__(name)
                loaded.append(name)
            except Exception as exc:  # a broken install: children import it (and fail) alone
                failed[name] = f"{type(exc).__name__}: {exc}"
        gc.collect()
        gc.freeze()  # keep the preloaded objects' pages shared with the children
        return {
            "preloaded": loaded,
            "preload_failed": failed,
            "preload_seconds": round(time.perf_counter() - started, 3),
        }

    def probe_namespaces(self) -> bool:
        """Can a child enter namespaces of its own? (Also makes OpenBLAS stop its thread.)"""
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                confine.enter_namespaces()
            except Exception:
                code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status) == 0

    # -- serving -------------------------------------------------------------------------------

    def serve(self) -> int:
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self.wake_w)
        poller = select.poll()  # no descriptor of its own, unlike epoll: nothing for a child
        poller.register(self.control.fileno(), select.POLLIN)
        poller.register(self.wake_r, select.POLLIN)
        while True:
            for fd, _ in poller.poll():
                if fd == self.wake_r:
                    with contextlib.suppress(OSError):
                        while os.read(self.wake_r, 4096):
                            pass
                    self.reap()
                elif not self.receive():
                    self.stop_all()
                    return 0
            self.reap()

    def receive(self) -> bool:
        """One request; False when the parent closed the control socket."""
        try:
            data, fds, _, _ = socket.recv_fds(self.control, MAX_MESSAGE, 8)
        except InterruptedError:
            return True
        except OSError:
            return False
        if not data:
            for fd in fds:
                os.close(fd)
            return False
        try:
            request = json.loads(data)
        except ValueError:
            request = {}
        if request.get("op") != "spawn" or len(fds) < 4:
            for fd in fds:
                os.close(fd)
            return True
        self.spawn(request, fds)
        return True

    def spawn(self, request: dict, fds: list[int]) -> None:
        channel = socket.socket(fileno=fds[3])
        me = os.getpid()
        try:
            pid = os.fork()
        except OSError as exc:  # no memory or no pids left: the parent starts a fresh one
            sys.stderr.write(f"[weighbridge] cannot fork: {exc}\n")
            for fd in fds[:3]:
                os.close(fd)
            channel.close()
            return
        if pid == 0:
            code = 1
            try:
                code = self.child(request, fds, channel, zygote=me)
            except SystemExit as exc:  # end as an exec'd interpreter would
                code = _exit_code(exc.code)
            except BaseException as exc:
                with contextlib.suppress(BaseException):
                    traceback.print_exc()
                if isinstance(exc, KeyboardInterrupt):
                    _flush()
                    signal.signal(signal.SIGINT, signal.SIG_DFL)
                    os.kill(os.getpid(), signal.SIGINT)
            finally:
                _flush()
                os._exit(code)
        for fd in fds[:3]:
            os.close(fd)
        pidfd = None
        with contextlib.suppress(AttributeError, OSError):
            pidfd = os.pidfd_open(pid)
        _send(channel, {"pid": pid}, [pidfd] if pidfd is not None else None)
        if pidfd is not None:
            os.close(pidfd)
        self.children[pid] = channel

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            channel = self.children.pop(pid, None)
            if channel is not None:
                _send(channel, {"exit": os.waitstatus_to_exitcode(status)})
                channel.close()

    def stop_all(self) -> None:
        for pid in list(self.children):
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while self.children and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.01)

    # -- in the child ------------------------------------------------------------------------

    def child(self, request: dict, fds: list[int], channel: socket.socket, *, zygote: int) -> int:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()  # its own session and process group: one killpg ends it and its children
        _die_with_parent(zygote)
        stdin, stdout, stderr = fds[:3]
        os.dup2(stdin, 0)
        os.dup2(stdout, 1)
        os.dup2(stderr, 2)
        try:
            # Into the cell's cgroups first: everything after is counted and limited.
            confine.join_cgroups(fds[4:])
        except OSError as exc:
            os.write(2, f"[weighbridge] cannot join the sandbox's cgroups: {exc}\n".encode())
            return EXIT_CONFINE
        # Forget the zygote's sockets without closing them twice, then close every other
        # descriptor: the child holds nothing but its own three.
        self.control.detach()
        channel.detach()
        for other in self.children.values():
            other.detach()
        os.closerange(3, os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 65536)
        try:
            confine.enter_namespaces()
            pid = os.fork()
        except (confine.ConfineError, OSError) as exc:
            os.write(2, f"[weighbridge] cannot enter the sandbox's namespaces: {exc}\n".encode())
            return EXIT_CONFINE
        if pid:
            # The reaper: holds none of the worker's pipes, ends with its status.
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            os.close(devnull)
            return confine.reap(pid)
        try:
            confine.build_view(request)
            worker = os.fork()  # PID 2 runs the user's code; this PID 1 only reaps
        except (confine.ConfineError, OSError) as exc:
            os.write(2, f"[weighbridge] cannot confine the worker: {exc}\n".encode())
            return EXIT_CONFINE
        if worker:
            return confine.init(worker)
        try:
            os.chdir(request.get("cwd") or "/scratch")
            os.environ.clear()
            os.environ.update({str(k): str(v) for k, v in (request.get("env") or {}).items()})
            confine.drop_privileges(request)
        except (confine.ConfineError, OSError) as exc:
            os.write(2, f"[weighbridge] cannot confine the worker: {exc}\n".encode())
            return EXIT_CONFINE
        _fresh_process_state()
        argv = [str(a) for a in request.get("argv") or []]
        if request.get("mode") == "script":
            return run_script(argv)
        sys.argv = argv
        return int(self.run_host() or 0)


def _fresh_process_state() -> None:
    """What an exec'd interpreter would not share with its siblings."""
    tempfile = sys.modules.get("tempfile")
    if tempfile is not None:
        tempfile.tempdir = None  # TMPDIR is the child's own
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        with contextlib.suppress(Exception):
            numpy.random.seed()  # the global generator would repeat the zygote's stream
    torch = sys.modules.get("torch")
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if torch is not None and threads.isdigit() and int(threads) > 0:
        with contextlib.suppress(Exception):
            torch.set_num_threads(int(threads))  # torch read the zygote's at import


def run_script(argv: list[str]) -> int:
    """Run a script as `python -I -B -u SCRIPT ARGS...` would, returning its exit status."""
    sys.argv = argv
    try:
        runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as exc:
        return _exit_code(exc.code)
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    with contextlib.suppress(Exception):
        sys.stderr.write(f"{code}\n")
    return 1


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def serve(argv: list[str], run_host, confinement) -> int:
    """`handler_host.py --zygote CONTROL_FD PARENT_PID`: preload, report, serve."""
    global confine
    confine = confinement
    control_fd, parent = int(argv[0]), int(argv[1])
    _die_with_parent(parent)
    control = socket.socket(fileno=control_fd)
    zygote = Zygote(control, run_host)
    ready = zygote.preload()
    ready["namespaces"] = zygote.probe_namespaces()
    ready["threads"] = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc") else None
    ready["pid"] = os.getpid()
    _send(control, {"ready": True, **ready})
    return zygote.serve()
