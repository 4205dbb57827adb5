"""The safe writer under every bundle format: checked names, counted bytes, links as copies.

Member names are checked (no `..`, no absolute or drive paths, no backslashes, bounded length
and depth); only regular files and folders are written, with fixed permissions, through
`O_EXCL | O_NOFOLLOW`; sizes are counted while bytes are written, never read from headers.
A link is recorded, then replaced by a copy of the regular file it names once every member is
in, so no link ever exists on disk for a later member to be written through.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from core.errors import JobFailed

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

# Folders that never belong in a model (macOS zip metadata, bytecode caches, VCS data).
IGNORED_PARTS = frozenset({"__MACOSX", "__pycache__", ".git"})
DRIVE = re.compile(r"^[A-Za-z]:")
CHUNK = 1 * MIB


@dataclass(frozen=True)
class BundleLimits:
    """What an upload may expand to. The defaults suit models up to several GiB of weights."""

    max_archive_bytes: int = 10 * GIB  # the archive file as uploaded
    max_total_bytes: int = 20 * GIB  # everything written while unpacking (links' copies too)
    max_members: int = 10_000  # files, folders and links together
    max_ratio: float = 100.0  # bytes written per compressed byte (weights compress ~1.1x)
    ratio_floor_bytes: int = 16 * MIB  # ratios are judged only past this many bytes
    max_path_chars: int = 1024
    max_depth: int = 32
    max_header_bytes: int = 1 * MIB  # tar pax / GNU long-name headers (held in memory)
    max_link_hops: int = 8


class BundleError(JobFailed):
    """A bundle that cannot be used as uploaded; the reason names the member and the rule."""

    def __init__(self, reason: str, *, member: str | None = None) -> None:
        super().__init__("build", reason)
        self.member = member


@dataclass(frozen=True)
class BundleFile:
    path: str  # POSIX path relative to the model folder
    bytes: int
    sha256: str


def human(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


@dataclass
class _Link:
    parts: tuple[str, ...]
    target: tuple[str, ...]
    member: str
    kind: str  # "symbolic link" | "hard link"


class Extractor:
    """Writes members under `root`, enforcing the limits as bytes arrive."""

    def __init__(self, root: Path, limits: BundleLimits) -> None:
        self.root = root
        self.limits = limits
        self.members = 0
        self.total = 0
        self.files: dict[tuple[str, ...], BundleFile] = {}
        self.dirs: set[tuple[str, ...]] = set()
        self.links: list[_Link] = []
        self.link_parts: set[tuple[str, ...]] = set()
        self.current = ""

    # -- names -------------------------------------------------------------------------------
    def count(self, member: str) -> None:
        self.current = member
        self.members += 1
        if self.members > self.limits.max_members:
            raise BundleError(
                f"the bundle has more than {self.limits.max_members} members (files, folders "
                f"and links); stopped at {member!r}. Pack fewer, larger files",
                member=member,
            )

    def parts(self, name: str) -> tuple[str, ...] | None:
        """The checked path of a member; None for the root itself and for ignored folders."""
        limits = self.limits
        if "\x00" in name:
            raise BundleError(f"member {name!r} has a NUL byte in its name", member=name)
        if "\\" in name:
            raise BundleError(
                f"member {name!r} uses backslashes in its path; archives must use '/' "
                "(re-create it with tar or a zip tool that follows the zip specification)",
                member=name,
            )
        if name.startswith("/") or DRIVE.match(name):
            raise BundleError(
                f"member {name!r} has an absolute path; bundle paths must be relative",
                member=name,
            )
        parts = tuple(p for p in name.split("/") if p not in ("", "."))
        if ".." in parts:
            raise BundleError(
                f"member {name!r} contains '..' (path traversal); bundle paths must stay "
                "inside the bundle",
                member=name,
            )
        if len(name) > limits.max_path_chars or len(parts) > limits.max_depth:
            raise BundleError(
                f"member {name[:80]!r}… has a path longer than {limits.max_path_chars} "
                f"characters or deeper than {limits.max_depth} folders",
                member=name,
            )
        if not parts or any(p in IGNORED_PARTS for p in parts):
            return None
        return parts

    # -- writing -----------------------------------------------------------------------------
    def _path(self, parts: tuple[str, ...]) -> Path:
        return self.root.joinpath(*parts)

    def mkdirs(self, parts: tuple[str, ...], member: str) -> None:
        for i in range(1, len(parts) + 1):
            prefix = parts[:i]
            if prefix in self.dirs:
                continue
            if prefix in self.files or prefix in self.link_parts:
                raise BundleError(
                    f"member {member!r} needs {'/'.join(prefix)!r} to be a folder, but the "
                    "bundle also has a file or link of that name",
                    member=member,
                )
            os.mkdir(self._path(prefix), 0o755)
            self.dirs.add(prefix)

    def _claim(self, parts: tuple[str, ...], member: str) -> None:
        if parts in self.files or parts in self.dirs or parts in self.link_parts:
            raise BundleError(
                f"member {member!r} appears more than once in the bundle", member=member
            )

    def write(
        self,
        parts: tuple[str, ...],
        stream: IO[bytes],
        member: str,
        *,
        compressed_bytes: int | None = None,
    ) -> BundleFile:
        """Copy `stream` into the bundle, counting every byte against the limits."""
        limits = self.limits
        self._claim(parts, member)
        self.mkdirs(parts[:-1], member)
        path = self._path(parts)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(path, flags, 0o644)
        digest = hashlib.sha256()
        written = 0
        # Claim the name before writing: a failure part-way must not leave it reusable.
        self.files[parts] = BundleFile(path="/".join(parts), bytes=0, sha256="")
        with os.fdopen(fd, "wb") as out:
            while chunk := stream.read(CHUNK):
                written += len(chunk)
                self.total += len(chunk)
                if self.total > limits.max_total_bytes:
                    raise BundleError(
                        f"the bundle expands past the limit of {human(limits.max_total_bytes)} "
                        f"(reached while writing member {member!r}); a decompression bomb, or "
                        "a model too large for this task",
                        member=member,
                    )
                if (
                    compressed_bytes is not None
                    and written > limits.ratio_floor_bytes
                    and written > limits.max_ratio * max(compressed_bytes, 1)
                ):
                    raise BundleError(
                        f"member {member!r} expands more than {limits.max_ratio:g} times "
                        f"({human(compressed_bytes)} compressed, over {human(written)} "
                        "written so far); refused as a decompression bomb",
                        member=member,
                    )
                digest.update(chunk)
                out.write(chunk)
        entry = BundleFile(path="/".join(parts), bytes=written, sha256=digest.hexdigest())
        self.files[parts] = entry
        return entry

    # -- links -------------------------------------------------------------------------------
    def add_symlink(self, parts: tuple[str, ...], target: str, member: str) -> None:
        if target.startswith("/") or DRIVE.match(target) or "\\" in target or "\x00" in target:
            raise BundleError(
                f"member {member!r} is a symbolic link to the absolute path {target!r}; "
                "links may only point to files inside the bundle",
                member=member,
            )
        resolved = list(parts[:-1])
        for p in target.split("/"):
            if p in ("", "."):
                continue
            if p == "..":
                if not resolved:
                    raise BundleError(
                        f"member {member!r} is a symbolic link pointing outside the bundle "
                        f"({target!r}); links may only point to files inside the bundle",
                        member=member,
                    )
                resolved.pop()
            else:
                resolved.append(p)
        self._claim(parts, member)
        self.link_parts.add(parts)
        self.links.append(_Link(parts, tuple(resolved), member, "symbolic link"))

    def add_hardlink(self, parts: tuple[str, ...], target: str, member: str) -> None:
        try:
            target_parts = self.parts(target)
        except BundleError:
            raise BundleError(
                f"member {member!r} is a hard link pointing outside the bundle ({target!r}); "
                "links may only point to files inside the bundle",
                member=member,
            ) from None
        if target_parts is None:
            raise BundleError(
                f"member {member!r} is a hard link to {target!r}, which is not a file of the "
                "bundle",
                member=member,
            )
        self._claim(parts, member)
        self.link_parts.add(parts)
        self.links.append(_Link(parts, target_parts, member, "hard link"))

    def materialize_links(self) -> None:
        """Replace each link by a copy of the regular file it names (after every member)."""
        pending, self.links = self.links, []
        by_parts = {link.parts: link for link in pending}
        for link in pending:
            target = link.target
            for _ in range(self.limits.max_link_hops):
                if target not in by_parts:
                    break
                target = by_parts[target].target
            else:
                raise BundleError(
                    f"member {link.member!r} is a chain of more than "
                    f"{self.limits.max_link_hops} links",
                    member=link.member,
                )
            if target in self.dirs:
                raise BundleError(
                    f"member {link.member!r} is a {link.kind} to the folder "
                    f"{'/'.join(target)!r}; links to folders are not supported, copy the files",
                    member=link.member,
                )
            if target not in self.files or target in by_parts:
                raise BundleError(
                    f"member {link.member!r} is a {link.kind} to {'/'.join(target)!r}, which "
                    "is not a file of the bundle",
                    member=link.member,
                )
            self.link_parts.discard(link.parts)
            self.current = link.member
            with open(self._path(target), "rb") as source:
                self.write(link.parts, source, link.member)
