"""The local-folder storage: streamed writes with size and checksum, limits, safe keys, prefixes."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from core.errors import TooLarge, WeighbridgeError
from core.storage import LocalStorage, storage_from_url


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def all_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "store")


async def test_write_stream_reports_size_and_sha256_and_reads_back(storage: LocalStorage) -> None:
    parts = [os.urandom(100_000), os.urandom(3), b"", os.urandom(70_000)]
    data = b"".join(parts)
    stored = await storage.write_stream("submissions/abc/upload/model.tar.gz", chunks(*parts))
    assert stored.key == "submissions/abc/upload/model.tar.gz"
    assert stored.size == len(data)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert await storage.read_bytes(stored.key) == data
    assert await storage.size(stored.key) == len(data)
    assert await storage.exists(stored.key)
    streamed = b"".join([c async for c in storage.read_stream(stored.key, chunk_size=4096)])
    assert streamed == data
    tail = b"".join([c async for c in storage.read_stream(stored.key, offset=100_000)])
    assert tail == data[100_000:]


async def test_too_large_a_stream_raises_and_leaves_no_file(storage: LocalStorage) -> None:
    with pytest.raises(TooLarge, match="larger than the limit of 1000 bytes") as err:
        await storage.write_stream(
            "submissions/abc/upload/big.bin", chunks(b"x" * 600, b"x" * 600), max_bytes=1000
        )
    assert err.value.status == 413
    assert all_files(storage.root) == []
    assert not await storage.exists("submissions/abc/upload/big.bin")


async def test_too_large_an_overwrite_keeps_the_old_file_whole(storage: LocalStorage) -> None:
    key = "submissions/abc/build/log"
    await storage.write_bytes(key, b"first version")
    with pytest.raises(TooLarge):
        await storage.write_stream(key, chunks(b"y" * 50, b"y" * 50), max_bytes=60)
    assert await storage.read_bytes(key) == b"first version"
    assert all_files(storage.root) == [key]


async def test_a_stream_that_fails_midway_leaves_no_partial_file(storage: LocalStorage) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"a" * 1000
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await storage.write_stream("submissions/abc/upload/x.zip", broken())
    assert all_files(storage.root) == []


async def test_a_stream_exactly_at_the_limit_is_accepted(storage: LocalStorage) -> None:
    stored = await storage.write_stream("a/b", chunks(b"z" * 500, b"z" * 500), max_bytes=1000)
    assert stored.size == 1000


@pytest.mark.parametrize(
    "key",
    [
        "../outside",
        "submissions/../../etc/passwd",
        "submissions/abc/..",
        "/etc/passwd",
        "",
        "submissions//upload",
        "./x",
    ],
)
async def test_keys_that_could_leave_the_store_are_refused(
    storage: LocalStorage, tmp_path: Path, key: str
) -> None:
    with pytest.raises(WeighbridgeError, match="invalid storage key") as err:
        await storage.write_bytes(key, b"nope")
    assert err.value.field == "key"
    for call in (storage.read_bytes, storage.exists, storage.delete_prefix):
        with pytest.raises(WeighbridgeError, match="invalid storage key"):
            await call(key)
    assert all_files(tmp_path) == []


async def test_list_and_delete_prefix(storage: LocalStorage) -> None:
    keys = [
        "submissions/a/upload/model.zip",
        "submissions/a/build/model.mar",
        "submissions/a/results/test/predictions.jsonl",
        "submissions/ab/upload/model.zip",
        "datasets/0123/test.jsonl",
    ]
    for key in keys:
        await storage.write_bytes(key, key.encode())

    assert await storage.list("submissions/a/") == sorted(keys[:3])
    assert await storage.list("submissions/a") == sorted(keys[:3])
    assert await storage.list("") == sorted(keys)
    assert await storage.list("submissions/nobody") == []

    assert await storage.delete_prefix("submissions/a/") == 3
    assert await storage.list("submissions") == ["submissions/ab/upload/model.zip"]
    assert await storage.delete_prefix("submissions/a/") == 0
    assert await storage.delete_prefix("datasets/0123/test.jsonl") == 1
    assert await storage.list("") == ["submissions/ab/upload/model.zip"]


async def test_list_refuses_a_prefix_outside_the_store(storage: LocalStorage) -> None:
    with pytest.raises(WeighbridgeError, match="invalid storage key"):
        await storage.list("../")


async def test_deleting_everything_needs_a_prefix(storage: LocalStorage) -> None:
    await storage.write_bytes("a/b", b"1")
    with pytest.raises(WeighbridgeError, match="invalid storage key"):
        await storage.delete_prefix("")
    assert await storage.list("") == ["a/b"]


async def test_missing_keys_raise_file_not_found(storage: LocalStorage, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        await storage.read_bytes("nope/x")
    with pytest.raises(FileNotFoundError):
        await storage.size("nope/x")
    with pytest.raises(FileNotFoundError):
        await storage.download("nope/x", tmp_path / "x")
    assert not await storage.exists("nope/x")


async def test_write_file_and_download_round_trip(storage: LocalStorage, tmp_path: Path) -> None:
    source = tmp_path / "weights.bin"
    source.write_bytes(os.urandom(3 << 20))
    stored = await storage.write_file("submissions/a/upload/weights.bin", source)
    assert stored.sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    target = await storage.download(stored.key, tmp_path / "out" / "w.bin")
    assert target.read_bytes() == source.read_bytes()


def test_storage_from_url_picks_a_folder_and_explains_bad_urls(tmp_path: Path) -> None:
    store = storage_from_url(f"file://{tmp_path / 'st'}")
    assert isinstance(store, LocalStorage)
    assert store.root == tmp_path / "st"
    with pytest.raises(WeighbridgeError, match="unknown storage URL scheme 'ftp'"):
        storage_from_url("ftp://host/x")
    s3 = storage_from_url("s3://bucket/some/prefix/", endpoint_url="http://127.0.0.1:9")
    assert (s3.url, s3.local_path("a")) == ("s3://bucket/some/prefix", None)
    with pytest.raises(WeighbridgeError, match="names no bucket"):
        storage_from_url("s3:///prefix")


def all_paths(root: Path) -> list[str]:
    """Files and folders (hidden and unfinished ones too), as the store's owner sees them."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


