"""Amun inspections over the API: a request posted, queued for the builder, built, run
`batch_size` times by the evaluator, and read back in Amun's shapes, at Amun's own paths too."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from functools import partial
from typing import Any

import httpx
import pytest

from builder.worker import build_consumer
from core.context import Services
from core.descriptor import parse_descriptor
from core.inspection_results import AMUN_FIELDS, RUSAGE_FIELDS
from core.messages import BenchmarkMessage, read_message
from core.models import Submission
from core.queue import BUILD_QUEUE, eval_queue
from core.states import Status
from tests.api.conftest import auth, make_user
from tests.api.test_benchmarks import events_of, submit

SCRIPT = """\
import json, os, sys
with open(os.path.join(os.environ["WEIGHBRIDGE_SCRIPTS_PATH"], "conf/params.json")) as fh:
    params = json.load(fh)
print(json.dumps({"n": int(os.environ["WEIGHBRIDGE_RUN"]), "mode": os.environ["MODE"], **params}))
print("a warning", file=sys.stderr)
"""
BENCHMARK = """\
spec_version = "0.1.0"
[info]
description = "a benchmark"
labels = { task_name = "bench" }
[hardware]
instance_type = "local"
[env]
docker_image = "python:3.11"
[ml]
benchmark_code = "true"
"""


def request(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "base": "python:3.11",
        "identifier": "tiny",
        "batch_size": 2,
        "packages": ["libgomp1"],
        "files": [{"path": "conf/params.json", "content": '{"size": 4}'}],
        "environment": [{"name": "MODE", "value": "fast"}],
        "run": {"requests": {"cpu": "1", "memory": "256Mi"}},
        "script": SCRIPT,
    }
    body.update(overrides)
    return body


async def post(client: httpx.AsyncClient, token: str, body: Any, *, path: str = "inspections"):
    return await client.post(f"/api/v1/{path}", json=body, headers=auth(token))


async def test_a_request_is_queued_and_answers_as_amun_does(
    services: Services, client: httpx.AsyncClient, token: str
) -> None:
    reply = await post(client, token, request())
    assert reply.status_code == 202, reply.text
    body = reply.json()
    iid = body["inspection_id"]
    assert body["parameters"]["batch_size"] == 2 and body["parameters"]["base"] == "python:3.11"
    assert body["parameters"]["update"] is False  # defaults echoed, as Amun's parameters
    async with services.db.session() as session:
        submission = await session.get(Submission, iid)
    assert submission is not None and submission.kind == "inspection" and submission.private
    assert submission.name == "tiny" and submission.status == Status.UPLOADED
    assert await services.queue.depth(BUILD_QUEUE) == 1
    # What a local run will not honour is in the timeline at once.
    warnings = [e.message for e in await events_of(services, iid) if e.type == "benchmark.warning"]
    assert any("run.requests.memory = '256Mi'" in w for w in warnings)

    spec = await client.get(f"/api/v1/inspections/{iid}/specification", headers=auth(token))
    assert spec.status_code == 200
    assert spec.json()["specification"]["script"] == SCRIPT
    assert spec.json()["parameters"] == {"inspection_id": iid}
    assert await services.storage.exists(f"submissions/{iid}/build/specification.json")
    size = await client.get(f"/api/v1/inspections/{iid}/job/batch-size", headers=auth(token))
    assert size.json()["batch_size"] == 2
    status = (await client.get(f"/api/v1/inspections/{iid}/status", headers=auth(token))).json()
    assert status["status"]["build"]["state"] == "waiting"
    assert status["status"]["workflow"]["phase"] == "Pending"
    assert status["status"]["data_stored"] is False
    log = await client.get(f"/api/v1/inspections/{iid}/build/log", headers=auth(token))
    assert log.status_code == 200 and log.json()["log"] is None
    listing = (await client.get("/api/v1/inspections", headers=auth(token))).json()
    assert listing["inspections"] == [iid] and listing["parameters"] == {"page": 1, "limit": 100}
    assert (await client.get("/api/v1/inspections?page=2", headers=auth(token))).json()[
        "inspections"
    ] == []
    # Amun's own paths answer the same (documented once, under /inspections).
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert "/api/v1/inspections/{inspection_id}/job/{item}/result" in paths
    assert not any(p.startswith("/api/v1/inspect/") for p in paths)
    amun = await client.get(f"/api/v1/inspect/{iid}/job/batch-size", headers=auth(token))
    assert amun.json()["batch_size"] == 2
    # A result not yet run: 409 not_ready; an item outside the batch: 404.
    early = await client.get(f"/api/v1/inspections/{iid}/job/0/result", headers=auth(token))
    assert early.status_code == 409 and early.json()["error"]["code"] == "not_ready"
    outside = await client.get(f"/api/v1/inspections/{iid}/job/2/result", headers=auth(token))
    assert outside.status_code == 404 and outside.json()["error"]["field"] == "item"


async def test_inspections_are_private_and_unknown_ids_are_404(
    services: Services, client: httpx.AsyncClient, token: str
) -> None:
    iid = (await post(client, token, request())).json()["inspection_id"]
    other = await make_user(services, "bob")
    for path in ("status", "specification", "build/log", "job/batch-size", "job/0/log"):
        theirs = await client.get(f"/api/v1/inspections/{iid}/{path}", headers=auth(other))
        assert theirs.status_code == 404, path
        anonymous = await client.get(f"/api/v1/inspections/{iid}/{path}")
        assert anonymous.status_code == 404, path
    assert (await client.get("/api/v1/inspections", headers=auth(other))).json()[
        "inspections"
    ] == []
    unknown = await client.get("/api/v1/inspections/" + "0" * 32 + "/status", headers=auth(token))
    assert unknown.status_code == 404 and "error" in unknown.json()
    assert (await client.get("/api/v1/inspections/nope/status")).status_code == 404
    assert (await client.post("/api/v1/inspections", json=request())).status_code == 401
    assert (await client.get("/api/v1/inspections")).status_code == 401
    # A benchmark's id is no inspection's.
    benchmark = await submit(client, token, BENCHMARK)
    assert benchmark.status_code == 201, benchmark.text
    bid = benchmark.json()["id"]
    reply = await client.get(f"/api/v1/inspections/{bid}/status", headers=auth(token))
    assert reply.status_code == 404


async def test_bad_requests_are_refused_naming_the_field_and_nothing_is_queued(
    services: Services, client: httpx.AsyncClient, token: str
) -> None:
    cases: list[tuple[Any, str]] = [
        ({"script": "print(1)"}, "base"),
        (request(script="https://example.org/run.py"), "script"),
        (request(files=[{"path": "../x", "content": "1"}]), "files[0].path"),
        (request(batch_size=0), "batch_size"),
        (request(colour="blue"), "colour"),
        (["base"], "body"),
    ]
    for body, field in cases:
        reply = await post(client, token, body)
        assert reply.status_code == 422, (field, reply.text)
        assert reply.json()["error"]["field"] == field, reply.text
    broken = await client.post(
        "/api/v1/inspections",
        content=b"{not json",
        headers={**auth(token), "content-type": "application/json"},
    )
    assert broken.status_code == 422 and broken.json()["error"]["field"] == "body"
    assert await services.queue.depth(BUILD_QUEUE) == 0
    assert await services.storage.list("incoming/") == []


async def test_the_builder_builds_it_and_hands_it_to_the_default_fleet(
    services: Services, client: httpx.AsyncClient, token: str
) -> None:
    iid = (await post(client, token, request())).json()["inspection_id"]
    assert await build_consumer(services).run_once() == 1
    async with services.db.session() as session:
        submission = await session.get(Submission, iid)
    assert submission is not None and submission.status == Status.BUILT, submission.error
    [delivery] = await services.queue.receive([eval_queue("default")])
    message = read_message(delivery.envelope, BenchmarkMessage)
    assert message.submission.kind == "inspection"
    descriptor = parse_descriptor(
        await services.storage.read_bytes(message.benchmark.descriptor_key)
    )
    assert descriptor.run.count == 2
    assert descriptor.ml.benchmark_code == "python3 $(WEIGHBRIDGE_SCRIPTS_PATH)/script"
    tar = await services.storage.read_bytes(message.benchmark.scripts_key or "")
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        names = {m.name for m in archive.getmembers() if m.isfile()}
    assert names == {"script", "conf/params.json"}
    # The native packages cannot be installed here: said, not dropped.
    assert any("native_packages" in w for w in message.benchmark.warnings)
    status = (await client.get(f"/api/v1/inspections/{iid}/status", headers=auth(token))).json()
    build = status["status"]["build"]
    assert build["state"] == "terminated" and build["exit_code"] == 0
    assert build["started_at"] and build["finished_at"]
    log = (await client.get(f"/api/v1/inspections/{iid}/build/log", headers=auth(token))).json()
    assert "reading the descriptor" in log["log"]


async def test_a_result_is_read_in_amuns_shape_from_the_stored_run_files(
    services: Services, client: httpx.AsyncClient, token: str
) -> None:
    """The files as the evaluator stores them (evaluator/benchmarks.py), written here so the
    shape is checked without running anything."""
    iid = (await post(client, token, request(batch_size=1))).json()["inspection_id"]
    prefix = f"submissions/{iid}/results/1"
    usage = {name: 0.5 if name.endswith("time") else 3 for name in RUSAGE_FIELDS}
    result = {
        "exit_code": 0,
        "timed_out": False,
        "start_datetime": "2026-12-06T10:00:00+00:00",
        "end_datetime": "2026-12-06T10:00:02+00:00",
        "script_sha256": "cd" * 32,
        "usage": usage,
        "metrics": {},
        "hostname": "box",
    }
    hwinfo = {
        "hostname": "box",
        "cpu": {"model": "AMD EPYC", "family": 25, "model_number": 1, "logical_cores": 16},
        "cgroup": {"version": 2, "cpu_limit": 2.0, "memory_limit_bytes": 2**31},
        "memory": {"total_bytes": 2**35, "limit_bytes": 2**31},
        "gpu": {"count": 1, "devices": [{"name": "H100", "memory_bytes": 2**36}], "cuda": "12.4"},
        "os": {"system": "Linux", "kernel": "6.8", "distribution": "Ubuntu 24.04.1 LTS"},
        "python": {"version": "3.11.7"},
    }
    storage = services.storage
    await storage.write_bytes(f"{prefix}/result.json", json.dumps(result).encode())
    await storage.write_bytes(f"{prefix}/hwinfo.json", json.dumps(hwinfo).encode())
    await storage.write_bytes(f"{prefix}/stdout", b'{"rate": 2.5}\n')
    await storage.write_bytes(f"{prefix}/stderr", b"careful\n")
    await storage.write_bytes(f"{prefix}/log", b'{"rate": 2.5}\ncareful\n')

    reply = await client.get(f"/api/v1/inspect/{iid}/job/0/result", headers=auth(token))
    assert reply.status_code == 200, reply.text
    got = reply.json()["result"]
    assert set(AMUN_FIELDS) <= set(got)
    assert got["stdout"] == {"rate": 2.5} and got["stderr"] == "careful\n"
    # Amun's script_sha256 is the script's; the evaluator's (the whole archive) is kept too.
    assert got["script_sha256"] == hashlib.sha256(SCRIPT.encode()).hexdigest()
    assert got["weighbridge"]["scripts_sha256"] == "cd" * 32
    assert got["usage"] == usage
    assert got["runtime_environment"] == {
        "hardware": {"cpu_family": 25, "cpu_model": 1},
        "operating_system": {"name": "ubuntu", "version": "24.04.1"},
        "python_version": "3.11",
        "cuda_version": "12.4",
    }
    assert got["gpu"]["devices"][0]["name"] == "H100"
    assert got["cgroup"]["cpu_limit"] == 2.0 and got["memory"]["limit_bytes"] == 2**31
    log = await client.get(f"/api/v1/inspections/{iid}/job/0/log", headers=auth(token))
    assert log.json()["log"] == '{"rate": 2.5}\ncareful\n'
    status = (await client.get(f"/api/v1/inspections/{iid}/status", headers=auth(token))).json()
    assert status["status"]["data_stored"] is True


def evaluator_handler() -> Any:
    """The evaluator's dispatch, when it runs inspections (skip with the reason otherwise)."""
    try:
        from evaluator.worker import KINDS, handle_evaluate
    except ImportError as exc:  # pragma: no cover - the evaluator side is being written
        pytest.skip(f"evaluator.worker cannot be imported: {exc}")
    if "inspection" not in KINDS:
        pytest.skip("evaluator.worker.KINDS has no 'inspection' handler yet")
    return handle_evaluate


