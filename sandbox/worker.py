"""A model's handler in its own sandboxed worker process, and the protocol to talk to it.

The worker (`sandbox/host/handler_host.py`) runs the build's interpreter inside the one
sandbox of `sandbox.jail`: bubblewrap namespaces (no network), the cell's own unprivileged
uid, seccomp, cgroup and rlimit limits, the model read-only at /model and a size-limited
scratch at /scratch. Two limits are watched from here as well: wall-clock time per batch,
and the resident memory of the worker's process tree (for a reason a person can act on
before the kernel's harder limits strike). Every way it can fail ends in a SandboxError
whose `reason` says what happened and what to do.

When the build uses the evaluator's own interpreter and a warm interpreter is running
(`sandbox.zygote`), the worker is forked from it (torch already imported) and confines
itself the same way before the handler is imported.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import marshal
import os
import shutil
import signal
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

try:
    import fcntl
except ImportError:  # not on Windows
    fcntl = None  # type: ignore[assignment]

from sandbox.failures import SandboxError, SandboxLimits, failure_of, memory_error
from sandbox.jail import Cell, Jail, Job, current_jail, host_file, signalled
from sandbox.rootfs import MODEL, SCRATCH, Mount, readable_view

if TYPE_CHECKING:
    from sandbox.children import ForkedProcess
    from sandbox.zygote import Zygote

HOST = "handler_host.py"
HEADER = struct.Struct(">I")
# One batch's answers, as JSON. The worker writes the frame, so its size is the user's choice;
# decoding a frame of empty lists costs ~20 times its size in objects here. SageMaker's own
# payload limit is 6 MB per request; 16 MB leaves room for long generated texts.
MAX_ANSWER_BYTES = 16 << 20
DECODE_IN_THREAD_BYTES = 1 << 20  # larger answers are decoded off the event loop
MiB = 1 << 20
PIPE_BYTES = 1 << 20  # the request pipe's capacity, where the OS lets it grow


@dataclass
class Answer:
    """One batch's outputs, the handler's own time for it, and the round trip seen here."""

    outputs: list[Any]
    elapsed: float
    round_trip: float


def _frame(message: dict) -> bytes:
    body = b"J" + json.dumps(message, separators=(",", ":")).encode()
    return HEADER.pack(len(body)) + body


def batch_frame(batch_id: int, data: list[dict[str, Any]]) -> bytes:
    """One batch request. Requests (trusted, evaluator -> worker) travel as marshal (format 4,
    stable since Python 3.4): the same JSON types, decoded three times faster than JSON, which
    matters when a model takes about a millisecond a batch. Answers (untrusted) are JSON."""
    body = b"M" + marshal.dumps({"op": "batch", "id": batch_id, "data": data}, 4)
    return HEADER.pack(len(body)) + body


def _widen_pipe(stream: Any) -> None:
    """Let the request pipe hold several batches (Linux's default is 64 KiB, about one batch
    of 64 8x8 images): the worker then reads whole frames without waiting for this process's
    event loop to refill the pipe mid-frame."""
    set_size = getattr(fcntl, "F_SETPIPE_SZ", 1031) if fcntl is not None else None
    if set_size is None or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        pipe = stream.transport.get_extra_info("pipe")
        fcntl.fcntl(pipe.fileno(), set_size, PIPE_BYTES)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _rss(processes: list[psutil.Process]) -> int:
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            total += process.memory_info().rss
    return total


def _tree(process: psutil.Process) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        return [process, *process.children(recursive=True)]
    return [process]


def _summary(cell: Cell) -> str:
    """One line for the log: what isolates the worker."""
    info = cell.describe()
    if info.get("tool") == "none":
        return str(info.get("warning"))
    return (
        f"sandbox: {info['tool']}, uid {info['uid']}, namespaces {','.join(info['namespaces'])}, "
        f"network {info['network']}, seccomp {str(info['seccomp']['sha256'])[:12]}, cgroups "
        f"{','.join(info['cgroups']) or 'none'}"
    )


def _below_init(reaper: psutil.Process) -> list[psutil.Process]:
    """A forked worker's processes: the descendants of the reaper's child (the init)."""
    found: list[psutil.Process] = []
    with contextlib.suppress(psutil.Error):
        for init in reaper.children():
            found.extend(init.children(recursive=True))
    return found


def read_tail(path: Path, limit: int = 4000) -> str:
    """The last `limit` characters of a log file (empty if it does not exist)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


