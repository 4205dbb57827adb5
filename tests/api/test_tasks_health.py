"""Tasks, health, ping and the OpenAPI document."""

from __future__ import annotations

from tests.api.conftest import auth


async def test_healthz_and_ping(client, token):
    health = await client.get("/healthz")
    assert health.status_code == 200 and health.json()["database"] == "ok"
    anonymous = (await client.get("/api/v1/ping")).json()
    assert anonymous["user"] is None and anonymous["version"]
    me = (await client.get("/api/v1/ping", headers=auth(token))).json()
    assert me["user"]["name"] == "ada"


async def test_tasks_list_the_fixture_task(client):
    tasks = (await client.get("/api/v1/tasks")).json()["tasks"]
    assert [t["slug"] for t in tasks] == ["toy"]
    toy = tasks[0]
    assert [m["name"] for m in toy["metrics"]] == ["accuracy", "macro_f1"]
    assert toy["metrics"][0]["weight"] == 4.0 and toy["eval_server_id"] == "toy-fleet"
    assert {d["name"]: d["access"] for d in toy["datasets"]} == {
        "examples": "public",
        "test": "hidden",
    }
    one = await client.get("/api/v1/tasks/toy")
    assert one.json()["slug"] == "toy"
    missing = await client.get("/api/v1/tasks/nope")
    assert missing.status_code == 404 and missing.json()["error"]["field"] == "task"


async def test_openapi_lists_the_routes(client):
    spec = (await client.get("/openapi.json")).json()
    assert "/api/v1/submissions" in spec["paths"]
    assert "/api/v1/submissions/{submission_id}/cancel" in spec["paths"]


async def test_prometheus_metrics_count_submissions_and_queue(client, token):
    files = {"file": ("m.tar.gz", b"not empty")}
    created = await client.post(
        "/api/v1/submissions", data={"task": "toy"}, files=files, headers=auth(token)
    )
    assert created.status_code == 201
    text = (await client.get("/metrics")).text
    assert 'weighbridge_submissions{kind="model",status="uploaded"} 1.0' in text
    assert 'weighbridge_queue_messages{dead="false",queue="build"} 1.0' in text
    assert 'route="/api/v1/submissions",status="2xx"' in text
