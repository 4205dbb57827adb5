"""The warm interpreter ("zygote"): started once per process, it forks handler workers.

Starting a handler worker afresh means a new interpreter that imports torch (1.5-3 s on a
small machine) for every dataset run and every build's handler check. The zygote
(`handler_host.py --zygote`, see `host/host_zygote.py`) is started once by the evaluator and
builder workers inside bubblewrap (no network, its own PID namespace, read-only binds of the
interpreter and the jobs folder), imports torch and numpy, and then forks a child per worker
in milliseconds. Each child confines itself before anything of the user's runs
(`host/confine.py`): the cell's cgroups, namespaces of its own with itself as PID 1, only its
model and a size-limited scratch in view, rlimits, the cell's own uid with no capabilities,
no_new_privs and the same seccomp program an exec'd worker gets. So two submissions forked from
one zygote are as far apart as two exec'd ones.

The zygote serves only the evaluator's own interpreter and models under the jobs folder
(`sandbox.rootfs.jobs_root`), and only where the sandbox runs as root (it hands out uids); other
workers start a fresh sandboxed interpreter. When the zygote is missing, still starting past
its time limit, or dead, callers fall back to the exec path; a dead zygote is started again
on the next use. `warm_interpreter()` shares one zygote between the workers of an event loop
and makes it `current_zygote()` for everything they run (threads included).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sandbox.children import MESSAGE_BYTES, ForkedProcess, ThreadChild, ZygoteUnavailable
from sandbox.jail import Cell, Jail, current_jail, host_file, zygote_command
from sandbox.jobs import jobs_root

log = logging.getLogger(__name__)

STARTUP_SECONDS = 120.0  # importing torch on a loaded machine, with room to spare
SPAWN_SECONDS = 30.0  # a fork answers in milliseconds; this only bounds a wedged zygote
RETRY_SECONDS = 30.0  # after a failed start, use the exec path this long before trying again


class Zygote:
    """One warm interpreter: `ensure()` starts it (again), `spawn_worker` / `spawn_script`
    fork from it, `close()` ends it and every child it still has."""

    def __init__(
        self,
        *,
        python: str | None = None,
        startup_seconds: float = STARTUP_SECONDS,
        jail: Jail | None = None,
    ):
        self.python = python or sys.executable
        self.startup_seconds = startup_seconds
        self.jail = jail
        self.ready: dict[str, Any] = {}
        self.starts = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._control: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._starting: asyncio.Task[None] | None = None
        self._stderr: asyncio.Task[None] | None = None
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=20)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._retry_at = 0.0
        self._closed = False

    # -- state ---------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def usable(self) -> bool:
        """Started, ready, able to give each child its own namespaces, and still alive."""
        return (
            not self._closed
            and self._proc is not None
            and self._proc.returncode is None
            and self._control is not None
            and bool(self.ready.get("namespaces"))
        )

    def serves(self, python: str | None, folder: Path | None = None) -> bool:
        """Can a worker for `python` (None: the evaluator's own) on the model in `folder` be
        forked from here? The folder must lie in the jobs folder the zygote has in view.

        Paths are compared as given, never resolved: a virtualenv's python is a link to the
        same binary, but its packages are another environment's."""
        if python is not None and os.path.abspath(python) != os.path.abspath(self.python):
            return False
        return folder is None or jobs_relative(folder) is not None

    # -- life cycle ----------------------------------------------------------------------------

    def start_soon(self) -> None:
        """Start warming up in the background (the caller goes on at once)."""
        self._loop = asyncio.get_running_loop()
        if self._starting is None or self._starting.done():
            self._starting = asyncio.create_task(self._start(), name="warm-interpreter")

    async def ensure(self) -> bool:
        """True when a usable zygote is running; starts one (again) when it is not and no
        recent start failed. Runs on the event loop's thread (the parent-death signal is
        tied to the thread that forks)."""
        self._loop = asyncio.get_running_loop()
        if self._closed:
            return False
        if self.usable:
            return True
        if self._starting is None or self._starting.done():
            if time.monotonic() < self._retry_at:
                return False
            self._starting = asyncio.create_task(self._start(), name="warm-interpreter")
        with contextlib.suppress(Exception):
            await asyncio.shield(self._starting)
        return self.usable

    def ensure_from_thread(self, timeout: float) -> bool:
        """`ensure()` for a worker thread: runs it on the loop and waits."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return False
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            return self.usable  # on the loop's own thread: never block it
        try:
            return asyncio.run_coroutine_threadsafe(self.ensure(), loop).result(timeout)
        except Exception:
            return False

    async def _start(self) -> None:
        await self._stop_process()
        self.starts += 1
        jail = self.jail or current_jail()
        self.jail = jail
        if not jail.isolated:
            self._failed(f"not used with WEIGHBRIDGE_SANDBOX={jail.mode}")
            return
        if not jail.privileged:
            self._failed(
                "the sandbox does not run as root here, so it cannot give each forked worker "
                "a user of its own; handler workers start fresh sandboxed interpreters"
            )
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = [
            self.python,
            "-I",
            "-u",
            "-B",
            host_file("handler_host.py"),
            "--zygote",
            str(theirs.fileno()),
            "0",  # its parent (bubblewrap's) is outside its PID namespace
        ]
        command, fds = zygote_command(jail, self.python, argv)
        started = time.monotonic()
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                cwd="/",
                env={"PATH": "/usr/bin:/bin"},
                pass_fds=(theirs.fileno(), *fds),
                start_new_session=True,
            )
        except OSError as exc:
            ours.close()
            self._failed(f"cannot start it: {exc}")
            return
        finally:
            theirs.close()
            for fd in fds:
                os.close(fd)
        assert self._proc.stderr is not None
        self._stderr = asyncio.create_task(self._forward(self._proc.stderr))
        ours.setblocking(False)
        try:
            async with asyncio.timeout(self.startup_seconds):
                data = await asyncio.get_running_loop().sock_recv(ours, MESSAGE_BYTES)
            ready = json.loads(data) if data else {}
        except (TimeoutError, OSError, ValueError) as exc:
            ours.close()
            await self._stop_process()
            self._failed(f"no ready report within {self.startup_seconds:g} s ({exc!r})")
            return
        if not ready.get("ready"):
            ours.close()
            await self._stop_process()
            self._failed("it exited while starting")
            return
        ours.settimeout(SPAWN_SECONDS)
        self._control = ours
        self.ready = ready
        if not ready.get("namespaces"):
            await self._stop_process()
            self._failed(
                "its children cannot enter namespaces of their own; handler workers start "
                "fresh sandboxed interpreters"
            )
            return
        log.info(
            "warm interpreter %s ready in %.1f s (preloaded %s; in bubblewrap)",
            self._proc.pid,
            time.monotonic() - started,
            ", ".join(ready.get("preloaded") or []) or "nothing",
        )

    def _failed(self, why: str) -> None:
        self._retry_at = time.monotonic() + RETRY_SECONDS
        tail = " | ".join(self._stderr_tail)
        log.warning("warm interpreter unavailable: %s%s", why, f": {tail}" if tail else "")

    async def _forward(self, stream: asyncio.StreamReader) -> None:
        """The zygote's own messages (its children write to their own logs) to the log."""
        while line := await stream.readline():
            text = line.decode("utf-8", "replace").rstrip()
            self._stderr_tail.append(text)
            log.debug("warm interpreter: %s", text)

    async def _stop_process(self) -> None:
        control, self._control = self._control, None
        if control is not None:
            control.close()  # the zygote sees EOF, kills its children and exits
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), 3.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._stderr is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._stderr, 1.0)
            self._stderr = None
        self.ready = {}

    async def close(self) -> None:
        self._closed = True
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
            with contextlib.suppress(BaseException):
                await self._starting
        await self._stop_process()

    # -- forking -------------------------------------------------------------------------------

    def _send(self, request: dict[str, Any], fds: list[int]) -> socket.socket:
        """Ask for a child; returns our end of its channel. `fds`: stdin, stdout, stderr,
        then the cgroup descriptors (the channel is put fourth)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            with self._send_lock:
                control = self._control
                if control is None:
                    raise ZygoteUnavailable("the warm interpreter is not running")
                socket.send_fds(
                    control,
                    [json.dumps(request).encode()],
                    [*fds[:3], theirs.fileno(), *fds[3:]],
                )
        except OSError as exc:
            ours.close()
            with self._send_lock:
                if self._control is not None:
                    self._control.close()  # broken: the next ensure() starts a new one
                    self._control = None
            raise ZygoteUnavailable(
                f"the warm interpreter did not take the request: {exc}"
            ) from None
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return ours

    @staticmethod
    def _request(
        mode: str,
        argv: list[str],
        cwd: str,
        env: dict[str, str],
        cell: Cell,
        *,
        model: Path,
        out: Path | None,
    ) -> dict:
        model_rel = jobs_relative(model)
        out_rel = jobs_relative(out) if out is not None else None
        if model_rel is None or (out is not None and out_rel is None):
            raise ZygoteUnavailable("the model is not in the warm interpreter's jobs folder")
        return {
            "op": "spawn",
            "mode": mode,
            "argv": argv,
            "cwd": cwd,
            "env": env,
            **cell.zygote_request(model=model_rel, out=out_rel),
        }

    async def spawn_worker(
        self, *, cell: Cell, model: Path, env: dict[str, str], stderr: int
    ) -> ForkedProcess:
        """A handler worker (`handler_host.py`'s serve loop) in a fresh, confined child."""
        if not await self.ensure():
            raise ZygoteUnavailable("the warm interpreter is not available")
        request = self._request(
            "host", [host_file("handler_host.py")], "/scratch", env, cell, model=model, out=None
        )
        cgroups = cell.cgroup_fds()
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        try:
            channel = self._send(request, [stdin_r, stdout_w, stderr, *cgroups])
        except BaseException:
            for fd in (stdin_w, stdout_r):
                os.close(fd)
            raise
        finally:
            for fd in (stdin_r, stdout_w, *cgroups):
                os.close(fd)
        process = ForkedProcess(channel)
        try:
            await process.connect(stdin_w, stdout_r)
            async with asyncio.timeout(SPAWN_SECONDS):
                await process.started()
        except BaseException as exc:
            process.kill_group()
            process.release()
            if isinstance(exc, TimeoutError):
                raise ZygoteUnavailable(
                    f"the warm interpreter did not fork within {SPAWN_SECONDS:g} s"
                ) from None
            raise
        return process

    def spawn_script(
        self,
        argv: list[str],
        *,
        cell: Cell,
        model: Path,
        out: Path,
        env: dict[str, str],
        output: int,
        ensure_seconds: float = STARTUP_SECONDS,
    ) -> ThreadChild:
        """`python -I -B -u SCRIPT ARGS` in a fresh, confined child, from a worker thread;
        its stdout and stderr go to the descriptor `output`, its stdin is /dev/null."""
        if not self.ensure_from_thread(ensure_seconds):
            raise ZygoteUnavailable("the warm interpreter is not available")
        request = self._request("script", argv, "/scratch", env, cell, model=model, out=out)
        cgroups = cell.cgroup_fds()
        devnull = os.open(os.devnull, os.O_RDONLY)
        try:
            channel = self._send(request, [devnull, output, output, *cgroups])
        finally:
            for fd in (devnull, *cgroups):
                os.close(fd)
        child = ThreadChild(channel)
        try:
            child.started(SPAWN_SECONDS)
        except BaseException:
            child.kill_group()
            child._close()
            raise
        return child


def jobs_relative(folder: Path) -> str | None:
    """`folder` relative to the jobs folder, or None when it lies elsewhere."""
    root = os.path.realpath(jobs_root())
    real = os.path.realpath(folder)
    if real == root or not real.startswith(root + "/"):
        return None
    return os.path.relpath(real, root)


_current: contextvars.ContextVar[Zygote | None] = contextvars.ContextVar(
    "weighbridge_zygote", default=None
)
_shared: dict[asyncio.AbstractEventLoop, list[Any]] = {}


def current_zygote() -> Zygote | None:
    """The warm interpreter of the worker this code runs for, if it has one."""
    return _current.get()


@asynccontextmanager
async def warm_interpreter(
    factory: Callable[[], Zygote] = Zygote,
) -> AsyncIterator[Zygote]:
    """Share one zygote among the workers of this event loop (the builder and evaluator of
    `weighbridge up`); it starts warming up at once and ends with the last worker."""
    loop = asyncio.get_running_loop()
    entry = _shared.get(loop)
    if entry is None:
        zygote = factory()
        zygote.start_soon()
        entry = _shared[loop] = [zygote, 0]
    entry[1] += 1
    token = _current.set(entry[0])
    try:
        yield entry[0]
    finally:
        _current.reset(token)
        entry[1] -= 1
        if entry[1] == 0:
            _shared.pop(loop, None)
            await entry[0].close()