async def test_an_inspection_round_trips_and_each_result_has_every_amun_field(
    services: Services, client: httpx.AsyncClient, token: str
) -> None:
    handle_evaluate = evaluator_handler()
    from core.worker import Consumer

    iid = (await post(client, token, request())).json()["inspection_id"]
    assert await build_consumer(services).run_once() == 1
    consumer = Consumer(
        services.queue,
        [eval_queue("default")],
        partial(handle_evaluate, services),
        name="test",
        lease_seconds=60,
    )
    assert await consumer.run_once() == 1
    async with services.db.session() as session:
        submission = await session.get(Submission, iid)
    assert submission is not None and submission.status == Status.DONE, submission.error

    status = (await client.get(f"/api/v1/inspect/{iid}/status", headers=auth(token))).json()
    assert status["status"]["workflow"]["phase"] == "Succeeded"
    assert status["status"]["data_stored"] is True
    assert [r["status"] for r in status["status"]["workflow"]["runs"]] == ["done", "done"]
    for item in (0, 1):
        reply = await client.get(f"/api/v1/inspect/{iid}/job/{item}/result", headers=auth(token))
        assert reply.status_code == 200, reply.text
        result = reply.json()["result"]
        assert set(AMUN_FIELDS) <= set(result)
        assert result["stdout"] == {"n": item + 1, "mode": "fast", "size": 4}
        assert "a warning" in result["stderr"]
        assert result["exit_code"] == 0
        assert set(result["usage"]) == set(RUSAGE_FIELDS)
        assert all(result["usage"][name] is not None for name in RUSAGE_FIELDS)
        assert result["start_datetime"] <= result["end_datetime"]
        assert result["script_sha256"] == hashlib.sha256(SCRIPT.encode()).hexdigest()
        assert result["weighbridge"]["limits"]["network"] == "none"
        assert result["hostname"] and result["os_release"]
        assert result["runtime_environment"]["python_version"]
        assert result["hwinfo"]["cpu_info"]["flags"] is not None
        assert "limit_bytes" in result["memory"] and "count" in result["gpu"]
        assert "cpu_limit" in result["cgroup"]
        log = await client.get(f"/api/v1/inspect/{iid}/job/{item}/log", headers=auth(token))
        assert "a warning" in log.json()["log"]
