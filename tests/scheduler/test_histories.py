"""Benchmark histories and regression alerts: a step in a series raises exactly one alert and
one email (even with two recorders racing), noise of the same size raises none, and the
history is served by the API, `weighbridge history --json` and the Prometheus gauges."""

from __future__ import annotations

import asyncio
import json
import random

import httpx
import pytest
import sqlalchemy as sa
import uvicorn
from sqlmodel import col

from api.app import create_app
from core.accounts import create_user
from core.context import Services
from core.models import (
    BenchmarkAlert,
    BenchmarkAlertState,
    BenchmarkPoint,
    BenchmarkRun,
    Event,
    Notification,
    Score,
    Submission,
    User,
)
from core.submissions import purge_submission
from scheduler.histories import record_done_benchmarks
from tests.cli.conftest import WEIGHBRIDGE, clean_env, free_port
from tests.scheduler.conftest import Runs, make_owner

LEVEL = 100.0
NOISE = 1.0  # sd: 1 % of the level
STEP = 20.0  # the regression: 20 % worse (elapsed: higher is worse)
STEP_AT = 14


async def record(*services: Services) -> None:
    """Every recorder takes its turn at once, as the scheduler loops of two processes would."""
    await asyncio.gather(*(record_done_benchmarks(s) for s in services))


async def rows(services: Services, model: type) -> list:
    async with services.db.session() as session:
        return list(await session.scalars(sa.select(model)))


async def step_history(
    services: Services, *recorders: Services, owner: User | None = None
) -> list[str]:
    """A noisy series with a 20 % step at run STEP_AT, each run recorded as it finishes."""
    owner = owner or await make_owner(services)
    runs = Runs(services, owner)
    rng = random.Random(7)
    ids = []
    for i in range(STEP_AT + 8):
        value = LEVEL + rng.gauss(0, NOISE) + (STEP if i >= STEP_AT else 0.0)
        ids.append(await runs.add(value))
        await record(*(recorders or (services,)))
    return ids


async def test_a_step_raises_exactly_one_alert_and_one_email(
    services: Services, second: Services
) -> None:
    ids = await step_history(services, services, second)
    alerts = await rows(services, BenchmarkAlert)
    assert [(a.kind, a.metric, a.submission_id) for a in alerts] == [
        ("fired", "elapsed", ids[STEP_AT])
    ]
    [alert] = alerts
    assert alert.baseline == pytest.approx(LEVEL, abs=1.5)
    assert alert.change == pytest.approx(STEP, abs=3)
    emails = await rows(services, Notification)
    assert len(emails) == 1
    [email] = emails
    assert email.to_address == "ada@example.org"
    assert "regression" in email.subject and "elapsed" in email.subject
    body = email.body_text
    assert ids[STEP_AT] in body  # the first run at the new level
    assert f"baseline:                   {alert.baseline:.6g} ms" in body
    assert f"change:                     {alert.change:+.6g} ms" in body
    # The run whose recording raised it says so on its timeline.
    async with services.db.session() as session:
        fired = list(
            await session.scalars(
                sa.select(Event).where(col(Event.type) == "benchmark.alert_fired")
            )
        )
    assert [e.submission_id for e in fired] == [alert.detected_id]
    assert "regression: elapsed" in fired[0].message
    [state] = await rows(services, BenchmarkAlertState)
    assert state.status == "alerting"
    # Every run recorded once, in one series.
    assert len(await rows(services, BenchmarkRun)) == len(ids)
    assert len(await rows(services, BenchmarkPoint)) == len(ids)


async def test_the_alert_clears_when_the_series_returns_without_an_email(
    services: Services,
) -> None:
    ids = await step_history(services)
    owner = await make_owner(services, "bob")
    runs = Runs(services, owner)
    runs.count = len(ids)  # continue the same series a minute after the last run
    rng = random.Random(11)
    for _ in range(5):
        await runs.add(LEVEL + rng.gauss(0, NOISE))
        await record(services)
    kinds = [a.kind for a in await rows(services, BenchmarkAlert)]
    assert kinds == ["fired", "cleared"]
    assert len(await rows(services, Notification)) == 1  # a clear pages nobody
    [state] = await rows(services, BenchmarkAlertState)
    assert state.status == "ok"


async def test_noise_of_the_same_size_without_a_step_raises_nothing(services: Services) -> None:
    owner = await make_owner(services)
    runs = Runs(services, owner)
    rng = random.Random(7)
    for i in range(40):
        # single runs as far off as the step, but never two in a row: blips, not a change
        blip = STEP if i in (12, 25, 33) else 0.0
        await runs.add(LEVEL + rng.gauss(0, NOISE) + blip)
        await record(services)
    assert await rows(services, BenchmarkAlert) == []
    assert await rows(services, Notification) == []
    [state] = await rows(services, BenchmarkAlertState)
    assert state.status == "ok"
    assert len(await rows(services, BenchmarkPoint)) == 40


async def test_a_run_without_overall_scores_is_recorded_once_with_a_note(
    services: Services,
) -> None:
    owner = await make_owner(services)
    runs = Runs(services, owner)
    sid = await runs.add(LEVEL)
    async with services.db.session() as session:
        await session.execute(sa.delete(BenchmarkPoint))
        await session.execute(sa.delete(Score).where(col(Score.submission_id) == sid))
    await record(services)
    await record(services)
    [run] = await rows(services, BenchmarkRun)
    assert run.submission_id == sid and "no overall scores" in run.note
    assert await rows(services, BenchmarkPoint) == []


