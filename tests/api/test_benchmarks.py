"""Benchmarks from the API to the builder: a descriptor (and scripts) submitted, made ready
(descriptor resolved, scripts normalised, environment, data fetched once) and handed to the
default fleet as a `benchmark` message; ranges expand into a family; bad descriptors are 422s."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from builder.worker import build_consumer
from core.context import Services
from core.descriptor import parse_descriptor
from core.messages import BenchmarkMessage, read_message
from core.models import Event, Submission
from core.queue import BUILD_QUEUE, eval_queue
from core.settings import Settings
from core.states import Status
from tests.api.conftest import auth
from tests.conftest import make_settings

DATA = b"a,b\n1,2\n3,4\n"

DESCRIPTOR = """\
spec_version = "0.1.0"

[info]
description = "Elapsed time of a tiny script"
labels = {{ task_name = "tiny" }}

[hardware]
instance_type = "local"
strategy = "single_node"

[env]
docker_image = "python:3.11"
vars = {{ MODE = "fast" }}

[ml]
benchmark_code = "python3 $(BAI_SCRIPTS_PATH)/src/run.py"

[[data.sources]]
src = "{url}"
path = "inputs/table.csv"
sha256 = "{sha}"

[[output.metrics]]
name = "elapsed"
units = "ms"
pattern = 'elapsed: ([-+]?\\d*\\.\\d+|\\d+)'

[run]
count = 3
"""


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    """As an operator whose data server is on this machine: loopback sources allowed."""
    return make_settings(tmp_path, database_url, data_allow_hosts="127.0.0.1")


class Counting(BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        self.send_response(200)
        self.send_header("Content-Length", str(len(DATA)))
        self.end_headers()
        self.wfile.write(DATA)

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def data_url() -> Iterator[str]:
    Counting.hits = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), Counting)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/table.csv"
    server.shutdown()
    server.server_close()


def scripts_archive() -> bytes:
    """A scripts folder as the CLI sends it: src/run.py at the top (no folder around it)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        body = b"print('elapsed: 12.5')\n"
        info = tarfile.TarInfo("src/run.py")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    return buffer.getvalue()


async def submit(
    client: httpx.AsyncClient, token: str, descriptor: str, *, scripts: bytes | None = None
) -> httpx.Response:
    files = {"file": ("scripts.tar.gz", scripts, "application/gzip")} if scripts else None
    return await client.post(
        "/api/v1/benchmarks",
        data={"descriptor": descriptor, "descriptor_filename": "bench.toml"},
        files=files,
        headers=auth(token),
    )


async def events_of(services: Services, submission_id: str) -> list[Event]:
    async with services.db.session() as session:
        return list(
            await session.scalars(
                sa.select(Event).where(Event.submission_id == submission_id).order_by(Event.id)
            )
        )


async def test_a_script_mode_benchmark_is_built_and_handed_to_the_default_fleet(
    services: Services, client: httpx.AsyncClient, token: str, data_url: str
) -> None:
    text = DESCRIPTOR.format(url=data_url, sha=hashlib.sha256(DATA).hexdigest())
    reply = await submit(client, token, text, scripts=scripts_archive())
    assert reply.status_code == 201, reply.text
    body = reply.json()
    assert body["kind"] == "benchmark" and body["status"] == "uploaded"
    assert body["children"] == [] and body["name"] == "tiny"
    sid = body["id"]

    assert await build_consumer(services).run_once() == 1
    async with services.db.session() as session:
        submission = await session.get(Submission, sid)
    assert submission is not None and submission.status == Status.BUILT, submission.error
    [delivery] = await services.queue.receive([eval_queue("default")])
    message = read_message(delivery.envelope, BenchmarkMessage)
    ref = message.benchmark
    # The descriptor as it runs, stored and named by its hash.
    stored = await services.storage.read_bytes(ref.descriptor_key)
    assert hashlib.sha256(stored).hexdigest() == ref.descriptor_sha256
    assert parse_descriptor(stored).ml.benchmark_code.endswith("/src/run.py")
    # Scripts: a normalised tar keeping the user's paths.
    tar_bytes = await services.storage.read_bytes(ref.scripts_key or "")
    assert hashlib.sha256(tar_bytes).hexdigest() == ref.scripts_sha256
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert set(members) == {"src", "src/run.py"}
    assert members["src/run.py"].uid == 0 and members["src/run.py"].mtime == 0
    # Data fetched once, verified, cached under datasets/<sha256>/.
    [data] = message.data
    assert data.path == "inputs/table.csv" and data.sha256 == hashlib.sha256(DATA).hexdigest()
    assert data.key == f"datasets/{data.sha256}/table.csv"
    assert await services.storage.read_bytes(data.key) == DATA
    assert ref.env_key is None  # no [environment] packages: the service's own python
    # What a local run cannot honour is said, not dropped: here the docker image.
    assert any("docker_image" in w for w in ref.warnings)
    events = await events_of(services, sid)
    assert any(e.type == "benchmark.warning" and "docker_image" in e.message for e in events)
    assert any(e.type == "data.fetched" for e in events)

    # A second benchmark with the same source does not fetch it again.
    again = await submit(client, token, text, scripts=scripts_archive())
    assert again.status_code == 201
    assert await build_consumer(services).run_once() == 1
    assert Counting.hits == 1


