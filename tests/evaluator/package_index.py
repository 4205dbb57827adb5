"""A package index on 127.0.0.1 for tests that install requirements without the internet.

`wheel(folder, name, version, modules)` writes a pure-Python wheel (METADATA, WHEEL,
top_level.txt, RECORD with its hashes) and `serve_wheels(folder)` serves the folder over HTTP
(its listing is the page of links pip's `--find-links` reads). The sandbox that runs pip for an
environment build shares the host's network when a step needs the package index, so pip there
reaches this server; a requirements.txt names it with `--no-index --find-links URL`.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import threading
import zipfile
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def wheel(folder: Path, name: str, version: str, modules: dict[str, str]) -> Path:
    """A py3-none-any wheel of `name` holding the top-level `modules` ({module: source})."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    files: dict[str, bytes] = {f"{m}.py": src.encode() for m, src in modules.items()}
    files[f"{info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        "Summary: a package made by Weighbridge's tests\n"
    ).encode()
    files[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: weighbridge-tests\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n"
    )
    files[f"{info}/top_level.txt"] = "".join(f"{m}\n" for m in modules).encode()
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in files.items())
    files[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, data in files.items():
            archive.writestr(member, data)
    return path


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve_wheels(folder: Path) -> Iterator[str]:
    """The folder served on 127.0.0.1 for the block; yields its URL (ending in /)."""
    handler = functools.partial(_Quiet, directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="package-index", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def requirements_for(index: str, *requirements: str) -> bytes:
    """A requirements.txt that installs `requirements` from `index` only."""
    return (
        f"--no-index\n--find-links {index}\n" + "".join(f"{r}\n" for r in requirements)
    ).encode()
