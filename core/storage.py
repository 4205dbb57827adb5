"""Storage behind one Protocol; the local-folder backend and the factory that picks by URL."""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import os
import shutil
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Literal, Protocol
from urllib.parse import urlparse

from core.errors import TooLarge, WeighbridgeError


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ObjectInfo:
    """A key with its size and when it was last written (S3: `LastModified`)."""

    key: str
    size: int
    modified: datetime


class Storage(Protocol):
    """Keys are POSIX paths (`submissions/<id>/upload/model.tar.gz`), the same on every backend."""

    url: str

    async def write_stream(
        self, key: str, chunks: AsyncIterable[bytes], *, max_bytes: int | None = None
    ) -> StoredObject: ...
    async def write_bytes(self, key: str, data: bytes) -> StoredObject: ...
    async def write_file(self, key: str, path: Path) -> StoredObject: ...
    def read_stream(
        self, key: str, *, chunk_size: int = 1 << 20, offset: int = 0
    ) -> AsyncIterator[bytes]: ...
    async def read_bytes(self, key: str) -> bytes: ...
    async def download(self, key: str, path: Path) -> Path: ...
    async def exists(self, key: str) -> bool: ...
    async def size(self, key: str) -> int: ...
    async def list(self, prefix: str) -> list[str]: ...
    async def delete_prefix(self, prefix: str) -> int: ...
    async def move(self, src: str, dst: str) -> None:
        """Put the object `src` at `dst` (replacing it) and remove `src` (S3: copy, then delete)."""
        ...

    async def list_info(self, prefix: str) -> builtins.list[ObjectInfo]:
        """Every object under `prefix` with its size and modification time, for sweeping.

        Unlike `list`, it also reports unfinished writes a backend keeps as objects (the
        folder's `.part` files) so that what a killed process left can be found and deleted
        with `delete_prefix`; those keys cannot be read.
        """
        ...

    def local_path(self, key: str) -> Path | None: ...
    async def presigned_url(
        self, key: str, *, method: Literal["GET", "PUT"] = "GET", seconds: int = 900
    ) -> str | None:
        """A link that reads (GET) or writes (PUT) `key` without credentials for `seconds`,
        or None when the backend cannot sign links (the folder: the API signs them instead;
        callers use `core.presign.presigned_url`, which does both)."""
        ...

    async def close(self) -> None:
        """Let go of connections (the process is stopping)."""
        ...


def check_key(key: str) -> str:
    """Refuse keys that could leave the store (absolute, `..`, empty parts)."""
    path = PurePosixPath(key)
    if not key or path.is_absolute() or any(p in ("", ".", "..") for p in key.split("/")):
        raise WeighbridgeError(f"invalid storage key {key!r}", field="key")
    return key


