"""An unprivileged user id per concurrent sandbox, shared out across processes.

Ids come from a range no account uses (`FIRST_UID` and up, configurable); a sandbox holds its
id through an exclusive `flock` on `<lock folder>/<uid>.lock` for as long as it runs, so two
sandboxes alive at the same time, even in different Weighbridge processes on one machine,
never share one: neither can signal, trace or read the other's processes or files.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

FIRST_UID = 424_200
SLOTS = 256
# Where the lock folder may go, the first writable one (see `lock_folder`).
LOCK_PARENTS = (Path("/run/lock"), Path("/tmp"))


class NoFreeSlot(Exception):
    """Every sandbox user id is in use."""


@dataclass
class UidSlot:
    """One held user id (the group id is the same number); `release()` gives it back."""

    uid: int
    _fd: int | None

    @property
    def gid(self) -> int:
        return self.uid

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def lock_folder() -> Path:
    """Shared by every Weighbridge process of this user on the machine.

    The ids are the kernel's, one set for the whole machine, so their locks are too: never
    under TMPDIR. Two processes with different temporary folders (a test's scratch, systemd's
    PrivateTmp) each handed out the same id, and each, closing a cell, killed every process
    of that id: the other's sandboxed handler too. /run/lock is the machine's lock folder
    (a private /tmp does not hide it); /tmp itself where it is missing."""
    parent = next((p for p in LOCK_PARENTS if os.access(p, os.W_OK | os.X_OK)), LOCK_PARENTS[-1])
    folder = parent / f"weighbridge-uids-{os.geteuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder


def uid_range() -> tuple[int, int]:
    """The first sandbox uid and how many there are."""
    return FIRST_UID, SLOTS


def acquire_uid(*, first: int = FIRST_UID, count: int = SLOTS) -> UidSlot:
    """The lowest free id of the range; NoFreeSlot when all are held."""
    folder = lock_folder()
    for uid in range(first, first + count):
        fd = os.open(folder / f"{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                continue
            raise
        return UidSlot(uid=uid, _fd=fd)
    raise NoFreeSlot(f"all {count} sandbox user ids from {first} are in use")