async def test_ranges_expand_into_a_family_of_children_each_built_with_its_values(
    services: Services, client: httpx.AsyncClient, token: str
) -> None:
    text = """\
spec_version = "0.1.0"
[info]
description = "threads x batch"
labels = { task_name = "family" }
[hardware]
instance_type = "local"
[env]
docker_image = "python:3.11"
vars = { BATCH = "{batch}" }
[ml]
benchmark_code = "echo threads={threads}"
[ranges]
threads = [1, 2]
batch = [8, 16, 32]
"""
    reply = await submit(client, token, text)
    assert reply.status_code == 201, reply.text
    body = reply.json()
    assert body["role"] == "family" and body["status"] == "done"
    values = [c["values"] for c in body["children"]]
    assert values == [{"threads": t, "batch": b} for t in (1, 2) for b in (8, 16, 32)]
    assert await services.queue.depth(BUILD_QUEUE) == 6

    consumer = build_consumer(services)
    while await consumer.run_once():
        pass
    deliveries = await services.queue.receive([eval_queue("default")], max_messages=10)
    assert len(deliveries) == 6
    seen = set()
    for delivery in deliveries:
        message = read_message(delivery.envelope, BenchmarkMessage)
        descriptor = parse_descriptor(
            await services.storage.read_bytes(message.benchmark.descriptor_key)
        )
        assert descriptor.ranges == {}
        assert descriptor.ml.benchmark_code == f"echo threads={message.values['threads']}"
        assert descriptor.env.vars["BATCH"] == str(message.values["batch"])
        assert delivery.envelope.parent_action_id == body["id"]
        seen.add((message.values["threads"], message.values["batch"]))
    assert len(seen) == 6


async def test_a_bad_descriptor_is_refused_with_its_lines_and_nothing_is_queued(
    services: Services, client: httpx.AsyncClient, token: str
) -> None:
    reply = await submit(client, token, 'spec_version = "0.1.0"\n[info]\nsurprise = 1\n')
    assert reply.status_code == 422
    error = reply.json()["error"]
    text = str(error)
    assert "hardware" in text and "surprise" in text and "line" in text.lower()
    assert await services.queue.depth(BUILD_QUEUE) == 0
    missing = await client.post("/api/v1/benchmarks", data={"name": "x"}, headers=auth(token))
    assert missing.status_code == 422
    assert missing.json()["error"]["field"] == "descriptor"


async def test_a_script_mode_descriptor_without_its_scripts_is_refused(
    services: Services, client: httpx.AsyncClient, token: str
) -> None:
    text = """\
spec_version = "0.1.0"
[info]
description = "script mode"
labels = { task_name = "scripted" }
[hardware]
instance_type = "local"
[env]
docker_image = "python:3.11"
[ml]
benchmark_code = "python3 $(BAI_SCRIPTS_PATH)/run.py"
[ml.script]
script = "4f2a.tar"
"""
    reply = await submit(client, token, text)
    assert reply.status_code == 422
    assert reply.json()["error"]["field"] == "ml.script.script"
    assert "--script" in reply.json()["error"]["message"]
    assert await services.queue.depth(BUILD_QUEUE) == 0


async def test_cancelling_a_family_cancels_its_unfinished_children(
    services: Services, client: httpx.AsyncClient, token: str
) -> None:
    text = """\
spec_version = "0.1.0"
[info]
description = "family"
labels = { task_name = "fam" }
[hardware]
instance_type = "local"
[env]
docker_image = "python:3.11"
[ml]
benchmark_code = "echo {n}"
[ranges]
n = [1, 2]
"""
    parent = (await submit(client, token, text)).json()
    reply = await client.post(f"/api/v1/submissions/{parent['id']}/cancel", headers=auth(token))
    assert reply.status_code == 200, reply.text
    assert {c["status"] for c in reply.json()["children"]} == {"cancelled"}
    again = await client.post(f"/api/v1/submissions/{parent['id']}/cancel", headers=auth(token))
    assert again.status_code == 409 and "nothing to cancel" in again.json()["error"]["message"]


async def test_a_data_source_on_the_service_s_own_network_fails_the_build(
    services: Services,
    client: httpx.AsyncClient,
    token: str,
    data_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(services.settings, "data_allow_hosts", "")  # no host allowed
    text = DESCRIPTOR.format(url=data_url, sha=hashlib.sha256(DATA).hexdigest())
    sid = (await submit(client, token, text, scripts=scripts_archive())).json()["id"]
    assert await build_consumer(services).run_once() == 1
    async with services.db.session() as session:
        submission = await session.get(Submission, sid)
    assert submission is not None and submission.status == Status.FAILED
    assert "data.sources[0]" in (submission.error or "")
    assert "127.0.0.1, a non-public address" in (submission.error or "")
    assert Counting.hits == 0


async def test_a_user_s_runs_in_24_hours_are_limited(
    services: Services, client: httpx.AsyncClient, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hostile or careless, one user cannot queue endless runs: a family counts each child."""
    monkeypatch.setattr(services.settings, "benchmark_runs_per_day", 3)
    family = """\
spec_version = "0.1.0"
[info]
description = "limited"
labels = { task_name = "limited" }
[hardware]
instance_type = "local"
[env]
docker_image = "python:3.11"
[ml]
benchmark_code = "echo {n}"
[ranges]
n = [1, 2]
"""
    assert (await submit(client, token, family)).status_code == 201
    queued = await services.queue.depth(BUILD_QUEUE)
    refused = await submit(client, token, family)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "rate_limited" and "the limit is 3" in error["message"]
    assert refused.headers["retry-after"] == "3600"
    assert await services.queue.depth(BUILD_QUEUE) == queued  # nothing of it queued
    single = family.replace("[ranges]\nn = [1, 2]\n", "").replace("{n}", "one")
    assert (await submit(client, token, single)).status_code == 201  # the third run fits
