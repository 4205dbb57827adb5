"""The jobs folder: where a builder or evaluator keeps what it hands to sandboxes (models,
builds, probe output), and how the leftovers of killed workers are removed.

Each process has a folder of its own, `<tmp>/weighbridge-jobs-<euid>/<pid>-<random>`, and holds
an exclusive flock on the `.lock` file in it for as long as it lives; the kernel lets the lock
go when the process dies, SIGKILL included. `sweep_jobs()` (run when a worker configures its
sandbox) removes the folders whose lock nobody holds, so any number of workers can share the
root: a live worker's folder is never touched, a dead one's is removed by the next to start.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import logging
import os
import re
import secrets
import shutil
import stat
import tempfile
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

LOCK = ".lock"
FOLDER = re.compile(r"^[0-9]+-[0-9a-f]{8}$")
TRASH = ".removing-"
# A process folder with no lock file: its maker died between making it and locking it (a
# moment), or it is someone's by hand. Left alone for this long.
UNLOCKED_SECONDS = 3600.0

# The shared root -> (this process's folder, the descriptor holding its lock, our pid).
_held: dict[str, tuple[Path, int, int]] = {}
_exit_registered: list[bool] = []
_claiming = threading.Lock()  # sandboxes start from threads too


def shared_root() -> Path:
    """The folder every Weighbridge process of this user shares (each owns one folder in it)."""
    root = Path(tempfile.gettempdir()) / f"weighbridge-jobs-{os.geteuid()}"
    root.mkdir(mode=0o711, exist_ok=True)
    return root


def jobs_root() -> Path:
    """This process's jobs folder, made and locked on first use. The warm interpreter binds
    it, and each sandbox sees only its own part of it."""
    shared = shared_root()
    with _claiming:
        held = _held.get(str(shared))
        if held is not None:
            # A forked child shares its parent's folder (and, through the inherited
            # descriptor, its lock).
            if held[0].is_dir():
                return held[0]
            with contextlib.suppress(OSError):
                os.close(held[1])  # removed under us (by hand): claim another
        folder, fd = _claim(shared)
        if not _exit_registered:
            atexit.register(_release_all)
            _exit_registered.append(True)
        _held[str(shared)] = (folder, fd, os.getpid())
        return folder


def _claim(shared: Path) -> tuple[Path, int]:
    while True:
        folder = shared / f"{os.getpid()}-{secrets.token_hex(4)}"
        try:
            folder.mkdir(mode=0o711)
        except FileExistsError:
            continue
        os.chmod(folder, 0o711)  # whatever the umask: sandbox users cross it to their part
        lock = folder / LOCK
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # A sweeper may have taken the lock between our open and flock and removed the
            # folder: then this lock guards nothing, and we start again under another name.
            if os.path.samestat(os.fstat(fd), os.stat(lock, follow_symlinks=False)):
                return folder, fd
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.ENOENT):
                os.close(fd)
                raise
        os.close(fd)


def _release_all() -> None:
    """At a normal exit: this process's folders go (a killed one's wait for the next sweep)."""
    for folder, fd, pid in list(_held.values()):
        if pid != os.getpid():
            continue  # a forked child exiting: the folder is its parent's
        remove_tree(folder)
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


def sweep_jobs(*, now: float | None = None) -> list[Path]:
    """Remove the jobs folders of processes that are gone (their lock is free) and what a
    sweep cut short left; returns the folders removed."""
    now = time.time() if now is None else now
    shared = shared_root()
    own = _held.get(str(shared))
    removed: list[Path] = []
    try:
        entries = list(shared.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if own is not None and entry == own[0]:
            continue
        if entry.name.startswith(TRASH):
            remove_tree(entry)  # a sweep killed half way: nobody's
            continue
        if not FOLDER.match(entry.name) or not _is_folder(entry):
            continue
        if _take_if_dead(entry, now=now):
            removed.append(entry)
    if removed:
        log.info(
            "removed %d jobs folder(s) of workers that are gone: %s",
            len(removed),
            ", ".join(p.name for p in removed),
        )
    return removed


def _is_folder(path: Path) -> bool:
    try:
        return stat.S_ISDIR(path.lstat().st_mode)
    except OSError:
        return False


def _take_if_dead(folder: Path, *, now: float) -> bool:
    """Remove `folder` when no process holds its lock; True when it was removed."""
    try:
        fd = os.open(folder / LOCK, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        with contextlib.suppress(OSError):
            if now - folder.lstat().st_mtime > UNLOCKED_SECONDS:
                return _discard(folder)
        return False
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False  # its process is alive
            raise
        return _discard(folder)
    finally:
        os.close(fd)


def _discard(folder: Path) -> bool:
    # Renamed first (atomic), so a sweep killed half way leaves a folder any sweep may finish.
    trash = folder.with_name(f"{TRASH}{folder.name}-{secrets.token_hex(4)}")
    try:
        os.rename(folder, trash)
    except OSError:
        return False
    remove_tree(trash)
    return True


def remove_tree(path: Path) -> None:
    """Remove `path` and everything in it, folders its user made read-only included."""

    def retry(function: object, name: str, _exc: object) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(name), 0o700)
            if os.path.isdir(name) and not os.path.islink(name):
                os.chmod(name, 0o700)
                shutil.rmtree(name, ignore_errors=True)
            else:
                os.unlink(name)

    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path, onerror=retry)
