"""Owners' links to a whole log (GET /api/v1/submissions/{id}/logs/link), through the real app:
the owner and admins get a 15-minute link that downloads the log; everyone else gets a 404."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from api.app import create_app
from core.accounts import authenticate
from core.context import Services, start_services
from core.settings import Settings
from tests.api.conftest import auth, make_user
from tests.conftest import make_settings
from tests.core.factories import make_submission

BUILD_LOG = b"step 1\n" * 20_000
DATASET_LOG = "predicting \u2713\n".encode() * 1000


async def _submission(services: Services, token: str, *, private: bool) -> str:
    async with services.db.session() as session:
        user = await authenticate(session, token)
        s = await make_submission(session, user, private=private, status="done")
        submission_id = s.id
    await services.storage.write_bytes(f"submissions/{submission_id}/build/log", BUILD_LOG)
    await services.storage.write_bytes(f"submissions/{submission_id}/results/dev/log", DATASET_LOG)
    await services.storage.write_bytes(
        f"submissions/{submission_id}/results/dev/hwinfo.json", b"{}"
    )
    return submission_id


async def _fetch(client: httpx.AsyncClient, url: str, services: Services) -> httpx.Response:
    """A folder storage's link points at the API itself (public_url); S3's at S3."""
    if url.startswith(services.settings.public_url):
        return await client.get(httpx.URL(url).raw_path.decode())
    async with httpx.AsyncClient() as outside:
        return await outside.get(url)


async def test_the_owner_gets_a_link_to_each_whole_log(client, services, token):
    submission_id = await _submission(services, token, private=False)
    for part, log in (("build", BUILD_LOG), ("dev", DATASET_LOG)):
        answer = await client.get(
            f"/api/v1/submissions/{submission_id}/logs/link",
            params={"part": part},
            headers=auth(token),
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        expires_at = datetime.fromisoformat(body["expires_at"])
        left = expires_at - datetime.now(UTC)
        assert timedelta(minutes=14) < left <= timedelta(minutes=15) and body["part"] == part
        assert (await _fetch(client, body["url"], services)).content == log  # no token needed
    default = await client.get(
        f"/api/v1/submissions/{submission_id}/logs/link", headers=auth(token)
    )
    assert default.json()["part"] == "build"


async def test_only_the_owner_or_an_admin_gets_a_link(client, services, token):
    other = await make_user(services, "grace")
    admin = await make_user(services, "root", admin=True)
    for private in (False, True):
        submission_id = await _submission(services, token, private=private)
        path = f"/api/v1/submissions/{submission_id}/logs/link"
        for headers in (auth(other), {}):
            answer = await client.get(path, headers=headers)
            assert answer.status_code == 404, answer.text
            assert answer.json()["error"] == {
                "code": "not_found",
                "message": f"no submission {submission_id}",
                "field": "id",
            }
        assert (await client.get(path, headers=auth(admin))).status_code == 200
    missing = await client.get(
        f"/api/v1/submissions/{uuid.uuid4().hex}/logs/link", headers=auth(token)
    )
    assert missing.status_code == 404


async def test_a_part_without_a_log_names_the_parts_that_have_one(client, services, token):
    submission_id = await _submission(services, token, private=True)
    path = f"/api/v1/submissions/{submission_id}/logs/link"
    answer = await client.get(path, params={"part": "test"}, headers=auth(token))
    assert answer.status_code == 404 and answer.json()["error"]["field"] == "part"
    assert "parts with a log: build, dev" in answer.json()["error"]["message"]
    for bad in ("../build", "dev/log", ".."):
        answer = await client.get(path, params={"part": bad}, headers=auth(token))
        assert answer.status_code == 400 and answer.json()["error"]["field"] == "part"


@pytest.fixture
async def s3_services(
    tmp_path: Path, database_url: str, db, moto_url: str
) -> AsyncIterator[Services]:
    bucket = f"wb-{uuid.uuid4().hex[:12]}"
    settings: Settings = make_settings(
        tmp_path, database_url, storage_url=f"s3://{bucket}/wb", aws_endpoint_url=moto_url
    )
    started = await start_services(settings, migrate=False)
    client = await started.storage._client()  # type: ignore[attr-defined]
    await client.create_bucket(Bucket=bucket)
    yield started
    await started.close()


async def test_on_s3_the_link_is_s3s_own(s3_services):
    services = s3_services
    token = await make_user(services, "ada")
    submission_id = await _submission(services, token, private=True)
    app = create_app(services)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        answer = await client.get(
            f"/api/v1/submissions/{submission_id}/logs/link",
            params={"part": "dev"},
            headers=auth(token),
        )
        assert answer.status_code == 200, answer.text
        url = answer.json()["url"]
        assert url.startswith(services.settings.aws_endpoint_url)
        assert f"/wb/submissions/{submission_id}/results/dev/log" in url
        assert (await _fetch(client, url, services)).content == DATASET_LOG
