"""The API's own signed links to the folder storage (/api/v1/blobs), through the real app:
the link is the only grant; a wrong, tampered or expired link is a 403 in the error shape."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx

from core.context import Services
from core.presign import presigned_url, secret_key, sign, signed_url


def _path(url: str) -> str:
    """The path and query of a link (the app under test answers any host)."""
    return httpx.URL(url).raw_path.decode()


async def _link(services: Services, key: str, *, method: str = "GET", seconds: int = 60) -> str:
    url = await presigned_url(
        services.storage,
        key,
        method=method,  # type: ignore[arg-type]
        seconds=seconds,
        public_url=services.settings.public_url,
        secret=secret_key(services.settings),
    )
    assert url.startswith(services.settings.public_url + "/api/v1/blobs/")
    return _path(url)


async def test_a_get_link_streams_the_object_without_a_token(client, services):
    data = bytes(range(256)) * 5000
    await services.storage.write_bytes("submissions/s1/build/log", data)
    answer = await client.get(await _link(services, "submissions/s1/build/log"))
    assert answer.status_code == 200, answer.text
    assert answer.content == data and answer.headers["content-length"] == str(len(data))
    missing = await client.get(await _link(services, "submissions/s1/build/nothing"))
    assert missing.status_code == 404 and missing.json()["error"]["field"] == "key"


async def test_a_put_link_stores_the_streamed_body(client, services):
    async def body() -> AsyncIterator[bytes]:
        for i in range(5):
            yield bytes([i]) * 100_000

    link = await _link(services, "submissions/s2/results/d/predictions.jsonl", method="PUT")
    answer = await client.put(link, content=body())
    assert answer.status_code == 200, answer.text
    assert answer.json()["size"] == 500_000
    stored = await services.storage.read_bytes("submissions/s2/results/d/predictions.jsonl")
    assert stored == b"".join(bytes([i]) * 100_000 for i in range(5))
    again = await client.put(link, content=b"second")  # a link may be used until it expires
    assert again.status_code == 200
    assert await services.storage.read_bytes("submissions/s2/results/d/predictions.jsonl") == (
        b"second"
    )


async def test_a_put_over_the_upload_limit_is_refused_and_stores_nothing(client, services):
    services.settings.max_upload_bytes = 1000

    async def body() -> AsyncIterator[bytes]:  # no Content-Length: caught while streaming
        for _ in range(4):
            yield b"x" * 400

    link = await _link(services, "big/x", method="PUT")
    answer = await client.put(link, content=body())
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "too_large"
    declared = await client.put(link, content=b"y" * 1001)
    assert declared.status_code == 413
    assert not await services.storage.exists("big/x") and await services.storage.list("big") == []


async def test_expired_links_are_refused(client, services):
    await services.storage.write_bytes("k/old", b"old")
    secret = secret_key(services.settings)
    past = signed_url(
        "http://x", "k/old", method="GET", expires=int(time.time()) - 5, secret=secret
    )
    answer = await client.get(_path(past))
    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "link_expired"
    assert "expired" in answer.json()["error"]["message"]
    short = await _link(services, "k/old", seconds=1)
    assert (await client.get(short)).status_code == 200
    await asyncio.sleep(2.1)
    assert (await client.get(short)).status_code == 403


async def test_tampered_links_are_refused(client, services):
    await services.storage.write_bytes("k/mine", b"mine")
    await services.storage.write_bytes("k/theirs", b"theirs")
    link = await _link(services, "k/mine")
    other_key = link.replace("/k/mine?", "/k/theirs?")
    as_put = link.replace("method=GET", "method=PUT")
    signature = link.rsplit("signature=", 1)[1]
    flipped = link.replace(signature, ("0" if signature[0] != "0" else "1") + signature[1:])
    later = link.replace("expires=", "expires=9")
    attempts = [
        client.get(other_key),
        client.put(as_put, content=b"overwritten"),
        client.put(link, content=b"overwritten"),  # a GET link used to write
        client.get(flipped),
        client.get(later),
        client.get(link.split("?")[0]),  # no signature at all
    ]
    for attempt in attempts:
        answer = await attempt
        assert answer.status_code == 403, answer.text
        assert answer.json()["error"]["code"] == "bad_signature"
    assert await services.storage.read_bytes("k/mine") == b"mine"
    assert (await client.get(link)).content == b"mine"


async def test_path_traversal_keys_are_refused(client, services, tmp_path):
    (tmp_path / "outside").write_text("secret")
    secret = secret_key(services.settings)
    expires = int(time.time()) + 60
    for raw in ("/api/v1/blobs/a/%2E%2E/%2E%2E/outside", "/api/v1/blobs/a//b"):
        answer = await client.get(f"{raw}?expires={expires}&method=GET&signature={'0' * 64}")
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["field"] == "key" and "secret" not in answer.text
    forged = sign(secret, method="GET", key="../../outside", expires=expires)
    answer = await client.get(
        f"/api/v1/blobs/..%2F..%2Foutside?expires={expires}&method=GET&signature={forged}"
    )
    assert answer.status_code == 400 and answer.json()["error"]["field"] == "key"
