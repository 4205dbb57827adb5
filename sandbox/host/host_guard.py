"""The handler worker's guard rails: the audit hook and the limits set inside the process.

Loaded by path by `handler_host.py` under the build's interpreter: standard library only.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import resource
import signal
import sys
import threading

MiB = 1 << 20

NETWORK_EVENTS = frozenset(
    {
        "socket.connect",
        "socket.bind",
        "socket.sendto",
        "socket.sendmsg",
        "socket.getaddrinfo",
        "socket.gethostbyname",
        "socket.gethostbyaddr",
    }
)
SIGNAL_EVENTS = frozenset({"os.kill", "os.killpg"})
EXEC_EVENTS = frozenset(
    {"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "pty.spawn"}
)


class SandboxViolation(PermissionError):
    """Raised by the audit hook; the host reports the first one even if the handler catches it."""


class Guard:
    """The audit hook: refuses network use, program starts and signals to other processes,
    naming what was tried. It gives clear reasons; the kernel's layers (namespaces, seccomp,
    the uid) are what actually stop these, and what hides the evaluator's files (they are
    not in the sandbox's filesystem at all)."""

    def __init__(self, *, workdir: str, allow_exec: bool, private_network: bool):
        self.workdir = os.path.realpath(workdir)
        self.allow_exec = allow_exec
        self.private_network = private_network
        self.violations: list[dict] = []
        self._local = threading.local()

    def refuse(self, kind: str, detail: str, message: str) -> None:
        self.violations.append({"kind": kind, "detail": detail})
        raise SandboxViolation(f"Weighbridge sandbox: {message}")

    def __call__(self, event: str, args: tuple) -> None:
        if event not in NETWORK_EVENTS and event not in EXEC_EVENTS and event not in SIGNAL_EVENTS:
            return
        local = self._local
        if getattr(local, "busy", False):
            return
        local.busy = True  # resolving an address must not re-enter the hook (per thread)
        try:
            if event in NETWORK_EVENTS:
                self._network(event, args)
            elif event in SIGNAL_EVENTS:
                self._signal(event, args)
            elif not self.allow_exec:
                what = args[0] if args else ""
                if event == "subprocess.Popen" and len(args) > 1 and args[1]:
                    what = args[1] if isinstance(args[1], str) else " ".join(map(str, args[1]))
                self.refuse(
                    "exec", f"{event}: {what}", f"starting programs ({what}) is not allowed"
                )
        finally:
            local.busy = False

    def _network(self, event: str, args: tuple) -> None:
        if event in ("socket.connect", "socket.bind") and len(args) >= 2:
            sock, address = args[0], args[1]
            import socket as _socket

            if getattr(sock, "family", None) == _socket.AF_UNIX:
                # Abstract sockets live in the (private) network namespace; paths must stay
                # inside the sandbox's own folder (multiprocessing uses both).
                if isinstance(address, bytes):
                    address = os.fsdecode(address)
                if not address or (address.startswith("\0") and self.private_network):
                    return
                real = os.path.realpath(address)
                if real == self.workdir or real.startswith(self.workdir + "/"):
                    return
            where = _describe_address(address)
        else:
            where = _describe_address(args[0] if args else "")
        self.refuse(
            "network",
            f"{event} {where}",
            f"network access is not allowed during evaluation ({event} {where})",
        )

    def _signal(self, event: str, args: tuple) -> None:
        """Signals may go to the worker itself, its own process group and its descendants."""
        target = args[0] if args else None
        if not isinstance(target, int):
            return
        if event == "os.killpg":
            if target in (0, os.getpgrp()):
                return
        elif target == 0 or target == os.getpid() or (target > 0 and _descends(target)):
            return
        self.refuse(
            "signal",
            f"{event}({target})",
            f"signalling processes outside the model's own ({event} {target}) is not allowed",
        )


def _descends(pid: int) -> bool:
    """Is `pid` a descendant of this process (read from /proc)?"""
    me, seen = os.getpid(), 0
    while pid > 1 and seen < 64:
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            return False
        pid = int(stat.rsplit(b")", 1)[1].split()[1])  # the parent's pid
        if pid == me:
            return True
        seen += 1
    return False


def _describe_address(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)


def log(message: str) -> None:
    # The log may be full (RLIMIT_FSIZE caps it): a note that cannot be written is dropped,
    # never a reason for the worker to crash before it reports what happened.
    try:
        sys.stderr.write(f"[weighbridge] {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def apply_limits(request: dict) -> dict:
    """What the host adds in this process (the sandbox already set the kernel's limits):
    no core files, and death with the parent. Returns the limits in force, for the log."""
    notes: dict = {}
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if sys.platform.startswith("linux"):
        try:
            _libc().prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the evaluator
            notes["parent_death_signal"] = True
        except (OSError, AttributeError):
            notes["parent_death_signal"] = False
    for name in ("RLIMIT_AS", "RLIMIT_NPROC", "RLIMIT_NOFILE", "RLIMIT_FSIZE"):
        with contextlib.suppress(ValueError, OSError):
            soft, _ = resource.getrlimit(getattr(resource, name))
            notes[name.lower()] = None if soft == resource.RLIM_INFINITY else soft
    return notes
