"""Typed factories for model bundles and hostile archives, made in the test (nothing shipped)."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

# A handler in the plain-function style; imports nothing heavy so the check is quick.
HANDLER = """
def initialize(context):
    pass


def handle(data, context):
    if data is None:  # TorchServe's load-time call; it never calls initialize itself
        initialize(context)
        return None
    return [{"label": int(item["body"]["x"]) % 2} for item in data]
"""

# A handler that loads a real torch state dict in initialize (the tiny-model build).
TORCH_HANDLER = """
import os

import torch

_model = None


def initialize(context):
    global _model
    model_dir = context.system_properties["model_dir"]
    _model = torch.nn.Linear(1, 2)
    _model.load_state_dict(torch.load(os.path.join(model_dir, "model.pt")))
    _model.eval()


def handle(data, context):
    if data is None:  # TorchServe's load-time call; it never calls initialize itself
        initialize(context)
        return None
    xs = torch.tensor([[float(item["body"]["x"])] for item in data])
    with torch.no_grad():
        return [{"label": int(i)} for i in _model(xs).argmax(dim=1)]
"""


def write_model_folder(
    folder: Path, *, handler: str | None = HANDLER, files: dict[str, bytes] | None = None
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if handler is not None:
        (folder / "handler.py").write_text(handler)
    for name, data in (files or {"setup_config.json": b'{"threshold": 0.5}'}).items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return folder


def tar_folder(folder: Path, target: Path, *, arcname: str = ".") -> Path:
    """A .tar.gz of the folder (arcname "." gives `./x` members, a name gives one top folder)."""
    with tarfile.open(target, "w:gz") as tar:
        tar.add(folder, arcname=arcname)
    return target


def zip_folder(folder: Path, target: Path, *, prefix: str = "") -> Path:
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, prefix + path.relative_to(folder).as_posix())
    return target


def tar_with(target: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    """A .tar.gz holding exactly these members (for hostile headers no tool would write)."""
    with tarfile.open(target, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return target


def tar_file(name: str, data: bytes = b"x", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = mode
    return info, data


def tar_special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def zip_with(target: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return target


def zip_symlink(target: Path, name: str, link_to: str) -> Path:
    """A zip whose member is a Unix symbolic link (as `zip --symlinks` writes)."""
    with zipfile.ZipFile(target, "w") as archive:
        archive.writestr("handler.py", HANDLER)
        info = zipfile.ZipInfo(name)
        info.create_system = 3
        info.external_attr = 0o120777 << 16
        archive.writestr(info, link_to)
    return target


def zip_of_zeros(target: Path, name: str, size: int) -> Path:
    """A zip with one member of `size` zero bytes, streamed: the file on disk stays tiny."""
    chunk = bytes(1 << 20)
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("handler.py", HANDLER)
        with archive.open(name, "w", force_zip64=True) as fh:
            for _ in range(size // len(chunk)):
                fh.write(chunk)
    return target


def make_mar(target: Path, *, handler: str = "handler.py", files: dict[str, bytes]) -> Path:
    """A .mar laid out as torch-model-archiver writes one (files at the top, MAR-INF/)."""
    import json

    manifest = {
        "createdOn": "01/01/2026 00:00:00",
        "runtime": "python",
        "model": {"modelName": "ready", "handler": handler, "modelVersion": "1.0"},
        "archiverVersion": "0.12.0",
    }
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))
    return target
