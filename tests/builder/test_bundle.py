"""Unpacking bundles: every hostile archive is refused with its own reason; good ones open."""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from builder.bundle import MIB, BundleError, BundleLimits, open_bundle, unpacked_bundle
from core.errors import JobFailed
from tests.builder.bundles import (
    HANDLER,
    make_mar,
    tar_file,
    tar_folder,
    tar_special,
    tar_with,
    write_model_folder,
    zip_folder,
    zip_of_zeros,
    zip_symlink,
    zip_with,
)


def refuse(source: Path, tmp_path: Path, *, limits: BundleLimits | None = None) -> BundleError:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    with pytest.raises(BundleError) as caught:
        open_bundle(source, work, limits=limits)
    error = caught.value
    assert isinstance(error, JobFailed) and error.stage == "build"
    return error


def nothing_outside(tmp_path: Path) -> None:
    """No hostile member landed next to the unpack folder."""
    for name in ("evil.py", "outside", "passwd"):
        assert not (tmp_path / name).exists()
        assert not (tmp_path / "work" / name).exists()


# -- the hostile catalog -----------------------------------------------------------------------
def test_tar_path_traversal_is_refused(tmp_path: Path) -> None:
    source = tar_with(tmp_path / "b.tgz", [tar_file("handler.py"), tar_file("../evil.py")])
    error = refuse(source, tmp_path)
    assert "'../evil.py'" in error.reason and "'..'" in error.reason
    assert error.member == "../evil.py"
    nothing_outside(tmp_path)


def test_zip_path_traversal_is_refused(tmp_path: Path) -> None:
    source = zip_with(tmp_path / "b.zip", {"handler.py": b"", "a/../../evil.py": b"x"})
    error = refuse(source, tmp_path)
    assert "'a/../../evil.py'" in error.reason and "traversal" in error.reason
    nothing_outside(tmp_path)


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_absolute_path_is_refused(tmp_path: Path, kind: str) -> None:
    if kind == "tar":
        source = tar_with(tmp_path / "b.tgz", [tar_file("/tmp/evil.py")])
    else:
        source = zip_with(tmp_path / "b.zip", {"/tmp/evil.py": b"x"})
    error = refuse(source, tmp_path)
    assert "'/tmp/evil.py'" in error.reason and "absolute path" in error.reason


def test_tar_symlink_pointing_outside_is_refused(tmp_path: Path) -> None:
    source = tar_with(
        tmp_path / "b.tgz",
        [tar_file("handler.py"), tar_special("weights.pt", tarfile.SYMTYPE, "../../outside")],
    )
    error = refuse(source, tmp_path)
    assert "'weights.pt'" in error.reason
    assert "symbolic link pointing outside the bundle" in error.reason
    nothing_outside(tmp_path)


def test_tar_symlink_to_an_absolute_path_is_refused(tmp_path: Path) -> None:
    source = tar_with(tmp_path / "b.tgz", [tar_special("passwd", tarfile.SYMTYPE, "/etc/passwd")])
    error = refuse(source, tmp_path)
    assert "symbolic link to the absolute path '/etc/passwd'" in error.reason


def test_tar_hardlink_pointing_outside_is_refused(tmp_path: Path) -> None:
    source = tar_with(
        tmp_path / "b.tgz",
        [tar_file("handler.py"), tar_special("outside", tarfile.LNKTYPE, "../../etc/passwd")],
    )
    error = refuse(source, tmp_path)
    assert "'outside'" in error.reason and "hard link pointing outside" in error.reason
    nothing_outside(tmp_path)


def test_zip_symlink_pointing_outside_is_refused(tmp_path: Path) -> None:
    source = zip_symlink(tmp_path / "b.zip", "model.pt", "../../../etc/passwd")
    error = refuse(source, tmp_path)
    assert "'model.pt'" in error.reason and "pointing outside the bundle" in error.reason


def test_symlink_in_a_folder_pointing_outside_is_refused(tmp_path: Path) -> None:
    folder = write_model_folder(tmp_path / "model")
    (tmp_path / "secret").write_text("do not copy")
    os.symlink(tmp_path / "secret", folder / "weights.pt")
    error = refuse(folder, tmp_path)
    assert "'weights.pt'" in error.reason and "absolute path" in error.reason


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        (tarfile.CHRTYPE, "device file"),
        (tarfile.BLKTYPE, "device file"),
        (tarfile.FIFOTYPE, "FIFO"),
    ],
)
def test_tar_device_files_and_fifos_are_refused(tmp_path: Path, kind: bytes, words: str) -> None:
    source = tar_with(tmp_path / "b.tgz", [tar_file("handler.py"), tar_special("dev/thing", kind)])
    error = refuse(source, tmp_path)
    assert "'dev/thing'" in error.reason and words in error.reason


