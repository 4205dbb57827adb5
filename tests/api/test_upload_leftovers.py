"""An upload that does not become a submission leaves storage as it was.

Each case starts from a storage holding one real submission, breaks an upload one way, and
compares every file and folder (hidden and unfinished ones too) with the listing before.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
import uvicorn

from api.app import create_app
from core.context import Services
from core.incoming import sweep_storage
from core.models import Submission, utcnow
from core.storage import LocalStorage
from tests.api.conftest import auth
from tests.api.test_submissions import bundle_bytes, upload
from tests.conftest import FIXTURES, free_port

BOUNDARY = "wb-test-boundary"


def listing(services: Services) -> list[str]:
    """Every file and folder below the top-level ones, which concurrent uploads share."""
    assert isinstance(services.storage, LocalStorage)
    root = services.storage.root
    return sorted(p.relative_to(root).as_posix() for p in Path(root).glob("*/**/*"))


async def submission_ids(services: Services) -> list[str]:
    async with services.db.session() as session:
        return sorted(await session.scalars(sa.select(Submission.id)))


@pytest.fixture
async def before(client, services, token) -> list[str]:
    """Storage with one real submission in it, as listed before the broken upload."""
    response = await upload(client, token)
    assert response.status_code == 201, response.text
    return listing(services)


async def assert_as_before(services: Services, before: list[str], *, wait: float = 0) -> None:
    """Storage is as it was and there is still one submission (waiting up to `wait` s for a
    server that cleans up after answering)."""
    for _ in range(int(wait / 0.05)):
        if listing(services) == before:
            break
        await asyncio.sleep(0.05)
    assert listing(services) == before
    assert len(await submission_ids(services)) == 1


def form_head(fields: dict[str, str], filename: str = "model.tar.gz") -> bytes:
    """A multipart body up to the file's first byte: the fields, then the file part's headers."""
    head = "".join(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields.items()
    )
    head += (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    return head.encode()


FORM_TAIL = f"\r\n--{BOUNDARY}--\r\n".encode()
MULTIPART = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


async def test_two_file_parts(client, services, token, before):
    bundle = ("model.tar.gz", bundle_bytes())
    twice = await client.post(
        "/api/v1/submissions",
        data={"task": "toy"},
        files=[("file", bundle), ("file", bundle)],
        headers=auth(token),
    )
    assert twice.status_code == 422 and "one file" in twice.json()["error"]["message"]
    await assert_as_before(services, before)
    other = await client.post(
        "/api/v1/submissions",
        data={"task": "toy"},
        files=[("file", bundle), ("weights", bundle)],
        headers=auth(token),
    )
    assert other.status_code == 422 and other.json()["error"]["field"] == "weights"
    await assert_as_before(services, before)


async def test_truncated_body(client, services, token, before):
    body = form_head({"task": "toy"}) + b"x" * 50_000  # no end of the file, no closing boundary
    response = await client.post(
        "/api/v1/submissions", content=body, headers={**auth(token), **MULTIPART}
    )
    assert response.status_code == 400
    assert "ended in the middle of the file" in response.json()["error"]["message"]
    await assert_as_before(services, before)


async def test_too_large_by_content_length(client, services, token, before):
    services.settings.max_upload_bytes = 1000
    response = await upload(client, token, content=b"x" * 500_000)
    assert response.status_code == 413
    await assert_as_before(services, before)


async def test_too_large_by_streamed_size(client, services, token, before):
    # No Content-Length (chunked): only the bytes themselves tell; toy.toml allows 1 MiB.
    async def body() -> AsyncIterator[bytes]:
        yield form_head({"task": "toy"})
        for _ in range(20):
            yield b"x" * 65536
        yield FORM_TAIL

    response = await client.post(
        "/api/v1/submissions", content=body(), headers={**auth(token), **MULTIPART}
    )
    assert response.status_code == 413 and "1048576" in response.json()["error"]["message"]
    await assert_as_before(services, before)


async def test_a_bad_field_after_the_file(client, services, token, before):
    private = f'\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name="private"\r\n\r\nmaybe'
    body = form_head({"task": "toy"}) + bundle_bytes() + private.encode() + FORM_TAIL
    response = await client.post(
        "/api/v1/submissions", content=body, headers={**auth(token), **MULTIPART}
    )
    assert response.status_code == 400 and response.json()["error"]["field"] == "private"
    await assert_as_before(services, before)


async def test_a_failure_after_the_bundle_moved(services, token, before, monkeypatch):
    # The bundle reached its public key, then the request failed before the commit.
    move = services.storage.move

    async def move_then_fail(src: str, dst: str) -> None:
        await move(src, dst)
        raise ConnectionError("storage answered too late")

    monkeypatch.setattr(services.storage, "move", move_then_fail)
    # Answered as a server would (a 500), not raised into the test.
    transport = httpx.ASGITransport(app=create_app(services), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await upload(client, token, name="unlucky")
    assert response.status_code == 500 and response.json()["error"]["code"] == "internal"
    await assert_as_before(services, before)


async def send_part_of_an_upload(
    port: int, token: str, services: Services
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Start a 900 kB upload over a raw connection, send a third of the file and return once
    the server is writing it to storage."""
    head = form_head({"task": "toy", "name": "interrupted"})
    length = len(head) + 900_000 + len(FORM_TAIL)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        (
            "POST /api/v1/submissions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: {MULTIPART['Content-Type']}\r\n"
            f"Content-Length: {length}\r\n\r\n"
        ).encode()
        + head
        + os.urandom(300_000)
    )
    await writer.drain()
    for _ in range(400):
        if any(o.size > 0 for o in await services.storage.list_info("incoming")):
            return reader, writer
        await asyncio.sleep(0.025)
    raise AssertionError("the server never started storing the upload")