class LocalStorage:
    """A folder on disk; writes go to a temporary file renamed into place (atomic)."""

    def __init__(self, root: Path) -> None:
        self.root = root.absolute()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = f"file://{self.root}"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    async def presigned_url(
        self, key: str, *, method: Literal["GET", "PUT"] = "GET", seconds: int = 900
    ) -> str | None:
        check_key(key)
        return None  # a folder has no URLs: the API serves signed links to it

    async def close(self) -> None:
        return None

    async def write_stream(
        self, key: str, chunks: AsyncIterable[bytes], *, max_bytes: int | None = None
    ) -> StoredObject:
        target = self._path(key)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{id(chunks)}.part")
        digest = hashlib.sha256()
        size = 0
        fh = await asyncio.to_thread(_create, tmp)
        try:
            async for chunk in chunks:
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise TooLarge(
                        f"file is larger than the limit of {max_bytes} bytes", field="file"
                    )
                digest.update(chunk)
                await asyncio.to_thread(fh.write, chunk)
            await asyncio.to_thread(fh.close)
            await asyncio.to_thread(os.replace, tmp, target)
        except BaseException:
            fh.close()
            tmp.unlink(missing_ok=True)
            self._prune(tmp)
            raise
        return StoredObject(key=key, size=size, sha256=digest.hexdigest())

    async def write_bytes(self, key: str, data: bytes) -> StoredObject:
        async def one() -> AsyncIterator[bytes]:
            yield data

        return await self.write_stream(key, one())

    async def write_file(self, key: str, path: Path) -> StoredObject:
        return await self.write_stream(key, _file_chunks(path))

    async def read_stream(
        self, key: str, *, chunk_size: int = 1 << 20, offset: int = 0
    ) -> AsyncIterator[bytes]:
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(key)
        fh = await asyncio.to_thread(open, path, "rb")
        try:
            if offset:
                fh.seek(offset)
            while chunk := await asyncio.to_thread(fh.read, chunk_size):
                yield chunk
        finally:
            fh.close()

    async def read_bytes(self, key: str) -> bytes:
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(key)
        return await asyncio.to_thread(path.read_bytes)

    async def download(self, key: str, path: Path) -> Path:
        source = self._path(key)
        if not source.is_file():
            raise FileNotFoundError(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(shutil.copyfile, source, path)
        return path

    async def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    async def size(self, key: str) -> int:
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(key)
        return path.stat().st_size

    async def list(self, prefix: str) -> list[str]:
        # An empty prefix lists the whole store; any other must be a key inside it.
        base = self.root / check_key(prefix.rstrip("/")) if prefix else self.root
        if not base.exists():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.endswith(".part")
        )

    async def delete_prefix(self, prefix: str) -> int:
        check_key(prefix.rstrip("/"))
        base = self.root / prefix.rstrip("/")
        if not base.exists():
            return 0
        if base.is_file():
            base.unlink()
            self._prune(base)
            return 1
        count = sum(1 for p in base.rglob("*") if p.is_file())
        await asyncio.to_thread(shutil.rmtree, base, True)
        self._prune(base)
        return count

    async def move(self, src: str, dst: str) -> None:
        source, target = self._path(src), self._path(dst)
        if not source.is_file():
            raise FileNotFoundError(src)

        def _move() -> None:
            for attempt in range(3):
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.replace(source, target)
                    break
                except FileNotFoundError:
                    # The empty target folder was pruned between mkdir and rename: again.
                    if attempt == 2 or not source.is_file():
                        raise

        await asyncio.to_thread(_move)
        self._prune(source)

    async def list_info(self, prefix: str) -> builtins.list[ObjectInfo]:
        base = self.root / check_key(prefix.rstrip("/")) if prefix else self.root

        def _scan() -> list[ObjectInfo]:
            found = []
            for p in base.rglob("*") if base.is_dir() else [base]:
                try:
                    stat = p.stat()
                except FileNotFoundError:
                    continue  # removed while we looked
                if p.is_file():
                    found.append(
                        ObjectInfo(
                            key=p.relative_to(self.root).as_posix(),
                            size=stat.st_size,
                            modified=datetime.fromtimestamp(stat.st_mtime, UTC),
                        )
                    )
            return sorted(found, key=lambda o: o.key)

        if not base.exists():
            return []
        return await asyncio.to_thread(_scan)

    def _prune(self, removed: Path) -> None:
        """Remove the folders a deletion or move left empty, up to (not including) the
        top-level ones (`submissions/`, `incoming/`), which concurrent writes share."""
        folder = removed.parent
        while folder.parent != self.root and self.root in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                return  # not empty (or already gone): the folders above are in use
            folder = folder.parent


def _create(path: Path) -> BinaryIO:
    """A new file for writing, its folders made; retried when a concurrent prune removes an
    empty folder between the two steps."""
    for attempt in range(3):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return open(path, "wb")  # closed by the caller
        except FileNotFoundError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


async def _file_chunks(path: Path, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
    fh = await asyncio.to_thread(open, path, "rb")
    try:
        while chunk := await asyncio.to_thread(fh.read, chunk_size):
            yield chunk
    finally:
        fh.close()


def storage_from_url(
    url: str, *, endpoint_url: str | None = None, region: str = "us-east-1"
) -> Storage:
    """The backend for a URL: `file:///path` (a folder) or `s3://bucket/prefix` (S3, or the
    S3-compatible server at `endpoint_url`)."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalStorage(Path(parsed.netloc + parsed.path))
    if parsed.scheme == "s3":
        from core.s3storage import S3Storage

        return S3Storage(parsed.netloc, parsed.path, endpoint_url=endpoint_url, region=region)
    raise WeighbridgeError(
        f"unknown storage URL scheme {parsed.scheme!r}; use file:///path or s3://bucket/prefix",
        field="WEIGHBRIDGE_STORAGE_URL",
    )