async def test_purging_a_run_takes_it_out_of_the_history(services: Services) -> None:
    owner = await make_owner(services)
    ids = await step_history(services, owner=owner)
    async with services.db.session() as session:
        await purge_submission(session, services.storage, ids[-1], user=owner)
    points = await rows(services, BenchmarkPoint)
    assert ids[-1] not in {p.submission_id for p in points}
    # The alert state's newest run is gone: the next run starts its judgement afresh.
    runs = Runs(services, owner)
    runs.count = len(ids) + 1
    await runs.add(LEVEL + STEP)
    await record(services)
    assert len(await rows(services, BenchmarkPoint)) == len(ids)
    assert len(await rows(services, BenchmarkAlert)) == 1


async def test_history_endpoint_cli_and_gauges(services: Services) -> None:
    async with services.db.session() as session:
        owner, token = await create_user(session, "ada", email="ada@example.org")
    ids = await step_history(services, owner=owner)
    app = create_app(services)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as client:
        answer = (
            await client.get(
                "/api/v1/benchmarks/history",
                params={"benchmark": "tiny"},
                headers={"Authorization": f"Bearer {token}"},
            )
        ).json()
        [series] = answer["series"]
        [metric] = series["metrics"]
        assert (metric["metric"], metric["units"], metric["status"]) == (
            "elapsed",
            "ms",
            "alerting",
        )
        assert [p["submission_id"] for p in metric["points"]] == ids
        assert [p["run"] for p in metric["points"]] == list(range(1, len(ids) + 1))
        assert [(a["kind"], a["submission_id"]) for a in series["alerts"]] == [
            ("fired", ids[STEP_AT])
        ]
        missing = await client.get("/api/v1/benchmarks/history", params={"benchmark": "nope"})
        assert missing.status_code == 404
        assert missing.json()["error"]["field"] == "benchmark"
        exposition = (await client.get("/metrics")).text
    identity = series["identity"]
    labels = f'benchmark="tiny",identity="{identity}",metric="elapsed",variant=""'
    assert f"weighbridge_benchmark_alert{{{labels}}} 1.0" in exposition
    value_lines = [
        line for line in exposition.splitlines() if line.startswith("weighbridge_benchmark_value{")
    ]
    assert len(value_lines) == 1 and 'units="ms"' in value_lines[0]
    assert float(value_lines[0].rsplit(" ", 1)[1]) == pytest.approx(metric["points"][-1]["value"])

    # The command line, against a real server on this loop.
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(services), host="127.0.0.1", port=port, log_level="warning")
    )
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:  # noqa: ASYNC110 (uvicorn offers no event to wait on)
            await asyncio.sleep(0.02)
        env = clean_env(
            services.settings.home.parent,
            WEIGHBRIDGE_URL=f"http://127.0.0.1:{port}",
            WEIGHBRIDGE_TOKEN=token,
        )
        shown = await asyncio.to_thread(
            _run, [WEIGHBRIDGE, "history", "tiny", "--metric", "elapsed", "--json"], env
        )
        human = await asyncio.to_thread(_run, [WEIGHBRIDGE, "history", "tiny"], env)
    finally:
        server.should_exit = True
        await serving
    document = json.loads(shown)
    assert document["metric"] == "elapsed"
    assert [p["value"] for p in document["series"][0]["metrics"][0]["points"]] == [
        p["value"] for p in metric["points"]
    ]
    assert document["series"][0]["alerts"][0]["kind"] == "fired"
    assert "elapsed (ms)" in human and "alerting" in human and "fired" in human


def _run(args: list[str], env: dict[str, str]) -> str:
    import subprocess

    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


async def test_private_runs_are_shown_only_to_their_owner(services: Services) -> None:
    async with services.db.session() as session:
        owner, token = await create_user(session, "ada", email="ada@example.org")
        _, other = await create_user(session, "bob", email="bob@example.org")
    runs = Runs(services, owner, private=True)
    for value in (LEVEL, LEVEL + 1):
        await runs.add(value)
    await record(services)
    app = create_app(services)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as client:

        async def series(token: str | None) -> list:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            answer = await client.get(
                "/api/v1/benchmarks/history", params={"benchmark": "tiny"}, headers=headers
            )
            assert answer.status_code == 200, answer.text
            return answer.json()["series"]

        [mine] = await series(token)
        assert len(mine["metrics"][0]["points"]) == 2
        assert await series(other) == []
        assert await series(None) == []


async def test_recorders_racing_on_different_runs_of_one_series(
    services: Services, second: Services
) -> None:
    """Two recorders take the runs of one series in opposite orders at once: each run is
    recorded once, and the step still raises one alert."""
    from scheduler.histories import _Descriptors, _read, record_submission

    owner = await make_owner(services)
    runs = Runs(services, owner)
    rng = random.Random(3)
    for _ in range(12):
        await runs.add(LEVEL + rng.gauss(0, NOISE))
        await record(services)
    late = [await runs.add(LEVEL + STEP + rng.gauss(0, NOISE)) for _ in range(6)]

    async def recordings(s: Services) -> list:
        async with s.db.session() as session:
            found = [await session.get(Submission, sid) for sid in late]
            return [await _read(session, x, _Descriptors(s)) for x in found if x is not None]

    async def recorder(s: Services, order: list) -> int:
        done = 0
        for rec in order:
            done += await record_submission(s, rec) is not None
        return done

    mine, theirs = await recordings(services), await recordings(second)
    taken = await asyncio.gather(recorder(services, mine), recorder(second, theirs[::-1]))
    assert sum(taken) == len(late)
    assert len(await rows(services, BenchmarkRun)) == 12 + len(late)
    assert [a.kind for a in await rows(services, BenchmarkAlert)] == ["fired"]
    assert len(await rows(services, Notification)) == 1
