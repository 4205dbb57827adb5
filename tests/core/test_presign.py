"""Presigned links (core.presign): the signature scheme, the home's secret key, and S3's own
links through moto's server over HTTP (the API-served links: tests/api/test_blobs.py)."""

from __future__ import annotations

import os
import stat
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from core.errors import Forbidden, WeighbridgeError
from core.presign import presigned_url, secret_key, sign, verify_signature
from core.settings import Settings
from core.storage import Storage, storage_from_url

SECRET = "s3cr3t"


def _settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(home=tmp_path / "home", _env_file=None, **values)  # type: ignore[arg-type,call-arg]


def test_a_good_signature_passes_and_each_tampered_part_is_refused() -> None:
    expires = int(time.time()) + 60
    good = sign(SECRET, method="GET", key="submissions/a/build/log", expires=expires)
    verify_signature(
        SECRET, method="GET", key="submissions/a/build/log", expires=expires, signature=good
    )
    tampered = [
        {"method": "PUT", "key": "submissions/a/build/log", "expires": expires},
        {"method": "GET", "key": "submissions/b/build/log", "expires": expires},
        {"method": "GET", "key": "submissions/a/build/log", "expires": expires + 3600},
    ]
    for change in tampered:
        with pytest.raises(Forbidden, match="signature does not match"):
            verify_signature(SECRET, signature=good, **change)  # type: ignore[arg-type]
    with pytest.raises(Forbidden, match="signature does not match"):
        verify_signature(
            "other", method="GET", key="submissions/a/build/log", expires=expires, signature=good
        )


def test_an_expired_or_incomplete_link_is_refused() -> None:
    past = int(time.time()) - 1
    good = sign(SECRET, method="GET", key="k/x", expires=past)
    with pytest.raises(Forbidden, match="expired") as caught:
        verify_signature(SECRET, method="GET", key="k/x", expires=past, signature=good)
    assert caught.value.status == 403 and caught.value.code == "link_expired"
    for expires, signature in ((None, good), (str(past), None), ("soon", good)):
        with pytest.raises(Forbidden, match="incomplete"):
            verify_signature(SECRET, method="GET", key="k/x", expires=expires, signature=signature)


def test_path_traversal_keys_are_refused_before_any_signature() -> None:
    for key in ("../etc/passwd", "a/../../b", "/abs", "a//b", ""):
        with pytest.raises(WeighbridgeError, match="invalid storage key"):
            verify_signature(SECRET, method="GET", key=key, expires=1, signature="0" * 64)


async def test_folder_links_are_signed_by_the_api_and_check_their_input(tmp_path: Path) -> None:
    store = storage_from_url(f"file://{tmp_path / 'store'}")
    url = await presigned_url(
        store, "a b/c.txt", method="PUT", seconds=60, public_url="http://h:1/", secret=SECRET
    )
    parsed = urlparse(url)
    query = {k: v[0] for k, v in parse_qs(parsed.query).items()}
    assert (parsed.netloc, parsed.path) == ("h:1", "/api/v1/blobs/a%20b/c.txt")
    assert query["method"] == "PUT" and 55 <= int(query["expires"]) - time.time() <= 61
    verify_signature(
        SECRET,
        method="PUT",
        key="a b/c.txt",
        expires=query["expires"],
        signature=query["signature"],
    )
    with pytest.raises(WeighbridgeError, match="invalid storage key"):
        await presigned_url(store, "../x", public_url="http://h", secret=SECRET)
    with pytest.raises(WeighbridgeError, match="GET or PUT"):
        await presigned_url(store, "x", method="DELETE", public_url="http://h", secret=SECRET)  # type: ignore[arg-type]
    with pytest.raises(WeighbridgeError, match="seconds"):
        await presigned_url(store, "x", seconds=0, public_url="http://h", secret=SECRET)
    with pytest.raises(WeighbridgeError, match="WEIGHBRIDGE_SECRET_KEY"):
        await presigned_url(store, "x", public_url="http://h", secret="")


def test_the_secret_key_is_made_once_private_and_shared_by_the_home(tmp_path: Path) -> None:
    first = secret_key(_settings(tmp_path))
    path = tmp_path / "home" / "secret_key"
    assert len(first) == 64 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert secret_key(_settings(tmp_path)) == first  # another process with the same home
    assert [p.name for p in path.parent.iterdir()] == ["secret_key"]  # no temporary left
    assert secret_key(_settings(tmp_path, secret_key="set")) == "set"
    assert secret_key(_settings(tmp_path / "elsewhere")) != first


@pytest.fixture
async def s3(moto_url: str) -> AsyncIterator[Storage]:
    bucket = f"wb-{uuid.uuid4().hex[:12]}"
    store = storage_from_url(f"s3://{bucket}/pre", endpoint_url=moto_url)
    client = await store._client()  # type: ignore[attr-defined]
    await client.create_bucket(Bucket=bucket)
    yield store
    await store.close()


async def test_s3_links_read_and_write_without_credentials(s3: Storage) -> None:
    """moto's S3 does not check a presigned URL's signature or expiry (real S3 does), so this
    test checks that both work through moto and that the link carries S3's own signature
    and the expiry asked for; the expiry check itself is S3's."""
    await s3.write_bytes("submissions/x/build/log", b"built\n")
    get = await presigned_url(
        s3, "submissions/x/build/log", seconds=120, public_url="http://unused", secret=""
    )
    put = await presigned_url(
        s3, "submissions/x/results/d/log", method="PUT", public_url="http://unused", secret=""
    )
    for url, seconds in ((get, 120), (put, 900)):
        query = {k: v[0] for k, v in parse_qs(urlparse(url).query).items()}
        # SigV4 (botocore's default for links is SigV2, which S3 refuses for new buckets)
        assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256" and query["X-Amz-Signature"]
        assert int(query["X-Amz-Expires"]) == seconds
        assert "/us-east-1/s3/aws4_request" in query["X-Amz-Credential"]
        assert "/pre/submissions/x/" in urlparse(url).path
    async with httpx.AsyncClient() as http:  # no AWS credentials in these requests
        assert (await http.get(get)).content == b"built\n"
        answer = await http.put(put, content=b"ran\n")
        assert answer.status_code == 200, answer.text
    assert await s3.read_bytes("submissions/x/results/d/log") == b"ran\n"