async def test_move_places_the_object_and_leaves_no_empty_folder(storage: LocalStorage) -> None:
    await storage.write_bytes("incoming/abc/model.zip", b"bundle")
    await storage.write_bytes("submissions/abc/upload/model.zip", b"older")
    await storage.move("incoming/abc/model.zip", "submissions/abc/upload/model.zip")
    assert await storage.read_bytes("submissions/abc/upload/model.zip") == b"bundle"
    assert not await storage.exists("incoming/abc/model.zip")
    # The top-level folders stay (concurrent writes share them); the upload's own one goes.
    assert all_paths(storage.root) == [
        "incoming",
        "submissions",
        "submissions/abc",
        "submissions/abc/upload",
        "submissions/abc/upload/model.zip",
    ]
    with pytest.raises(FileNotFoundError):
        await storage.move("incoming/abc/model.zip", "submissions/abc/upload/other.zip")
    with pytest.raises(WeighbridgeError, match="invalid storage key"):
        await storage.move("submissions/abc/upload/model.zip", "../outside")


async def test_deletes_leave_no_empty_folders_below_the_top_level(storage: LocalStorage) -> None:
    await storage.write_bytes("submissions/abc/upload/model.zip", b"1")
    await storage.write_bytes("submissions/abc/build/log", b"2")
    await storage.delete_prefix("submissions/abc/upload/model.zip")
    assert all_paths(storage.root) == [
        "submissions",
        "submissions/abc",
        "submissions/abc/build",
        "submissions/abc/build/log",
    ]
    await storage.delete_prefix("submissions/abc/build")
    assert all_paths(storage.root) == ["submissions"]
    with pytest.raises(TooLarge):
        await storage.write_stream("incoming/x/big", chunks(b"x" * 10), max_bytes=5)
    assert all_paths(storage.root) == ["incoming", "submissions"]


async def test_list_info_reports_sizes_times_and_unfinished_writes(storage: LocalStorage) -> None:
    await storage.write_bytes("incoming/a/model.zip", b"12345")
    unfinished = storage.root / "incoming/b/.model.zip.1.2.part"
    unfinished.parent.mkdir(parents=True)
    unfinished.write_bytes(b"12")
    old = datetime(2020, 1, 2, tzinfo=UTC)
    os.utime(unfinished, (old.timestamp(), old.timestamp()))

    found = await storage.list_info("incoming")
    assert [(o.key, o.size) for o in found] == [
        ("incoming/a/model.zip", 5),
        ("incoming/b/.model.zip.1.2.part", 2),
    ]
    assert found[1].modified == old
    assert abs((datetime.now(UTC) - found[0].modified).total_seconds()) < 60
    # `list` shows readable objects only; the unfinished one is still deleted with its prefix.
    assert await storage.list("incoming") == ["incoming/a/model.zip"]
    assert await storage.list_info("nothing/here") == []
    assert [o.key for o in await storage.list_info("incoming/a/model.zip")] == [
        "incoming/a/model.zip"
    ]
    assert await storage.delete_prefix("incoming/b") == 1
    assert [o.key for o in await storage.list_info("")] == ["incoming/a/model.zip"]


async def test_two_holders_writing_one_key_leave_one_whole_object(storage: LocalStorage) -> None:
    """Two workers may hold one message for a moment (a lease lost while a write is under
    way): every write replaces the object whole, so readers see one attempt's file or the
    other's, never a mixture or a torn file."""
    import asyncio

    versions = [bytes([i]) * (2 * 1024 * 1024 + i) for i in range(6)]
    await asyncio.gather(
        *(storage.write_bytes("submissions/s/results/test/predictions.jsonl", v) for v in versions)
    )
    stored = await storage.read_bytes("submissions/s/results/test/predictions.jsonl")
    assert stored in versions
    leftovers = [p.name for p in storage.root.rglob("*") if p.name.endswith(".part")]
    assert leftovers == []