def test_zip_bomb_past_the_size_limit_is_refused_early(tmp_path: Path) -> None:
    # 64 MiB of zeros deflate to ~64 KiB; the limit is 4 MiB: refused long before the end.
    source = zip_of_zeros(tmp_path / "bomb.zip", "weights.bin", 64 * MIB)
    assert source.stat().st_size < MIB
    limits = BundleLimits(max_total_bytes=4 * MIB)
    error = refuse(source, tmp_path, limits=limits)
    assert "'weights.bin'" in error.reason and "expands past the limit of 4.0 MiB" in error.reason
    written = sum(p.stat().st_size for p in (tmp_path / "work").rglob("*") if p.is_file())
    assert written <= 5 * MIB


def test_zip_bomb_by_compression_ratio_is_refused_with_default_limits(tmp_path: Path) -> None:
    source = zip_of_zeros(tmp_path / "bomb.zip", "weights.bin", 24 * MIB)
    error = refuse(source, tmp_path)
    assert "member 'weights.bin' expands more than 100 times" in error.reason


def test_tar_gz_bomb_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "bomb.tgz"
    with tarfile.open(source, "w:gz") as tar:
        info = tarfile.TarInfo("weights.bin")
        info.size = 24 * MIB
        with open("/dev/zero", "rb") as zeros:
            tar.addfile(info, zeros)
    error = refuse(source, tmp_path)
    assert "'weights.bin'" in error.reason and "expands more than 100 times" in error.reason


def test_oversized_tar_extended_header_is_refused(tmp_path: Path) -> None:
    info, data = tar_file("handler.py")
    info.pax_headers = {"comment": "x" * (2 * MIB)}
    source = tar_with(tmp_path / "b.tgz", [(info, data)])
    error = refuse(source, tmp_path)
    assert "extended header" in error.reason


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_too_many_members_are_refused(tmp_path: Path, kind: str) -> None:
    names = [f"f{i}.txt" for i in range(30)]
    if kind == "tar":
        source = tar_with(tmp_path / "b.tgz", [tar_file(n) for n in names])
    else:
        source = zip_with(tmp_path / "b.zip", {n: b"x" for n in names})
    error = refuse(source, tmp_path, limits=BundleLimits(max_members=20))
    assert "members" in error.reason and "20" in error.reason


def test_archive_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    source = tar_folder(write_model_folder(tmp_path / "m"), tmp_path / "b.tgz")
    error = refuse(source, tmp_path, limits=BundleLimits(max_archive_bytes=100))
    assert "'b.tgz'" in error.reason and "over the limit of 100 bytes" in error.reason


def test_duplicate_members_are_refused(tmp_path: Path) -> None:
    source = tar_with(tmp_path / "b.tgz", [tar_file("handler.py"), tar_file("./handler.py")])
    error = refuse(source, tmp_path)
    assert "'./handler.py' appears more than once" in error.reason


def test_link_to_a_missing_file_is_refused(tmp_path: Path) -> None:
    source = tar_with(tmp_path / "b.tgz", [tar_special("a.pt", tarfile.SYMTYPE, "nowhere.pt")])
    error = refuse(source, tmp_path)
    assert "'a.pt'" in error.reason and "not a file of the bundle" in error.reason


def test_something_that_is_not_an_archive_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "model.rar"
    source.write_bytes(b"Rar!\x1a\x07\x00" + bytes(100))
    error = refuse(source, tmp_path)
    assert "'model.rar' is not a folder, .tar.gz/.tgz, .zip or .mar" in error.reason


def test_damaged_archive_is_refused(tmp_path: Path) -> None:
    good = tar_folder(write_model_folder(tmp_path / "m"), tmp_path / "good.tgz")
    source = tmp_path / "cut.tgz"
    source.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    error = refuse(source, tmp_path)
    assert "damaged" in error.reason or "not a readable" in error.reason


def test_empty_bundle_is_refused(tmp_path: Path) -> None:
    source = tar_with(tmp_path / "b.tgz", [tar_special("only-a-folder", tarfile.DIRTYPE)])
    assert "holds no files" in refuse(source, tmp_path).reason


# -- good bundles ------------------------------------------------------------------------------
def expected_files(bundle_files: list) -> set[str]:
    return {f.path for f in bundle_files}


def test_folder_is_accepted(tmp_path: Path) -> None:
    folder = write_model_folder(tmp_path / "m", files={"assets/vocab.txt": b"a\nb\n"})
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "handler.cpython-311.pyc").write_bytes(b"junk")
    with unpacked_bundle(folder) as bundle:
        assert bundle.format == "folder"
        assert expected_files(bundle.files) == {"handler.py", "assets/vocab.txt"}
        assert (bundle.root / "assets" / "vocab.txt").read_bytes() == b"a\nb\n"
        root = bundle.root
    assert not root.exists()  # the temporary folder is removed afterwards


