"""What the operating system lets the evaluator add around a handler's worker process.

Probed once per process: util-linux `unshare` (as root, or through a user namespace) for a
private network namespace and a private mount namespace; else, as root on Python 3.12+,
`os.unshare` in the child before it execs; else nothing (the audit hook still applies).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

# Environment variables a handler worker (and the warm interpreter it forks from) may see;
# everything else (database URLs, cloud credentials, WEIGHBRIDGE_* settings) stays with the
# evaluator.
PASSED_ENV = (
    "PATH",
    "LANG",
    "LC_ALL",
    "TZ",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
    "LD_LIBRARY_PATH",
)


@dataclass
class Isolation:
    """What the operating system lets us add around the worker on this machine."""

    prefix: list[str] = field(default_factory=list)
    preexec: Callable[[], None] | None = None
    network: str = "audit hook only"
    mount_namespace: bool = False


def _enter_namespaces() -> None:
    """In the child before exec (root, no unshare program): new network and mount namespaces."""
    os.unshare(os.CLONE_NEWNET | os.CLONE_NEWNS)  # type: ignore[attr-defined]


_ISOLATION: Isolation | None = None


async def probe_isolation() -> Isolation:
    """Try `unshare` once per process: as root, or via a user namespace, or not at all."""
    global _ISOLATION
    if _ISOLATION is not None:
        return _ISOLATION
    found = Isolation()
    unshare = shutil.which("unshare")
    if sys.platform.startswith("linux") and unshare:
        for args, mounts in (
            (["--net", "--mount"], True),
            (["--user", "--map-root-user", "--net", "--mount"], True),
            (["--net"], False),
        ):
            with contextlib.suppress(OSError):
                proc = await asyncio.create_subprocess_exec(
                    unshare,
                    *args,
                    "true",
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                )
                if await proc.wait() == 0:
                    found = Isolation(
                        prefix=[unshare, *args],
                        network="private network namespace (only a loopback, down)",
                        mount_namespace=mounts,
                    )
                    break
    if not found.prefix and hasattr(os, "unshare") and os.geteuid() == 0:
        # Python 3.12+ as root without util-linux: unshare in the child before it execs.
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", "pass", preexec_fn=_enter_namespaces
            )
            if await proc.wait() == 0:
                found = Isolation(
                    preexec=_enter_namespaces,
                    network="private network namespace (only a loopback, down)",
                    mount_namespace=True,
                )
    _ISOLATION = found
    return found
