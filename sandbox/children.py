"""The warm interpreter's children as the parent holds them: a pidfd to signal them safely,
their exit status, and (for handler workers) their pipes as asyncio streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import time

MESSAGE_BYTES = 1 << 16


class ZygoteUnavailable(Exception):
    """No warm interpreter to fork from right now; the caller starts a fresh interpreter."""


class _Child:
    """A child of the zygote: its pid, a pidfd to signal it safely, and its exit status."""

    def __init__(self, channel: socket.socket) -> None:
        self.channel = channel
        self.pid = 0
        self.pidfd: int | None = None
        self.returncode: int | None = None

    def _take(self, data: bytes, fds: list[int]) -> None:
        """One message from the zygote about this child."""
        message = json.loads(data)
        if "pid" in message:
            # The zygote's number is in its own PID namespace; ours comes from the pidfd.
            self.pid = 0
            if fds:
                self.pidfd = fds[0]
                self.pid = _pid_of(fds[0])
                for extra in fds[1:]:
                    os.close(extra)
        elif "exit" in message:
            self.returncode = int(message["exit"])
            for fd in fds:
                os.close(fd)

    def _lost(self) -> None:
        """The channel closed without an exit status: the zygote died, and took the child
        with it (its parent-death signal)."""
        if self.returncode is None:
            self.returncode = -signal.SIGKILL

    def kill(self) -> None:
        if self.returncode is not None:
            return
        if self.pidfd is not None:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    def kill_group(self) -> None:
        """Kill the child and everything in its process group (what it started, which may
        outlive it: the group's id stays reserved while any member lives)."""
        if self.pid:
            with contextlib.suppress(OSError):
                os.killpg(self.pid, signal.SIGKILL)
        self.kill()

    def _close(self) -> None:
        with contextlib.suppress(OSError):
            self.channel.close()
        if self.pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self.pidfd)
            self.pidfd = None


def _pid_of(pidfd: int) -> int:
    """The process a pidfd refers to, as numbered in this process's PID namespace."""
    try:
        with open(f"/proc/self/fdinfo/{pidfd}", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Pid:"):
                    return max(0, int(line.split()[1]))
    except (OSError, ValueError):
        pass
    return 0


class ForkedProcess(_Child):
    """A handler worker forked by the zygote, shaped like `asyncio.subprocess.Process`
    (`pid`, `stdin`, `stdout`, `returncode`, `wait()`, `kill()`) plus `kill_group()`."""

    stdin: asyncio.StreamWriter
    stdout: asyncio.StreamReader

    def __init__(self, channel: socket.socket) -> None:
        super().__init__(channel)
        self._loop = asyncio.get_running_loop()
        self._started: asyncio.Future[None] = self._loop.create_future()
        self._exited: asyncio.Future[None] = self._loop.create_future()
        self._transports: list[asyncio.BaseTransport] = []
        channel.setblocking(False)
        self._loop.add_reader(channel.fileno(), self._on_channel)
        self._reading = True

    async def connect(self, stdin_fd: int, stdout_fd: int) -> None:
        """Own the parent's ends of the worker's stdin and stdout as asyncio streams."""
        loop = self._loop
        reader = asyncio.StreamReader(loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport, _ = await loop.connect_read_pipe(
            lambda: protocol, os.fdopen(stdout_fd, "rb", buffering=0)
        )
        self._transports.append(transport)
        self.stdout = reader
        wtransport, wprotocol = await loop.connect_write_pipe(
            lambda: asyncio.streams.FlowControlMixin(loop=loop),
            os.fdopen(stdin_fd, "wb", buffering=0),
        )
        self._transports.append(wtransport)
        self.stdin = asyncio.StreamWriter(wtransport, wprotocol, None, loop)

    def _on_channel(self) -> None:
        try:
            data, fds, _, _ = socket.recv_fds(self.channel, MESSAGE_BYTES, 2)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, fds = b"", []
        if not data:
            self._stop_reading()
            self._lost()
            if not self._started.done():
                self._started.set_exception(ZygoteUnavailable("the warm interpreter went away"))
            self._settle()
            return
        self._take(data, fds)
        if self.pid and not self._started.done():
            self._started.set_result(None)
        if self.returncode is not None:
            self._stop_reading()
            self._settle()

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self.channel.fileno())

    def _settle(self) -> None:
        if not self._exited.done():
            self._exited.set_result(None)
        self._close()

    async def started(self) -> None:
        await asyncio.shield(self._started)

    async def wait(self) -> int:
        await asyncio.shield(self._exited)
        assert self.returncode is not None
        return self.returncode

    def release(self) -> None:
        """Close the pipes and the channel (after the worker is gone)."""
        for transport in self._transports:
            transport.close()
        self._stop_reading()
        self._close()


class ThreadChild(_Child):
    """A child spawned from a worker thread (the builder's handler check): blocking waits."""

    def started(self, timeout: float) -> None:
        self._receive(timeout)
        if not self.pid:
            raise ZygoteUnavailable("the warm interpreter did not fork")

    def wait(self, timeout: float | None) -> int | None:
        """The exit status, or None if the child is still running after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            self._receive(left)
        self._close()
        return self.returncode

    def _receive(self, timeout: float | None) -> None:
        self.channel.settimeout(timeout)
        try:
            data, fds, _, _ = socket.recv_fds(self.channel, MESSAGE_BYTES, 2)
        except TimeoutError:
            return
        except OSError:
            data, fds = b"", []
        if not data:
            self._lost()
            return
        self._take(data, fds)
