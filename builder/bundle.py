"""Model bundles: a folder, a tar/zip archive or a ready .mar, unpacked safely into a fresh folder.

Nothing in an upload is trusted. Every member name is checked (no `..`, no absolute or drive
paths, no backslashes, bounded length and depth); only regular files and folders are written,
with fixed permissions, through `O_EXCL | O_NOFOLLOW`; device files, FIFOs, sockets, sparse and
encrypted members are refused. Sizes are counted while bytes are written, never read from member
headers: the total, the number of members, the expansion ratio (per member for zip, over the
decompressed stream for tar) and the archive's own size are bounded (`BundleLimits`).

Links: a symbolic or hard link whose target is a regular file inside the bundle is kept as a
*copy* of that file (model folders made from caches, e.g. Hugging Face snapshots, are symlink
farms); the copy counts against the size limit, so links cannot multiply a file past it. A link
pointing outside the bundle, to an absolute path, to a folder or to nothing is refused. No link
is ever created on disk, so no later member can be written through one.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import json
import lzma
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from builder.extraction import (
    CHUNK,
    GIB,
    KIB,
    MIB,
    BundleError,
    BundleFile,
    BundleLimits,
    Extractor,
    human,
)

__all__ = [
    "GIB",
    "KIB",
    "MANIFEST",
    "MIB",
    "Bundle",
    "BundleError",
    "BundleFile",
    "BundleLimits",
    "open_bundle",
    "unpacked_bundle",
]

MANIFEST = "MAR-INF/MANIFEST.json"


@dataclass
class Bundle:
    """An unpacked bundle: `root` is the model folder (a single top-level folder stripped)."""

    root: Path
    format: str  # folder | tar | zip | mar
    source_name: str
    sha256: str  # of the archive file; for a folder, of its sorted (path, sha256) listing
    source_bytes: int
    files: list[BundleFile] = field(default_factory=list)
    manifest: dict | None = None  # a .mar's MAR-INF/MANIFEST.json
    mar_path: Path | None = None  # a ready .mar, kept as uploaded

    @property
    def total_bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    def top_level_files(self) -> list[str]:
        return sorted(f.path for f in self.files if "/" not in f.path)


# -- tar ---------------------------------------------------------------------------------------
class _LimitedStream:
    """The decompressed tar stream: counts bytes as they come and stops a bomb early."""

    def __init__(self, raw: BinaryIO, extractor: Extractor, archive_bytes: int) -> None:
        self.raw = raw
        self.extractor = extractor
        self.archive_bytes = archive_bytes
        self.count = 0
        limits = extractor.limits
        # Headers and padding add up to 1.5 KiB per member on top of the members' bytes.
        self.limit = limits.max_total_bytes + limits.max_members * 1536 + MIB

    def read(self, size: int = -1) -> bytes:
        limits = self.extractor.limits
        if size is None or size < 0:
            size = CHUNK
        data = self.raw.read(min(size, self.limit - self.count + 1))
        self.count += len(data)
        member = self.extractor.current or "(the first member)"
        if self.count > self.limit:
            raise BundleError(
                f"the archive expands past the limit of {human(limits.max_total_bytes)} "
                f"(reached while reading member {member!r}); a decompression bomb, or a model "
                "too large for this task",
                member=member,
            )
        if self.count > limits.ratio_floor_bytes and self.count > limits.max_ratio * max(
            self.archive_bytes, 1
        ):
            raise BundleError(
                f"the archive expands more than {limits.max_ratio:g} times its size of "
                f"{human(self.archive_bytes)} (reached while reading member {member!r}); "
                "refused as a decompression bomb",
                member=member,
            )
        return data


def _guarded_tarinfo(limits: BundleLimits) -> type[tarfile.TarInfo]:
    long_types = {
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.SOLARIS_XHDTYPE,
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_LONGLINK,
    }

    class GuardedTarInfo(tarfile.TarInfo):
        # tarfile reads extended headers whole into memory: bound them before it does.
        def _proc_member(self, tarfile_: tarfile.TarFile):  # type: ignore[override]
            if self.type in long_types and self.size > limits.max_header_bytes:
                raise BundleError(
                    f"the archive has an extended header of {human(self.size)} (over "
                    f"{human(limits.max_header_bytes)}) near member {self.name!r}",
                    member=self.name,
                )
            return super()._proc_member(tarfile_)  # type: ignore[misc]

    return GuardedTarInfo


def _open_decompressed(fh: BinaryIO, magic: bytes) -> BinaryIO:
    if magic.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=fh, mode="rb")  # type: ignore[return-value]
    if magic.startswith(b"BZh"):
        return bz2.BZ2File(fh, "rb")  # type: ignore[return-value]
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(fh, "rb")  # type: ignore[return-value]
    return fh


def _extract_tar(path: Path, magic: bytes, ex: Extractor, archive_bytes: int) -> None:
    with open(path, "rb") as fh, _open_decompressed(fh, magic) as raw:
        stream = _LimitedStream(raw, ex, archive_bytes)
        try:
            tar = tarfile.open(  # type: ignore[call-overload]  # noqa: SIM115 - entered below
                fileobj=stream,
                mode="r|",
                tarinfo=_guarded_tarinfo(ex.limits),
            )
        except (tarfile.TarError, OSError, EOFError, lzma.LZMAError) as exc:
            raise BundleError(f"the archive is not a readable tar file: {exc}") from None
        with tar:
            try:
                for member in tar:
                    _extract_tar_member(tar, member, ex)
            except BundleError:
                raise
            except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
                raise BundleError(
                    f"the archive is damaged near member {ex.current!r}: {exc}",
                    member=ex.current,
                ) from None


def _extract_tar_member(tar: tarfile.TarFile, member: tarfile.TarInfo, ex: Extractor) -> None:
    name = member.name
    ex.count(name)
    if member.ischr() or member.isblk():
        raise BundleError(
            f"member {name!r} is a device file; bundles may hold only files and folders",
            member=name,
        )
    if member.isfifo():
        raise BundleError(
            f"member {name!r} is a FIFO (named pipe); bundles may hold only files and folders",
            member=name,
        )
    if member.issparse():
        raise BundleError(
            f"member {name!r} is a sparse file; re-create the archive without --sparse",
            member=name,
        )
    parts = ex.parts(name)
    if member.issym():
        if parts is not None:
            ex.add_symlink(parts, member.linkname, name)
        return
    if member.islnk():
        if parts is not None:
            ex.add_hardlink(parts, member.linkname, name)
        return
    if parts is None:
        return
    if member.isdir():
        ex.mkdirs(parts, name)
        return
    if not member.isreg():
        raise BundleError(
            f"member {name!r} has an unsupported type ({member.type!r}); bundles may hold "
            "only files and folders",
            member=name,
        )
    source = tar.extractfile(member)
    assert source is not None
    ex.write(parts, source, name)


# -- zip ---------------------------------------------------------------------------------------
def _check_zip_directory(path: Path, limits: BundleLimits) -> None:
    """Bound the central directory before zipfile loads all of it into memory."""
    with open(path, "rb") as fh:
        try:
            end = zipfile._EndRecData(fh)  # type: ignore[attr-defined]
        except OSError:
            end = None
    if not end:
        raise BundleError("the archive is not a readable zip file (no end of central directory)")
    entries = end[zipfile._ECD_ENTRIES_TOTAL]  # type: ignore[attr-defined]
    directory_bytes = end[zipfile._ECD_SIZE]  # type: ignore[attr-defined]
    if entries > limits.max_members or directory_bytes > limits.max_members * 4 * KIB:
        raise BundleError(
            f"the bundle has {entries} members (files, folders and links), over the limit "
            f"of {limits.max_members}. Pack fewer, larger files",
        )


def _open_zip(path: Path, limits: BundleLimits) -> zipfile.ZipFile:
    _check_zip_directory(path, limits)
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise BundleError(f"the archive is not a readable zip file: {exc}") from None


def _extract_zip(archive: zipfile.ZipFile, ex: Extractor) -> None:
    infos = archive.infolist()
    if len(infos) > ex.limits.max_members:
        raise BundleError(
            f"the bundle has {len(infos)} members (files, folders and links), over the "
            f"limit of {ex.limits.max_members}. Pack fewer, larger files",
        )
    for info in infos:
        _extract_zip_member(archive, info, ex)


def _extract_zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, ex: Extractor) -> None:
    name = info.filename
    ex.count(name)
    mode = (info.external_attr >> 16) & 0xFFFF if info.create_system == 3 else 0
    if mode and (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)):
        raise BundleError(
            f"member {name!r} is a device file; bundles may hold only files and folders",
            member=name,
        )
    if mode and (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        raise BundleError(
            f"member {name!r} is a FIFO or socket; bundles may hold only files and folders",
            member=name,
        )
    if info.flag_bits & 0x1:
        raise BundleError(
            f"member {name!r} is encrypted; upload the bundle without a password", member=name
        )
    parts = ex.parts(name)
    if parts is None:
        return
    try:
        if mode and stat.S_ISLNK(mode):
            with archive.open(info) as fh:
                target = fh.read(4097)
            if len(target) > 4096:
                raise BundleError(
                    f"member {name!r} is a symbolic link with an implausibly long target",
                    member=name,
                )
            ex.add_symlink(parts, target.decode("utf-8", "replace"), name)
            return
        if info.is_dir() or (mode and stat.S_ISDIR(mode)):
            ex.mkdirs(parts, name)
            return
        with archive.open(info) as fh:
            ex.write(parts, fh, name, compressed_bytes=info.compress_size)
    except BundleError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise BundleError(f"member {name!r} is damaged: {exc}", member=name) from None
    except NotImplementedError as exc:
        raise BundleError(
            f"member {name!r} uses a compression method this builder cannot read ({exc}); "
            "use deflate",
            member=name,
        ) from None


# -- folder ------------------------------------------------------------------------------------
def _copy_folder(source: Path, ex: Extractor) -> None:
    def walk(folder: Path, prefix: tuple[str, ...]) -> None:
        with os.scandir(folder) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                rel = "/".join((*prefix, entry.name))
                ex.count(rel)
                parts = ex.parts(rel)
                if parts is None:
                    continue
                if entry.is_symlink():
                    ex.add_symlink(parts, os.readlink(entry.path), rel)
                elif entry.is_dir(follow_symlinks=False):
                    ex.mkdirs(parts, rel)
                    walk(Path(entry.path), parts)
                elif entry.is_file(follow_symlinks=False):
                    with open(entry.path, "rb") as fh:
                        ex.write(parts, fh, rel)
                else:
                    raise BundleError(
                        f"{rel!r} is a device file, FIFO or socket; bundles may hold only "
                        "files and folders",
                        member=rel,
                    )

    walk(source, ())


# -- entry points ------------------------------------------------------------------------------
def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _sniff(path: Path) -> tuple[str, bytes]:
    with open(path, "rb") as fh:
        head = fh.read(512)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip", head
    if head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")) or head[257:262] == b"ustar":
        return "tar", head
    return "unknown", head


def _read_manifest(root: Path) -> dict:
    path = root / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"the .mar's {MANIFEST} is not valid JSON: {exc}") from None
    handler = manifest.get("model", {}).get("handler") if isinstance(manifest, dict) else None
    if not isinstance(handler, str) or not handler:
        raise BundleError(
            f"the .mar's {MANIFEST} names no handler (model.handler); re-create it with "
            "torch-model-archiver --handler handler.py"
        )
    return manifest


def open_bundle(
    source: Path,
    workdir: Path,
    *,
    name: str | None = None,
    limits: BundleLimits | None = None,
    strip_folder: bool = True,
) -> Bundle:
    """Unpack `source` into a new folder under `workdir`; BundleError says what is refused.

    `strip_folder`: an archive holding one folder is that folder's contents (a model folder
    archived with its name); False keeps the folder (scripts, whose paths the user wrote)."""
    limits = limits or BundleLimits()
    source_name = name or source.name
    if not source.exists() and not source.is_symlink():
        raise BundleError(f"the bundle {source_name!r} does not exist")
    target = Path(tempfile.mkdtemp(prefix="bundle-", dir=workdir))
    os.chmod(target, 0o755)
    ex = Extractor(target, limits)
    manifest = None
    mar_path = None
    if source.is_dir() and not source.is_symlink():
        fmt = "folder"
        _copy_folder(source, ex)
        source_bytes = 0
    else:
        if not source.is_file():
            raise BundleError(f"the bundle {source_name!r} is not a regular file or a folder")
        source_bytes = source.stat().st_size
        if source_bytes > limits.max_archive_bytes:
            raise BundleError(
                f"the archive {source_name!r} is {human(source_bytes)}, over the limit of "
                f"{human(limits.max_archive_bytes)}"
            )
        fmt, head = _sniff(source)
        if fmt == "tar":
            _extract_tar(source, head, ex, source_bytes)
        elif fmt == "zip":
            with _open_zip(source, limits) as archive:
                if MANIFEST in archive.NameToInfo:
                    fmt = "mar"
                _extract_zip(archive, ex)
        else:
            raise BundleError(
                f"{source_name!r} is not a folder, .tar.gz/.tgz, .zip or .mar archive "
                f"(its first bytes are {head[:8]!r})"
            )
    ex.materialize_links()
    if not ex.files:
        raise BundleError(f"the bundle {source_name!r} holds no files")

    root, strip = target, 0
    if fmt == "mar":
        manifest = _read_manifest(root)
        mar_path = source
    else:
        # A bundle made by archiving the model folder itself: look inside the folder.
        entries = [p for p in root.iterdir()]
        if strip_folder and len(entries) == 1 and entries[0].is_dir():
            root, strip = entries[0], 1
    files = sorted(
        (
            BundleFile(path="/".join(parts[strip:]), bytes=f.bytes, sha256=f.sha256)
            for parts, f in ex.files.items()
        ),
        key=lambda f: f.path,
    )
    if fmt == "folder":
        listing = "".join(f"{f.sha256}  {f.path}\n" for f in files)
        sha256 = hashlib.sha256(listing.encode()).hexdigest()
    else:
        sha256 = _sha256_file(source)
    return Bundle(
        root=root,
        format=fmt,
        source_name=source_name,
        sha256=sha256,
        source_bytes=source_bytes,
        files=files,
        manifest=manifest,
        mar_path=mar_path,
    )


@contextlib.contextmanager
def unpacked_bundle(
    source: Path, *, name: str | None = None, limits: BundleLimits | None = None
) -> Iterator[Bundle]:
    """`open_bundle` into a temporary folder that is removed when the block ends."""
    workdir = Path(tempfile.mkdtemp(prefix="weighbridge-bundle-"))
    try:
        yield open_bundle(source, workdir, name=name, limits=limits)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
