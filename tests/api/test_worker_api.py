"""The worker routes: a worker token grants its fleet's jobs and nothing else; reports are
signed with the job's secret; presigned links expire; a lost lease goes to another worker."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from core import remote_jobs
from core.context import Services
from core.errors import WeighbridgeError
from core.models import RemoteJob, new_id
from core.report_signatures import SIGNATURE_HEADER, sign_report
from core.settings import Settings
from core.worker_tokens import create_worker_token, revoke_worker_token
from tests.api.conftest import auth, make_user
from tests.conftest import make_settings

NORTH, SOUTH = "north", "south"
LEASE = 1.0
ROWS = [{"uid": f"u{i}", "x": i, "label": i % 2} for i in range(5)]


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    # Short leases and links, so that losing one takes a second; links point at the test app.
    return make_settings(
        tmp_path,
        database_url,
        worker_lease_seconds=LEASE,
        worker_url_seconds=2,
        public_url="http://testserver",
    )


async def worker_token(services: Services, fleet: str, label: str = "w") -> tuple[int, str]:
    async with services.db.session() as session:
        row, token = await create_worker_token(
            session, fleet=fleet, label=label, fleets=[NORTH, SOUTH]
        )
    assert row.id is not None
    return row.id, token


async def queue_job(services: Services, fleet: str = NORTH) -> RemoteJob:
    """A job as the remote runner makes one: an archive and inputs-only lines in storage."""
    sid, job_id = new_id(), new_id()
    archive = f"submissions/{sid}/build/model.mar"
    await services.storage.write_bytes(archive, b"not really a zip")
    inputs = b"".join(json.dumps({"uid": r["uid"], "x": r["x"]}).encode() + b"\n" for r in ROWS)
    await services.storage.write_bytes(f"remote/{job_id}/inputs.jsonl", inputs)
    prefix = f"submissions/{sid}/results/test"
    spec: dict[str, Any] = {
        "task": {"slug": "toy", "input_fields": ["x"], "output_fields": {"label": "int"}},
        "model": {
            "mar_key": archive,
            "sha256": hashlib.sha256(b"not really a zip").hexdigest(),
            "handler": "handler.py",
            "name": "m",
        },
        "dataset": {
            "name": "test",
            "n_examples": len(ROWS),
            "inputs_key": f"remote/{job_id}/inputs.jsonl",
            "sha256": hashlib.sha256(inputs).hexdigest(),
        },
        "results": {
            "predictions": f"{prefix}/predictions.jsonl",
            "log": f"{prefix}/log",
            "result": f"{prefix}/result.json",
        },
    }
    async with services.db.session() as session:
        return await remote_jobs.create_job(
            session, job_id=job_id, fleet=fleet, submission_id=sid, dataset="test", spec=spec
        )


async def claim(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post("/api/v1/worker/jobs/claim", headers=auth(token))


async def report(
    client: httpx.AsyncClient,
    token: str,
    job_id: str,
    verb: str,
    payload: dict[str, Any],
    *,
    secret: str | None,
    signed_body: bytes | None = None,
) -> httpx.Response:
    body = json.dumps(payload).encode()
    headers = auth(token)
    if secret is not None:
        headers[SIGNATURE_HEADER] = sign_report(
            secret, body if signed_body is None else signed_body
        )
    return await client.post(f"/api/v1/worker/jobs/{job_id}/{verb}", content=body, headers=headers)


async def job_row(services: Services, job_id: str) -> RemoteJob:
    async with services.db.session() as session:
        job = await remote_jobs.get_job(session, job_id)
    assert job is not None
    return job


async def test_a_worker_gets_only_its_fleets_jobs(
    services: Services, client: httpx.AsyncClient
) -> None:
    _, north = await worker_token(services, NORTH)
    _, south = await worker_token(services, SOUTH)
    job = await queue_job(services, NORTH)

    assert (await claim(client, south)).status_code == 204
    got = await claim(client, north)
    assert got.status_code == 200, got.text
    doc = got.json()
    assert (doc["job_id"], doc["fleet"], doc["attempt"]) == (job.id, NORTH, 1)
    assert doc["task"]["input_fields"] == ["x"] and doc["lease_seconds"] == LEASE
    assert set(doc["upload"]) == {"predictions_url", "log_url", "result_url"}
    # The inputs link serves the uids and input fields; the labels were never written there.
    inputs = await client.get(doc["dataset"]["inputs_url"])
    assert inputs.status_code == 200
    lines = [json.loads(line) for line in inputs.content.splitlines()]
    assert lines == [{"uid": r["uid"], "x": r["x"]} for r in ROWS]
    assert hashlib.sha256(inputs.content).hexdigest() == doc["dataset"]["sha256"]
    # Nothing left for either fleet.
    assert (await claim(client, north)).status_code == 204

    # Another fleet's job is a 404, exactly like an unknown id, whatever the route.
    payloads: dict[str, dict[str, Any]] = {
        "heartbeat": {},
        "complete": {"performance": {}},
        "fail": {"error": "x"},
    }
    for verb, payload in payloads.items():
        other = await report(client, south, job.id, verb, payload, secret=doc["secret"])
        unknown = await report(client, north, new_id(), verb, payload, secret=doc["secret"])
        assert (other.status_code, unknown.status_code) == (404, 404), verb
        assert other.json()["error"]["code"] == "not_found"
    assert (await job_row(services, job.id)).status == "claimed"


async def test_a_worker_token_opens_no_other_route_and_a_user_token_no_worker_route(
    services: Services, client: httpx.AsyncClient
) -> None:
    _, north = await worker_token(services, NORTH)
    user = await make_user(services, "owner")
    for method, path in [
        ("GET", "/api/v1/submissions"),
        ("GET", "/api/v1/ping"),
        ("POST", "/api/v1/submissions"),
        ("GET", f"/api/v1/submissions/{new_id()}"),
        ("GET", "/api/v1/tasks/toy/leaderboard"),
    ]:
        response = await client.request(method, path, headers=auth(north))
        assert response.status_code == 401, (path, response.text)
        assert "worker token" in response.json()["error"]["message"]
    refused = await claim(client, user)
    assert refused.status_code == 401
    assert "worker token (wbw_" in refused.json()["error"]["message"]
    assert (await client.post("/api/v1/worker/jobs/claim")).status_code == 401


async def test_a_revoked_token_is_refused_at_once(
    services: Services, client: httpx.AsyncClient
) -> None:
    token_id, north = await worker_token(services, NORTH)
    assert (await claim(client, north)).status_code == 204
    async with services.db.session() as session:
        await revoke_worker_token(session, token_id)
    refused = await claim(client, north)
    assert refused.status_code == 401
    assert "revoked" in refused.json()["error"]["message"]


async def test_reports_need_the_jobs_secret(services: Services, client: httpx.AsyncClient) -> None:
    _, north = await worker_token(services, NORTH)
    job = await queue_job(services)
    doc = (await claim(client, north)).json()
    secret = doc["secret"]
    done = {"performance": {"examples_per_second": 10.0}, "worker": {"name": "w"}}

    missing = await report(client, north, job.id, "complete", done, secret=None)
    assert missing.status_code == 403 and missing.json()["error"]["code"] == "bad_signature"
    tampered = await report(
        client, north, job.id, "complete", done, secret=secret, signed_body=b'{"other": 1}'
    )
    assert tampered.status_code == 403
    wrong_key = await report(client, north, job.id, "complete", done, secret="f" * 64)
    assert wrong_key.status_code == 403
    assert (await job_row(services, job.id)).status == "claimed"

    assert (await report(client, north, job.id, "heartbeat", {}, secret=secret)).status_code == 200
    ok = await report(client, north, job.id, "complete", done, secret=secret)
    assert ok.status_code == 200 and ok.json()["status"] == "done"
    row = await job_row(services, job.id)
    assert row.status == "done" and row.result is not None
    assert row.result["performance"] == {"examples_per_second": 10.0}
    # Done: the secret is gone and the job is no longer the worker's.
    assert row.secret is None
    late = await report(client, north, job.id, "heartbeat", {}, secret=secret)
    assert late.status_code == 409


async def test_presigned_links_are_scoped_to_the_job_and_expire(
    services: Services, client: httpx.AsyncClient
) -> None:
    _, north = await worker_token(services, NORTH)
    await queue_job(services)
    doc = (await claim(client, north)).json()
    put = doc["upload"]["predictions_url"]
    stored = await client.put(put, content=b'{"uid": "u0", "outputs": {"label": 0}}\n')
    assert stored.status_code == 200, stored.text
    # The claim's own keys: under the job, per attempt, never a submission's results directly.
    assert f"/remote/{doc['job_id']}/1/predictions.jsonl?" in put
    # The same signature does not open another key.
    elsewhere = put.replace("/1/predictions.jsonl", "/1/log")
    assert (await client.put(elsewhere, content=b"x")).status_code == 403
    # A GET link does not write.
    assert (await client.put(doc["model"]["archive_url"], content=b"x")).status_code == 403
    await asyncio.sleep(3.1)  # the links last 2 s (WEIGHBRIDGE_WORKER_URL_SECONDS)
    expired = await client.get(doc["dataset"]["inputs_url"])
    assert expired.status_code == 403 and expired.json()["error"]["code"] == "link_expired"
    assert (await client.put(put, content=b"late")).status_code == 403


async def test_a_worker_that_stops_heartbeating_loses_its_job_to_another(
    services: Services, client: httpx.AsyncClient
) -> None:
    _, first = await worker_token(services, NORTH, "first")
    _, second = await worker_token(services, NORTH, "second")
    job = await queue_job(services)
    held = (await claim(client, first)).json()
    assert (await claim(client, second)).status_code == 204  # held, lease running
    await asyncio.sleep(LEASE + 0.3)  # the first worker went silent

    taken = (await claim(client, second)).json()
    assert (taken["job_id"], taken["attempt"]) == (job.id, 2)
    assert taken["secret"] != held["secret"]
    # The first worker is told to stop, whichever secret it signs with.
    for secret in (held["secret"], taken["secret"]):
        lost = await report(client, first, job.id, "heartbeat", {}, secret=secret)
        assert lost.status_code in (403, 409)
    assert (await report(client, first, job.id, "heartbeat", {}, secret=held["secret"])).json()[
        "error"
    ]["code"] == "lease_lost"
    # Each claim uploads under its own prefix: the silent worker cannot overwrite the new one's.
    assert f"/{job.id}/1/" in held["upload"]["predictions_url"]
    assert f"/{job.id}/2/" in taken["upload"]["predictions_url"]
    beat = await report(client, second, job.id, "heartbeat", {}, secret=taken["secret"])
    assert beat.status_code == 200
    assert set(beat.json()["upload"]) == {"predictions_url", "log_url", "result_url"}

    # Silent a second and a third time: the job fails with the reason, not forever queued.
    await asyncio.sleep(LEASE + 0.3)
    assert (await claim(client, first)).json()["attempt"] == 3
    await asyncio.sleep(LEASE + 0.3)
    assert (await claim(client, first)).status_code == 204
    row = await job_row(services, job.id)
    assert row.status == "failed"
    assert row.error is not None and "no heartbeat within its lease" in row.error


async def test_a_token_is_only_made_for_a_fleet_the_server_serves(services: Services) -> None:
    async with services.db.session() as session:
        with pytest.raises(WeighbridgeError) as refused:
            await create_worker_token(session, fleet="nowhere", fleets=[NORTH, "default"])
        assert refused.value.field == "fleet"
        assert "fleet 'nowhere' is not served here (fleets: default, north)" in (
            refused.value.message
        )
        _row, token = await create_worker_token(session, fleet=NORTH, fleets=[NORTH])
    assert token.startswith("wbw_") and len(token) > 40
    async with services.db.session() as session:
        assert await _stored_plain(session, token) is False


async def _stored_plain(session: AsyncSession, token: str) -> bool:
    """Whether the token itself is anywhere in the table (only its sha256 may be)."""
    import sqlalchemy as sa

    rows = (await session.execute(sa.text("SELECT * FROM worker_tokens"))).all()
    return any(token in str(tuple(row)) for row in rows)


async def test_a_report_is_authenticated_before_its_body_is_read(
    services: Services, client: httpx.AsyncClient
) -> None:
    _, north = await worker_token(services, NORTH)
    job = await queue_job(services)
    secret = (await claim(client, north)).json()["secret"]
    path = f"/api/v1/worker/jobs/{job.id}/complete"
    anonymous = await client.post(path, content=b"not json")
    assert anonymous.status_code == 401
    body = b'{"performance": "fast"}'
    bad = await client.post(
        path, content=body, headers={**auth(north), SIGNATURE_HEADER: sign_report(secret, body)}
    )
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "performance"
    assert (await job_row(services, job.id)).status == "claimed"
