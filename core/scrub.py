"""Server paths out of text shown to users: logs, error messages, emails.

A path under a server folder (the home folder, /root, /tmp, the virtual environment, the
service's home and storage, ...) keeps only its last name (`…/model.py`); a package's file keeps
its place in the package (`<site-packages>/torch/nn/module.py`); a storage key keeps only what
follows the submission (`submissions/<id>/results/test/log` -> `…/results/test/log`). The rest of
the text, the job's own output, is kept as it was.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path

# Top folders of a server's paths; a path under one of them is never the user's business.
ROOTS = (
    "root",
    "home",
    "tmp",
    "var",
    "work",
    "opt",
    "usr",
    "srv",
    "mnt",
    "data",
    "private",
    "Users",
    "proc",
    "etc",
    "run",
    "app",
    "workspace",
    "builds",
    "nix",
    "scratch",
)
NAME = r"[\w.@+~%=,-]"
_SITE = re.compile(rf"(?<![\w/]){NAME}*(?:/{NAME}+)*/(?:site|dist)-packages/")
# A storage key of a submission (a URL's or a folder's), not the API's or the site's routes.
_KEY = re.compile(
    r"(?:[a-z][a-z0-9+.-]*://[^\s\"'<>]*?/|(?<![\w/.-])|(?<=[\s\"'(=:]))"
    r"(?<!v1/)submissions/[A-Za-z0-9_-]{6,}/(?=[\w.-])"
)


@lru_cache(maxsize=32)
def _path_pattern(extra: tuple[str, ...]) -> re.Pattern[str]:
    roots = "|".join(ROOTS)
    known = sorted(
        {p.rstrip("/") for p in extra if p and p.startswith("/") and p.rstrip("/")},
        key=len,
        reverse=True,
    )
    alternatives = [re.escape(p) for p in known] + [rf"/(?:{roots})(?=/|\b)"]
    start = "|".join(alternatives)
    return re.compile(rf"(?<![\w.~/-])(?:file://)?(?:{start})(?:/{NAME}+)*/?")


def _server_paths() -> tuple[str, ...]:
    paths = {sys.prefix, sys.base_prefix, str(Path.home())}
    with contextlib.suppress(OSError):  # a removed working folder has no name
        paths.add(str(Path.cwd()))
    return tuple(p for p in paths if p not in ("/", ""))


def _short(match: re.Match[str]) -> str:
    path = match.group(0).rstrip("/")
    name = path.rsplit("/", 1)[-1]
    if not name or path.count("/") <= 1:
        return "…"
    return f"…/{name}"


def _lines_with(marker: str, text: str, change: Callable[[str], str]) -> str:
    """`change` applied to the lines holding `marker` only (the costly patterns skip the rest
    of a long log)."""
    if marker not in text:
        return text
    return "".join(
        change(line) if marker in line else line for line in text.splitlines(keepends=True)
    )


def scrub_text(text: str | None, *, paths: Iterable[str] = ()) -> str:
    """`text` without server paths; `paths` adds the service's own folders (its home,
    storage) to the ones every server has."""
    if not text:
        return text or ""
    out = _lines_with("-packages/", text, lambda line: _SITE.sub("<site-packages>/", line))
    out = _lines_with("submissions/", out, lambda line: _KEY.sub("…/", line))
    extra = tuple(sorted({*_server_paths(), *(str(p) for p in paths)}))
    return _path_pattern(extra).sub(_short, out)


def service_paths(home: Path | str | None, storage_url: str | None = None) -> tuple[str, ...]:
    """The service's own folders (its home, a folder storage's root), to scrub with."""
    found = []
    if home:
        found.append(str(Path(home).expanduser().absolute()))
    if storage_url and storage_url.startswith("file://"):
        found.append(storage_url.removeprefix("file://"))
    return tuple(found)


def storage_paths(storage: object) -> tuple[str, ...]:
    """A folder storage's root (and the service home above it), to scrub with; () for S3."""
    root = getattr(storage, "root", None)
    if root is None:
        return ()
    return (str(root), str(root.parent)) if hasattr(root, "parent") else (str(root),)