class Sandbox:
    """One worker process hosting one handler; `start`, then `send`/`receive` batches, `close`.

    Up to a few batches may be in flight (sent before the previous answer is read), so the
    worker never waits for the evaluator between batches.
    """

    def __init__(
        self,
        *,
        model_dir: Path,
        handler: str,
        manifest: dict[str, Any],
        workdir: Path,
        log_path: Path,
        limits: SandboxLimits,
        python: str | None = None,
        output_path: Path | None = None,
        batch_size: int = 1,
        model_name: str = "model",
        server_name: str = "weighbridge-local",
        zygote: Zygote | None = None,
        threads: int | None = None,
        jail: Jail | None = None,
    ) -> None:
        self.model_dir = model_dir
        self.handler = handler
        self.manifest = manifest
        self.workdir = workdir
        self.log_path = log_path
        # Where the handler's own output (its stderr: prints, tracebacks) goes: the log, or
        # a file of its own where it must not reach the submission's owner.
        self.output_path = output_path or log_path
        self.limits = limits
        self.jail = jail
        self.cell: Cell | None = None
        # The model as the sandbox's user can read it (a copy when its permissions are
        # private and it is not Weighbridge's to open up), and that copy, to remove.
        self._view: Path = model_dir
        self._view_copy: Path | None = None
        self._described: dict[str, Any] = {}
        self.python = python or sys.executable
        self.batch_size = batch_size
        self.model_name = model_name
        self.server_name = server_name
        self.zygote = zygote
        # Intra-op threads for the handler's torch (OMP_NUM_THREADS), unless the evaluator's
        # own environment sets them: workers side by side share the cores.
        self.threads = threads
        self.proc: Any = None  # an asyncio Process, or a ForkedProcess from the zygote
        self.forked_from: int | None = None  # the zygote's pid when the worker was forked
        self.ready: dict[str, Any] = {}
        self.peak_rss = 0
        self._reported_maxrss = 0
        # A forked worker starts with the warm interpreter's pages (torch, numpy) resident and
        # shared copy-on-write: the memory limit does not charge its anonymous ones to the
        # handler (and the worker reports its own peak from where it started).
        self.inherited_bytes = 0
        self._memory_exceeded: int | None = None
        self._watch: asyncio.Task | None = None
        self._log_file: Any = None
        self._sent_at: list[float] = []

    # -- life cycle ------------------------------------------------------------------------

    @property
    def peak_memory_bytes(self) -> int:
        """Peak resident memory of the worker and its children (watched, or self-reported).

        A forked worker's includes the warm interpreter's pages it shares (torch, numpy), as
        an exec'd worker's includes them once it imports them: the figure is comparable. The
        memory limit counts only what the worker adds (`peak_rss`)."""
        return max(self.peak_rss, self._reported_maxrss) + self.inherited_bytes

    def _note(self, message: str) -> None:
        with self.log_path.open("a", encoding="utf-8") as fh:
            fh.write(f"[evaluator] {message}\n")

    @property
    def sandbox(self) -> dict[str, Any]:
        """What isolated the worker, for its result and the receipt."""
        if not self._described:
            return {}
        return {**self._described, "start": "forked" if self.forked_from else "exec"}

    async def start(self) -> dict[str, Any]:
        """Start the worker and initialise the handler; returns the worker's `ready` report."""
        if not await asyncio.to_thread(os.path.exists, self.python):
            raise FileNotFoundError(f"the build's interpreter {self.python} does not exist here")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        jail = self.jail or current_jail()
        if jail.isolated:
            self._view, self._view_copy = await asyncio.to_thread(readable_view, self.model_dir)
        job = Job(
            python=self.python,
            mounts=(Mount(str(self._view), MODEL),),
            limits=self.limits.kernel(),
        )
        self.cell = await asyncio.to_thread(jail.cell, job)
        self._described = self.cell.describe()  # the cell's uid is given back at close
        limits = (
            f"time limit {self.limits.timeout_seconds:g} s per batch; memory limit "
            f"{self.limits.memory_mb} MB; output limit {self.limits.output_mb} MB"
        )
        self._log_file = self.output_path.open("ab")
        self.proc = await self._fork(limits)
        if self.proc is None:
            argv = [self.python, "-I", "-u", "-B", host_file(HOST, jail)]
            command = self.cell.command(argv, threads=self.threads)
            where = "sandbox: none (UNSAFE)" if not jail.isolated else _summary(self.cell)
            self._note(f"starting the handler worker: {' '.join(argv)}; {where}; {limits}")
            self.proc = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=self._log_file,
                cwd=str(self.workdir),
                env=self.cell.env(threads=self.threads) if not jail.isolated else {},
                start_new_session=True,
                pass_fds=self.cell.pass_fds,
                preexec_fn=self.cell.preexec,
            )
        _widen_pipe(self.proc.stdin)
        self._watch = asyncio.create_task(self._watch_memory())
        inside = jail.isolated
        init = {
            "op": "init",
            "model_dir": MODEL if inside else str(self.model_dir),
            "workdir": SCRATCH if inside else str(self.workdir),
            "handler": self.handler,
            "manifest": self.manifest,
            "batch_size": self.batch_size,
            "model_name": self.model_name,
            "server_name": self.server_name,
            "private_network": inside,
            "allow_exec": False,
        }
        await self._write(_frame(init), "initialisation")
        self._sent_at.append(time.perf_counter())
        reply = await self._read("initialisation")
        self._sent_at.pop(0)
        if not reply.get("ok"):
            raise self._failure(reply, "initialisation")
        self.ready = reply
        return reply

    async def _fork(self, limits: str) -> ForkedProcess | None:
        """The worker forked from the warm interpreter, or None (start a fresh one)."""
        from sandbox.zygote import ZygoteUnavailable, current_zygote

        zygote = self.zygote or current_zygote()
        assert self.cell is not None
        if zygote is None or self.cell.slot is None or not zygote.serves(self.python, self._view):
            return None
        try:
            proc = await zygote.spawn_worker(
                cell=self.cell,
                model=self._view,
                env=self.cell.env(threads=self.threads),
                stderr=self._log_file.fileno(),
            )
        except ZygoteUnavailable as exc:
            self._note(f"{exc}; starting a fresh interpreter instead")
            return None
        self.forked_from = zygote.pid
        with contextlib.suppress(psutil.Error):
            memory = psutil.Process(proc.pid).memory_info()
            self.inherited_bytes = max(0, memory.rss - memory.shared)
        self._note(
            f"started the handler worker {proc.pid} ({HOST}), forked from the warm "
            f"interpreter {zygote.pid} (preloaded: "
            f"{', '.join(zygote.ready.get('preloaded') or []) or 'nothing'}; its "
            f"{self.inherited_bytes / MiB:.0f} MB of shared memory are not counted); "
            f"{_summary(self.cell)}; {limits}"
        )
        return proc

    async def close(self, *, graceful: bool = True) -> None:
        """Ask the worker to exit (unless not `graceful`: a stopped job's worker may be deep
        in a batch), then make sure it and everything it started are gone."""
        proc = self.proc
        if proc is None:
            await asyncio.to_thread(self._close_cell)
            return
        stray: list[psutil.Process] = []
        with contextlib.suppress(psutil.Error):
            stray = psutil.Process(proc.pid).children(recursive=True)
        if graceful and proc.returncode is None and proc.stdin is not None:
            with contextlib.suppress(Exception):
                proc.stdin.write(_frame({"op": "exit"}))
                await asyncio.wait_for(proc.stdin.drain(), 1.0)
                proc.stdin.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 2.0)
        self._kill()
        for child in stray:
            with contextlib.suppress(psutil.Error):
                child.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 5.0)
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        release = getattr(proc, "release", None)
        if release is not None:
            release()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        await asyncio.to_thread(self._close_cell)

    def _close_cell(self) -> None:
        """End what is left in the cell's cgroups and under its uid; give the uid back."""
        if self.cell is not None:
            self.cell.close()
        if self._view_copy is not None:
            shutil.rmtree(self._view_copy, ignore_errors=True)
            self._view_copy = None

    def _kill(self) -> None:
        if self.proc is None:
            return
        kill_group = getattr(self.proc, "kill_group", None)
        if kill_group is not None:  # forked: the zygote reaps it, a pidfd signals it
            kill_group()
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()

    async def _watch_memory(self) -> None:
        assert self.proc is not None
        limit = self.limits.memory_mb * MiB
        try:
            process = psutil.Process(self.proc.pid)
        except psutil.Error:
            return
        # A forked worker runs under a reaper and its namespace's init, both copies of the
        # warm interpreter that only wait: count what is below them. An exec'd one runs under
        # bubblewrap (small): count the whole tree.
        forked = self.forked_from is not None
        tree: list[psutil.Process] = [] if forked else [process]
        polls = 0
        while self.proc.returncode is None:
            if polls % 10 == 0:  # listing children scans /proc: ~1 ms, so not every poll
                tree = _below_init(process) if forked else _tree(process)
            polls += 1
            anon = self.cell.memory_in_use() if self.cell is not None else None
            # The cgroup's anonymous memory is what the handler's processes added, counted
            # once however many of them share it; without one, their resident memory.
            rss = anon if anon is not None else _rss(tree) - self.inherited_bytes
            self.peak_rss = max(self.peak_rss, rss)
            if rss > limit:
                self._memory_exceeded = rss
                self._note(f"resident memory {rss / MiB:.0f} MB is over the limit; stopping")
                self._kill()
                return
            await asyncio.sleep(self.limits.poll_seconds)

    # -- batches ---------------------------------------------------------------------------

    async def send(self, batch_id: int, data: list[dict[str, Any]], *, where: str) -> None:
        """Queue one batch (`data` is TorchServe's list of `{"body": {...}}` items)."""
        await self.send_frame(batch_frame(batch_id, data), where=where)

    async def send_frame(self, frame: bytes, *, where: str) -> None:
        """Queue one batch encoded by `batch_frame`."""
        await self._write(frame, where)
        self._sent_at.append(time.perf_counter())

    async def receive(self, *, where: str) -> Answer:
        """The answer to the oldest batch in flight, or a SandboxError saying what went wrong."""
        reply = await self._read(where)
        sent = self._sent_at.pop(0) if self._sent_at else time.perf_counter()
        if "error" in reply:
            raise self._failure(reply, where)
        self._reported_maxrss = max(self._reported_maxrss, int(reply.get("maxrss_kb", 0)) * 1024)
        outputs = reply.get("outputs")
        if not isinstance(outputs, list):
            raise SandboxError("protocol", f"{where}: the worker sent no outputs")
        return Answer(
            outputs=outputs,
            elapsed=float(reply.get("elapsed", 0.0)),
            round_trip=time.perf_counter() - sent,
        )

    async def infer(self, data: list[dict[str, Any]], *, where: str = "batch") -> Answer:
        await self.send(0, data, where=where)
        return await self.receive(where=where)

    # -- transport -------------------------------------------------------------------------

    async def _write(self, frame: bytes, where: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(frame)
            async with asyncio.timeout(self.limits.timeout_seconds):
                await self.proc.stdin.drain()
        except TimeoutError:
            raise await self._timed_out(where) from None
        except (BrokenPipeError, ConnectionResetError):
            raise await self._died(where) from None

    async def _read(self, where: str) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        stdout = self.proc.stdout
        try:
            async with asyncio.timeout(self.limits.timeout_seconds):
                header = await stdout.readexactly(HEADER.size)
                (size,) = HEADER.unpack(header)
                if size > MAX_ANSWER_BYTES:
                    self._kill()
                    raise SandboxError(
                        "protocol",
                        f"{where}: the answers to one batch are {size / MiB:.1f} MB of JSON, "
                        f"more than the {MAX_ANSWER_BYTES / MiB:g} MB allowed; return smaller "
                        "answers or use a smaller eval.batch_size",
                    )
                body = await stdout.readexactly(size)
        except TimeoutError:
            raise await self._timed_out(where) from None
        except (asyncio.IncompleteReadError, ConnectionResetError):
            raise await self._died(where) from None
        try:
            if size > DECODE_IN_THREAD_BYTES:
                decoded = await asyncio.to_thread(json.loads, body)
            else:
                decoded = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise SandboxError("protocol", f"{where}: unreadable answer: {exc}") from None
        if not isinstance(decoded, dict):
            raise SandboxError("protocol", f"{where}: the worker sent no answer object")
        return decoded

    async def _timed_out(self, where: str) -> SandboxError:
        self._kill()
        seconds = self.limits.timeout_seconds
        self._note(f"{where}: no answer within {seconds:g} s; the worker was stopped")
        if self.proc is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 5.0)
        what = "finish initialising" if where == "initialisation" else "answer"
        return SandboxError(
            "timeout",
            f"{where}: the handler did not {what} within {seconds:g} s "
            "(the task's eval.timeout_seconds); it looks stuck, so it was stopped",
            seconds=seconds,
        )

    async def _died(self, where: str) -> SandboxError:
        assert self.proc is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), 5.0)
        if self._memory_exceeded is not None:
            return memory_error(self.limits, where, watched=self._memory_exceeded)
        if self.cell is not None and self.cell.oom_killed():
            self._note(f"{where}: the kernel stopped the worker at the sandbox's memory limit")
            return memory_error(self.limits, where, watched=None)
        code = signalled(self.proc.returncode)
        if code is None:
            self._kill()
            how = "closed its connection"
        elif code < 0:
            how = f"was killed by {_signal_name(-code)}"
            if -code == signal.SIGKILL:
                how += " (the system may have run out of memory)"
        else:
            how = f"exited with code {code}"
        self._note(f"{where}: the worker {how}")
        return SandboxError("died", f"{where}: the handler's worker process {how}", returncode=code)

    def _failure(self, reply: dict[str, Any], where: str) -> SandboxError:
        if reply.get("error") == "memory":
            self._note(f"{where}: {reply.get('message', '')}")
        return failure_of(reply, where, self.limits)