async def test_client_disconnect_mid_file(services, token, before):
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(services), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
        )
    )
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not serving.done(), "the server did not start"
            await asyncio.sleep(0.02)
        _, writer = await send_part_of_an_upload(port, token, services)
        assert listing(services) != before  # the temporary is there while the bytes flow
        writer.close()
        await writer.wait_closed()
        await assert_as_before(services, before, wait=10)
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)


async def test_server_killed_mid_upload_leaves_what_the_sweeper_removes(
    services, token, before, tmp_path
):
    # A leftover from long ago: the server sweeps it when it starts.
    stale = f"incoming/{'0' * 32}/.model.tar.gz.1.2.part"
    await services.storage.write_bytes(stale, b"left by an older crash")
    long_ago = (utcnow() - timedelta(days=3)).timestamp()
    os.utime(services.storage.root / stale, (long_ago, long_ago))
    port = free_port()
    env = {
        **os.environ,
        "WEIGHBRIDGE_HOME": str(tmp_path / "server-home"),
        "WEIGHBRIDGE_DATABASE_URL": services.settings.database_url,
        "WEIGHBRIDGE_STORAGE_URL": services.storage.url,
        "WEIGHBRIDGE_TASK_CONFIGS": str(FIXTURES / "task_configs"),
    }
    server = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "cli.main", "serve", "api", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            for _ in range(600):
                assert server.returncode is None, "the server exited at start"
                try:
                    if (await http.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
        # The server has swept at start: the old leftover is gone, the real submission stays.
        await assert_as_before(services, before, wait=10)
        _, writer = await send_part_of_an_upload(port, token, services)
        server.send_signal(signal.SIGKILL)
        assert await asyncio.wait_for(server.wait(), 10) == -signal.SIGKILL
        writer.close()
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()

    leftovers = sorted(set(listing(services)) - set(before))
    assert any(p.startswith("incoming/") and p.endswith(".part") for p in leftovers), leftovers
    # Young, it could be an upload in progress: the sweeper leaves it alone.
    assert await sweep_storage(services.db, services.storage) == []
    assert sorted(set(listing(services)) - set(before)) == leftovers
    # A day later it is a leftover; the real submission, however old, keeps its bundle.
    removed = await sweep_storage(services.db, services.storage, now=utcnow() + timedelta(days=2))
    assert len(removed) == 1 and removed[0].startswith("incoming/")
    await assert_as_before(services, before)
