"""What `upload` sends: a ready archive as it is, or a folder packed into a temporary .tar.gz."""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from cli.errors import UsageError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip", ".mar")
# Never part of a model: version control, caches and editor droppings.
SKIPPED_NAMES = frozenset({".git", ".hg", ".svn", "__pycache__", ".DS_Store", ".ipynb_checkpoints"})
SKIPPED_SUFFIXES = (".pyc", ".pyo")


def archive_suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in ARCHIVE_SUFFIXES if name.endswith(s)), None)


def bundle_name(path: Path) -> str:
    """A default submission name: the folder's or archive's name without its suffix."""
    suffix = archive_suffix(path)
    return path.name[: -len(suffix)] if suffix else path.name


def check_bundle(path: Path) -> Path:
    """The path, if it is something `upload` can send; a usage error saying why not otherwise."""
    if not path.exists():
        raise UsageError(f"{path} does not exist")
    if path.is_dir():
        return path
    if not path.is_file():
        raise UsageError(f"{path} is neither a folder nor a file")
    if archive_suffix(path) is None:
        raise UsageError(
            f"{path} is not a bundle: upload a folder, a .tar.gz, a .zip or a .mar",
        )
    return path


def bundle_files(folder: Path) -> Iterator[Path]:
    """Files and folders to pack, sorted (reproducible archives), skipping SKIPPED_*."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_NAMES)
        base = Path(root)
        for d in dirs:
            yield base / d
        for f in sorted(files):
            if f in SKIPPED_NAMES or f.endswith(SKIPPED_SUFFIXES):
                continue
            yield base / f


class _CountingReader:
    """A file wrapper that reports how many bytes tarfile has read from it."""

    def __init__(self, handle: BinaryIO, on_read: Callable[[int], None]) -> None:
        self.handle = handle
        self.on_read = on_read

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.on_read(len(data))
        return data


def folder_bytes(folder: Path) -> int:
    return sum(
        p.lstat().st_size for p in bundle_files(folder) if p.is_file() and not p.is_symlink()
    )


def pack_folder(
    folder: Path, dest: Path, *, on_progress: Callable[[int], None] | None = None
) -> Path:
    """Write folder's contents to dest (.tar.gz), paths relative to the folder's root.

    Files are streamed through gzip; `on_progress(n)` is called with each n bytes read.
    Symbolic links are kept as links (the builder decides whether they are safe).
    """
    progress = on_progress or (lambda _n: None)
    with tarfile.open(dest, "w:gz") as archive:
        for path in bundle_files(folder):
            arcname = path.relative_to(folder).as_posix()
            info = archive.gettarinfo(str(path), arcname=arcname)
            # Owner names and ids of the packing machine mean nothing to the server.
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if info.isreg():
                with open(path, "rb") as handle:
                    archive.addfile(info, _CountingReader(handle, progress))  # type: ignore[arg-type]
            else:
                archive.addfile(info)
    return dest
