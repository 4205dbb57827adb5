"""The Storage contract, run by every implementation `WEIGHBRIDGE_STORAGE_URL` can name (the
local folder, and S3 on moto's server): the same keys, sizes, hashes and listings,
whole objects or none, and missing keys as FileNotFoundError."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from core.errors import TooLarge
from core.storage import Storage, storage_from_url


@pytest.fixture(params=["file", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    if request.param == "file":
        yield storage_from_url(f"file://{tmp_path / 'store'}")
        return
    # A bucket of its own on moto's server, under a prefix (keys never see either).
    endpoint = request.getfixturevalue("moto_url")
    bucket = f"wb-{uuid.uuid4().hex[:12]}"
    s3 = storage_from_url(f"s3://{bucket}/weighbridge", endpoint_url=endpoint)
    client = await s3._client()  # type: ignore[attr-defined]
    await client.create_bucket(Bucket=bucket)
    yield s3
    await s3.close()  # type: ignore[attr-defined]


async def parts(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def test_a_stream_is_stored_whole_with_its_size_and_sha256(store: Storage) -> None:
    stored = await store.write_stream("a/b/c.bin", parts(b"abc", b"", b"def" * 1000))
    data = b"abc" + b"def" * 1000
    assert (stored.key, stored.size) == ("a/b/c.bin", len(data))
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert await store.read_bytes("a/b/c.bin") == data
    assert b"".join([c async for c in store.read_stream("a/b/c.bin", chunk_size=7)]) == data
    tail = b"".join([c async for c in store.read_stream("a/b/c.bin", offset=3)])
    assert tail == data[3:]
    assert await store.size("a/b/c.bin") == len(data) and await store.exists("a/b/c.bin")


async def test_too_large_a_stream_leaves_nothing_behind(store: Storage) -> None:
    with pytest.raises(TooLarge):
        await store.write_stream("big/x", parts(b"x" * 10, b"y" * 10), max_bytes=15)
    assert not await store.exists("big/x")
    assert await store.list("big") == []


async def test_bytes_files_downloads_and_moves_round_trip(store: Storage, tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_bytes(b"hello")
    await store.write_file("f/in.txt", source)
    await store.write_bytes("f/raw", b"raw")
    out = await store.download("f/in.txt", tmp_path / "out" / "copy.txt")
    assert out.read_bytes() == b"hello"
    await store.move("f/raw", "g/raw")
    assert not await store.exists("f/raw") and await store.read_bytes("g/raw") == b"raw"
    await store.write_bytes("g/raw", b"new")  # a write replaces the object whole
    assert await store.read_bytes("g/raw") == b"new"


async def test_listing_and_deleting_by_prefix(store: Storage) -> None:
    for key in ("s/1/a", "s/1/b/c", "s/2/a", "t/a"):
        await store.write_bytes(key, key.encode())
    assert sorted(await store.list("s/1")) == ["s/1/a", "s/1/b/c"]
    assert sorted(await store.list("s")) == ["s/1/a", "s/1/b/c", "s/2/a"]
    infos = {i.key: i.size for i in await store.list_info("s")}
    assert infos == {"s/1/a": 5, "s/1/b/c": 7, "s/2/a": 5}
    assert await store.delete_prefix("s/1") == 2
    assert sorted(await store.list("s")) == ["s/2/a"] and await store.exists("t/a")


async def test_missing_keys_are_file_not_found(store: Storage, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        await store.read_bytes("nope/x")
    with pytest.raises(FileNotFoundError):
        await store.download("nope/x", tmp_path / "x")
    with pytest.raises(FileNotFoundError):
        await store.size("nope/x")
    assert not await store.exists("nope/x") and await store.list("nope") == []


async def test_large_streams_go_up_in_parts_and_come_back_whole(store: Storage) -> None:
    """Past one part (8 MiB on S3) a write is a multipart upload, sent as it fills."""
    block = bytes(range(256)) * 4096  # 1 MiB
    data = block * 9 + b"tail"
    stored = await store.write_stream("big/blob", parts(*([block] * 9), b"tail"))
    assert stored.size == len(data) and stored.sha256 == hashlib.sha256(data).hexdigest()
    assert await store.read_bytes("big/blob") == data
    with pytest.raises(TooLarge):
        await store.write_stream("big/over", parts(*([block] * 9)), max_bytes=8 * 2**20)
    assert not await store.exists("big/over")