@pytest.mark.parametrize("arcname", [".", "my-model"])
def test_tar_gz_is_accepted_with_or_without_a_top_folder(tmp_path: Path, arcname: str) -> None:
    folder = write_model_folder(tmp_path / "m", files={"assets/vocab.txt": b"v"})
    source = tar_folder(folder, tmp_path / "b.tar.gz", arcname=arcname)
    with unpacked_bundle(source) as bundle:
        assert bundle.format == "tar"
        assert (bundle.root / "handler.py").read_text() == HANDLER
        assert expected_files(bundle.files) == {"handler.py", "assets/vocab.txt"}
        assert len(bundle.sha256) == 64 and bundle.source_bytes == source.stat().st_size


@pytest.mark.parametrize("prefix", ["", "model/"])
def test_zip_is_accepted_with_or_without_a_top_folder(tmp_path: Path, prefix: str) -> None:
    folder = write_model_folder(tmp_path / "m", files={"model.pt": b"w" * 1000})
    source = zip_folder(folder, tmp_path / "b.zip", prefix=prefix)
    with unpacked_bundle(source) as bundle:
        assert bundle.format == "zip"
        assert expected_files(bundle.files) == {"handler.py", "model.pt"}
        assert bundle.top_level_files() == ["handler.py", "model.pt"]


def test_ready_mar_is_accepted_with_its_manifest(tmp_path: Path) -> None:
    source = make_mar(tmp_path / "ready.mar", files={"handler.py": HANDLER.encode()})
    with unpacked_bundle(source) as bundle:
        assert bundle.format == "mar"
        assert bundle.manifest is not None and bundle.manifest["model"]["handler"] == "handler.py"
        assert bundle.mar_path == source
        assert (bundle.root / "MAR-INF" / "MANIFEST.json").is_file()


def test_mar_without_a_handler_in_its_manifest_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "bad.mar"
    with zipfile.ZipFile(source, "w") as archive:
        archive.writestr("MAR-INF/MANIFEST.json", '{"model": {"modelName": "m"}}')
    assert "names no handler" in refuse(source, tmp_path).reason


def test_links_inside_the_bundle_become_copies(tmp_path: Path) -> None:
    source = tar_with(
        tmp_path / "b.tgz",
        [
            tar_file("m/handler.py", HANDLER.encode()),
            tar_file("m/blobs/abc", b"weights"),
            tar_special("m/model.pt", tarfile.SYMTYPE, "blobs/abc"),
            tar_special("m/copy.pt", tarfile.LNKTYPE, "m/blobs/abc"),
        ],
    )
    with unpacked_bundle(source) as bundle:
        for name in ("model.pt", "copy.pt"):
            path = bundle.root / name
            assert not path.is_symlink() and path.read_bytes() == b"weights"
        assert expected_files(bundle.files) == {"handler.py", "blobs/abc", "model.pt", "copy.pt"}


def test_member_permissions_are_not_taken_from_the_archive(tmp_path: Path) -> None:
    source = tar_with(tmp_path / "b.tgz", [tar_file("handler.py", b"x", mode=0o4777)])
    with unpacked_bundle(source) as bundle:
        mode = stat.S_IMODE((bundle.root / "handler.py").stat().st_mode)
        assert mode & (stat.S_ISUID | stat.S_IWOTH | stat.S_IXUSR) == 0


def test_zip_member_lying_about_its_size_is_refused(tmp_path: Path) -> None:
    # The headers claim 10 bytes; the data holds 1 MiB. Sizes are counted, not believed:
    # at most the claimed bytes are read, and the checksum then exposes the lie.
    source = zip_with(tmp_path / "liar.zip", {"handler.py": HANDLER.encode(), "w.bin": bytes(MIB)})
    data = bytearray(source.read_bytes())
    with zipfile.ZipFile(source) as archive:
        info = archive.getinfo("w.bin")
    local = info.header_offset
    data[local + 22 : local + 26] = (10).to_bytes(4, "little")  # local header: uncompressed size
    central = data.index(b"PK\x01\x02", data.index(b"PK\x01\x02") + 1)  # w.bin's entry
    data[central + 24 : central + 28] = (10).to_bytes(4, "little")
    source.write_bytes(bytes(data))
    error = refuse(source, tmp_path)
    assert "'w.bin'" in error.reason and "damaged" in error.reason
    written = sum(p.stat().st_size for p in (tmp_path / "work").rglob("w.bin"))
    assert written <= 10
