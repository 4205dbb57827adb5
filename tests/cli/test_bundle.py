"""What `upload` accepts and how a folder is packed."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from cli.bundle import bundle_name, check_bundle, folder_bytes, pack_folder
from cli.errors import USAGE, CliError


def make_model(root: Path) -> Path:
    folder = root / "my-model"
    (folder / "weights").mkdir(parents=True)
    (folder / "handler.py").write_text("def handle(data, context):\n    return []\n")
    (folder / "weights" / "model.bin").write_bytes(bytes(range(256)) * 400)
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "handler.cpython-311.pyc").write_bytes(b"junk")
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (folder / "stray.pyc").write_bytes(b"junk")
    return folder


def test_folder_is_packed_relative_to_its_root_without_caches(tmp_path: Path) -> None:
    folder = make_model(tmp_path)
    progress: list[int] = []
    archive = pack_folder(folder, tmp_path / "out.tar.gz", on_progress=progress.append)

    with tarfile.open(archive, "r:gz") as tar:
        names = sorted(tar.getnames())
        handler = tar.extractfile("handler.py")
        assert handler is not None and handler.read() == (folder / "handler.py").read_bytes()
        member = tar.getmember("weights/model.bin")
        assert member.uid == 0 and member.uname == ""
    assert names == ["handler.py", "weights", "weights/model.bin"]
    # Progress counts the bytes of exactly the files that were packed.
    handler_size = (folder / "handler.py").stat().st_size
    assert sum(progress) == folder_bytes(folder) == 102400 + handler_size


def test_check_bundle_accepts_folders_and_archives(tmp_path: Path) -> None:
    for name in ("m.tar.gz", "m.TGZ", "m.zip", "m.mar"):
        (tmp_path / name).write_bytes(b"x")
        assert check_bundle(tmp_path / name) == tmp_path / name
    assert check_bundle(tmp_path) == tmp_path
    assert bundle_name(tmp_path / "m.tar.gz") == "m"
    assert bundle_name(tmp_path / "folder") == "folder"


@pytest.mark.parametrize("name", ["missing.tar.gz", "model.txt"])
def test_check_bundle_refuses_with_a_usage_error(tmp_path: Path, name: str) -> None:
    if name.endswith(".txt"):
        (tmp_path / name).write_text("hello")
    with pytest.raises(CliError) as caught:
        check_bundle(tmp_path / name)
    assert caught.value.exit_code == USAGE
