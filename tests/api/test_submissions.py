"""Uploads, listings, timelines, cancel and the error catalogue, through the real app."""

from __future__ import annotations

import gzip
import io
import tarfile

import httpx
import sqlalchemy as sa

from core.context import Services
from core.models import Event, QueueMessage, Submission
from tests.api.conftest import auth, make_user


def bundle_bytes() -> bytes:
    """The same bytes on every call (gzip's header stamps the time unless told not to)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        data = b"def handle(data, context):\n    return [{'label': 0} for _ in data]\n"
        info = tarfile.TarInfo("handler.py")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


async def upload(
    client: httpx.AsyncClient,
    token: str | None,
    *,
    task: str = "toy",
    content: bytes | None = None,
    field: str = "file",
    name: str = "my-model",
    private: bool = False,
) -> httpx.Response:
    data = {"task": task, "name": name, "private": "true" if private else "false"}
    files = {field: ("model.tar.gz", bundle_bytes() if content is None else content)}
    headers = auth(token) if token else {}
    return await client.post("/api/v1/submissions", data=data, files=files, headers=headers)


async def counts(services: Services) -> tuple[int, int, int, list[str]]:
    async with services.db.session() as session:
        n_sub = await session.scalar(sa.select(sa.func.count()).select_from(Submission))
        n_ev = await session.scalar(sa.select(sa.func.count()).select_from(Event))
        n_msg = await session.scalar(sa.select(sa.func.count()).select_from(QueueMessage))
    return n_sub, n_ev, n_msg, await services.storage.list("submissions")


async def assert_nothing_written(services: Services) -> None:
    assert await counts(services) == (0, 0, 0, [])


async def test_upload_creates_row_event_and_build_message(client, services, token):
    response = await upload(client, token)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "uploaded" and body["task"] == "toy" and body["owner"] == "ada"
    assert body["bytes"] == len(bundle_bytes())
    sub_id = body["id"]
    key = f"submissions/{sub_id}/upload/model.tar.gz"
    assert await services.storage.read_bytes(key) == bundle_bytes()
    build = await services.queue.receive(["build"])
    assert len(build) == 1
    payload = build[0].envelope.payload
    assert build[0].envelope.action_id == sub_id
    assert payload["submission"]["upload_key"] == key
    assert payload["task"]["slug"] == "toy" and payload["owner"]["email"] == "ada@example.org"
    assert [v.service for v in build[0].envelope.visited] == ["api"]

    detail = (await client.get(f"/api/v1/submissions/{sub_id}", headers=auth(token))).json()
    assert detail["status"] == "uploaded" and detail["error"] is None
    assert [e["type"] for e in detail["events"]] == ["status.uploaded"]
    listing = (await client.get("/api/v1/submissions", headers=auth(token))).json()
    assert [s["id"] for s in listing["submissions"]] == [sub_id]


async def test_cancel_appends_event_and_is_final(client, services, token):
    sub_id = (await upload(client, token)).json()["id"]
    response = await client.post(f"/api/v1/submissions/{sub_id}/cancel", headers=auth(token))
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert [e["status"] for e in response.json()["events"]] == ["uploaded", "cancelled"]
    again = await client.post(f"/api/v1/submissions/{sub_id}/cancel", headers=auth(token))
    assert again.status_code == 409 and "already cancelled" in again.json()["error"]["message"]
    events = (await client.get(f"/api/v1/submissions/{sub_id}/events?after=0")).json()
    assert events["status"] == "cancelled" and len(events["events"]) == 2


async def test_private_submissions_are_hidden_from_others(client, services, token):
    sub_id = (await upload(client, token, private=True)).json()["id"]
    other = await make_user(services, "bob")
    hidden = await client.get(f"/api/v1/submissions/{sub_id}", headers=auth(other))
    assert hidden.status_code == 404
    anonymous = await client.get(f"/api/v1/submissions/{sub_id}")
    assert anonymous.status_code == 404
    mine = await client.get(f"/api/v1/submissions/{sub_id}", headers=auth(token))
    assert mine.status_code == 200 and mine.json()["private"] is True
    everyone = await client.get("/api/v1/submissions?all=true", headers=auth(other))
    assert everyone.json()["submissions"] == []


async def test_missing_and_invalid_token(client, services):
    missing = await upload(client, None)
    assert missing.status_code == 401
    assert "missing API token" in missing.json()["error"]["message"]
    invalid = await upload(client, "wb_not-a-token")
    assert invalid.status_code == 401
    assert "invalid API token" in invalid.json()["error"]["message"]
    await assert_nothing_written(services)


async def test_unknown_task_names_it(client, services, token):
    response = await upload(client, token, task="toi")
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["field"] == "task" and "'toi'" in error["message"] and "toy" in error["message"]
    await assert_nothing_written(services)


async def test_empty_file(client, services, token):
    response = await upload(client, token, content=b"")
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "empty_file"
    await assert_nothing_written(services)


async def test_file_over_the_task_limit(client, services, token):
    # toy.toml limits uploads to 1 MiB.
    response = await upload(client, token, content=b"x" * (1024 * 1024 + 1))
    assert response.status_code == 413
    assert "1048576" in response.json()["error"]["message"]
    await assert_nothing_written(services)


async def test_file_over_the_global_limit_by_content_length(client, services, token):
    services.settings.max_upload_bytes = 1000
    response = await upload(client, token, content=b"x" * 500_000)
    assert response.status_code == 413
    await assert_nothing_written(services)


async def test_wrong_multipart_field(client, services, token):
    response = await upload(client, token, field="upload")
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["field"] == "upload" and "'file'" in error["message"]
    await assert_nothing_written(services)


async def test_no_file_and_not_multipart(client, services, token):
    no_file = await client.post(
        "/api/v1/submissions", data={"task": "toy"}, files={}, headers=auth(token)
    )
    assert no_file.status_code in (415, 422)
    as_json = await client.post("/api/v1/submissions", json={"task": "toy"}, headers=auth(token))
    assert as_json.status_code == 415
    assert "multipart/form-data" in as_json.json()["error"]["message"]
    await assert_nothing_written(services)


async def test_malformed_id(client, token):
    for path in ("/api/v1/submissions/not-an-id", "/api/v1/submissions/123/results"):
        response = await client.get(path, headers=auth(token))
        assert response.status_code == 422
        assert response.json()["error"]["field"] == "id"
    cancel = await client.post("/api/v1/submissions/zzz/cancel", headers=auth(token))
    assert cancel.status_code == 422


async def test_cancel_someone_elses_submission(client, services, token):
    sub_id = (await upload(client, token)).json()["id"]
    other = await make_user(services, "mallory")
    response = await client.post(f"/api/v1/submissions/{sub_id}/cancel", headers=auth(other))
    assert response.status_code == 403
    detail = (await client.get(f"/api/v1/submissions/{sub_id}")).json()
    assert detail["status"] == "uploaded" and len(detail["events"]) == 1


async def test_submission_limit_per_task_not_counting_failed_or_cancelled(client, services, token):
    ids = [(await upload(client, token, name=f"m{i}")).json()["id"] for i in range(3)]
    over = await upload(client, token, name="m3")
    assert over.status_code == 429
    error = over.json()["error"]
    assert error["limit"] == 3 and error["window_hours"] == 24
    assert "next slot opens" in error["message"] and error["next_slot_at"]
    assert int(over.headers["retry-after"]) > 0
    n_sub, *_ = await counts(services)
    assert n_sub == 3
    # A cancelled submission gives its slot back.
    await client.post(f"/api/v1/submissions/{ids[0]}/cancel", headers=auth(token))
    assert (await upload(client, token, name="m4")).status_code == 201
    # Another user has their own budget.
    other = await make_user(services, "grace")
    assert (await upload(client, other)).status_code == 201


async def test_errors_never_500_on_bad_query(client, token):
    response = await client.get("/api/v1/submissions?limit=0", headers=auth(token))
    assert response.status_code == 422 and response.json()["error"]["field"] == "limit"
    assert (await client.get("/api/v1/nothing")).status_code == 404


async def test_purge_deletes_rows_and_files_of_own_submission_only(client, services, token):
    sub_id = (await upload(client, token)).json()["id"]
    other = await make_user(services, "eve")
    refused = await client.delete(f"/api/v1/submissions/{sub_id}", headers=auth(other))
    assert refused.status_code == 403
    assert await services.storage.list(f"submissions/{sub_id}")
    purged = await client.delete(f"/api/v1/submissions/{sub_id}", headers=auth(token))
    assert purged.status_code == 200, purged.text
    assert purged.json()["purged"] == [sub_id] and purged.json()["files_deleted"] == 1
    assert (await client.get(f"/api/v1/submissions/{sub_id}")).status_code == 404
    n_sub, n_ev, _, files = await counts(services)
    assert (n_sub, n_ev, files) == (0, 0, [])
