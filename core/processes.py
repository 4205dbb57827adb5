"""The build log, and the subprocesses whose output it records (bounded, killed on timeout).

Every step of a build (unpacking, pip, the handler import, torch-model-archiver) writes into
one log file in order; that file is stored as `submissions/<id>/build/log`. A child runs in its
own process group so that a timeout kills it and everything it started. Shared by the builder
and by remote evaluator workers, which build a model's environment themselves
(core.environments).
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

MAX_STEP_OUTPUT = 16 * 1024 * 1024  # bytes of one command's output kept in the log
TAIL_BYTES = 8 * 1024  # what a failure reason quotes


@dataclass(frozen=True)
class ProcessResult:
    returncode: int | None  # None when it was killed for running past its timeout
    timed_out: bool
    seconds: float
    tail: str  # the last TAIL_BYTES of its output

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def last_line(text: str) -> str:
    """The last non-empty line (usually the error itself), for a one-line reason."""
    for line in reversed(text.strip().splitlines()):
        if line.strip():
            return line.strip()
    return ""


class BuildLog:
    """An append-only log file; `run` records a command, its output and how it ended."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "ab")  # noqa: SIM115 - closed by close()
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        with self._lock:
            self._fh.write(text.encode("utf-8", "replace"))
            self._fh.flush()

    def step(self, title: str) -> None:
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        self.write(f"\n==> [{stamp}] {title}\n")

    def close(self) -> None:
        with self._lock:
            self._fh.close()

    def tail(self, n: int = TAIL_BYTES) -> str:
        with open(self.path, "rb") as fh:
            fh.seek(max(0, self.path.stat().st_size - n))
            return fh.read().decode("utf-8", "replace")

    def run(
        self,
        command: Sequence[str],
        *,
        cwd: Path,
        timeout: float,
        env: Mapping[str, str] | None = None,
        pass_fds: Sequence[int] = (),
        preexec_fn: Callable[[], None] | None = None,
        shown: Sequence[str] | None = None,
    ) -> ProcessResult:
        """Run `command`, copying its output (stdout and stderr) into the log as it comes.

        `shown` is what the log prints instead of `command` (a sandboxed command's own part,
        without bubblewrap's long preamble); `pass_fds`/`preexec_fn` as for subprocess."""
        self.write("$ " + " ".join(_quote(c) for c in (shown or command)) + "\n")
        started = time.monotonic()
        proc = subprocess.Popen(
            list(command),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            pass_fds=tuple(pass_fds),
            preexec_fn=preexec_fn,
        )
        tail: collections.deque[bytes] = collections.deque()
        state = {"tail_bytes": 0, "logged": 0, "dropped": 0, "stop": False}

        def pump() -> None:
            assert proc.stdout is not None
            while chunk := proc.stdout.read1(65536):  # type: ignore[attr-defined]
                if state["stop"]:
                    break
                tail.append(chunk)
                state["tail_bytes"] += len(chunk)
                while state["tail_bytes"] - len(tail[0]) >= TAIL_BYTES:
                    state["tail_bytes"] -= len(tail.popleft())
                room = MAX_STEP_OUTPUT - state["logged"]
                if room > 0:
                    with self._lock:
                        self._fh.write(chunk[:room])
                        self._fh.flush()
                    state["logged"] += min(room, len(chunk))
                state["dropped"] += max(0, len(chunk) - max(room, 0))

        reader = threading.Thread(target=pump, name="build-log", daemon=True)
        reader.start()
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
        except BaseException:
            _kill_group(proc)
            raise
        reader.join(timeout=2)
        if reader.is_alive():
            # A child that outlived the command still holds the pipe: end the whole group.
            # (Its id cannot have been reused: Linux keeps a live group's id reserved.)
            _kill_group(proc)
            reader.join(timeout=3)
        state["stop"] = True
        if not reader.is_alive() and proc.stdout is not None:
            proc.stdout.close()
        seconds = time.monotonic() - started
        if state["dropped"]:
            self.write(f"\n[… {state['dropped']} more bytes of output not kept]\n")
        if timed_out:
            self.write(f"\n[killed after {timeout:g} s]\n")
        else:
            self.write(f"\n[exit {proc.returncode} after {seconds:.1f} s]\n")
        text = b"".join(tail)[-TAIL_BYTES:].decode("utf-8", "replace")
        return ProcessResult(
            returncode=None if timed_out else proc.returncode,
            timed_out=timed_out,
            seconds=seconds,
            tail=text,
        )


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _quote(arg: str) -> str:
    if arg and all(c.isalnum() or c in "-_./=:,@+" for c in arg):
        return arg
    return "'" + arg.replace("'", "'\\''") + "'"
