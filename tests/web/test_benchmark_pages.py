"""Benchmark and inspection pages over the real app: a history chart drawn as SVG with its
alert marked, a range family side by side, a run's machine and process usage, an inspection's
runs, and a private benchmark hidden from others."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import httpx
import sqlalchemy as sa

from core.accounts import issue_token
from core.benchmarks import submit_benchmark
from core.context import Services
from core.inspection_results import results_prefix
from core.models import Run, Score, Submission, User
from core.states import cancel
from tests.scheduler.conftest import T0, descriptor_text, make_owner, make_schedule
from tests.scheduler.test_histories import STEP_AT, step_history
from tests.web.test_offline import foreign_urls
from web.charts import nice_ticks


async def test_the_history_chart_marks_the_alert_on_its_run(
    services: Services, client: httpx.AsyncClient
) -> None:
    ids = await step_history(services)
    r = await client.get("/benchmarks/history/tiny")
    assert r.status_code == 200, r.text
    svg = re.search(r"<svg.*?</svg>", r.text, re.S)
    assert svg, r.text
    chart = svg.group(0)
    assert chart.count('<circle class="point"') == len(ids)
    markers = re.findall(r'<path class="alert-marker fired".*?<title>(.*?)</title>', chart, re.S)
    assert len(markers) == 1, markers
    assert "alert: elapsed moved to" in markers[0] and "baseline" in markers[0]
    # The marker sits over the run the alert was raised on (the STEP_AT-th point).
    points = re.findall(r'<circle class="point" cx="([\d.]+)"', chart)
    marker_x = re.search(r'alert-marker fired"[^>]*d="M([\d.]+),', chart)
    assert marker_x is not None
    assert abs(float(marker_x.group(1)) + 6 - float(points[STEP_AT])) < 0.2
    assert f'href="/benchmarks/{ids[STEP_AT]}"' in r.text  # the alerts table links the run
    assert (await client.get("/benchmarks/history/nothing-here")).status_code == 404


def test_nice_ticks_cover_the_values_with_round_steps() -> None:
    assert nice_ticks(98.3, 121.7) == [95, 100, 105, 110, 115, 120, 125]
    assert nice_ticks(0.001, 0.0042) == [0.001, 0.002, 0.003, 0.004, 0.005]
    ticks = nice_ticks(5.0, 5.0)
    assert ticks[0] < 5.0 < ticks[-1]


async def test_a_range_family_side_by_side(services: Services, client: httpx.AsyncClient) -> None:
    owner = await make_owner(services)
    async with services.db.session() as session:
        parent, children = await submit_benchmark(
            session,
            services.storage,
            services.outbox,
            user=owner,
            kind="benchmark",
            descriptor_text=descriptor_text(ranges="[ranges]\nbatch = [8, 16, 32]\n").encode(),
            descriptor_filename="tiny.toml",
        )
        assert len(children) == 3
        for child, value in zip(children, (10.0, 19.0, 41.0), strict=True):
            child.status = "done"
            session.add(Score(submission_id=child.id, dataset="all", metric="elapsed", value=value))
        parent_id = parent.id
    r = await client.get(f"/benchmarks/{parent_id}")
    assert r.status_code == 200, r.text
    table = re.search(r'<table id="family".*?</table>', r.text, re.S)
    assert table, r.text
    rows = re.findall(r"<tr><td><a.*?</tr>", table.group(0), re.S)
    assert len(rows) == 3
    assert ">8<" in rows[0] and "10.0000" in rows[0] and ">32<" in rows[2] and "41.0000" in rows[2]
    multiples = re.search(r'<div class="multiples".*?</div>', r.text, re.S)
    assert multiples and multiples.group(0).count("<svg") == 1
    assert multiples.group(0).count('<circle class="point"') == 3
    assert "batch=16" in multiples.group(0)


async def test_a_runs_machine_and_usage(services: Services, client: httpx.AsyncClient) -> None:
    owner = await make_owner(services)
    async with services.db.session() as session:
        s = Submission(
            kind="benchmark",
            user_id=owner.id,  # type: ignore[arg-type]
            name="tiny once",
            status="done",
            meta={"benchmark": "tiny", "instance_type": "local"},
        )
        session.add(s)
        await session.flush()
        session.add(Run(submission_id=s.id, name="run-1", status="done", attempt=1))
        session.add(Score(submission_id=s.id, dataset="all", metric="elapsed", value=12.5))
        sub_id = s.id
    prefix = results_prefix(sub_id, 1)
    result = {
        "exit_code": 0,
        "seconds": 1.5,
        "metrics": {"elapsed": 12.5},
        "usage": {"ru_utime": 1.25, "ru_stime": 0.5, "ru_maxrss": 40960, "ru_nvcsw": 17},
    }
    hwinfo = {
        "cpu": {"model": "Test CPU 3000", "logical_cores": 8, "effective_cores": 2.0},
        "memory": {"total_bytes": 8 * 2**30},
        "cgroup": {"cpu_limit": 2.0, "memory_limit_bytes": 2**30},
        "gpu": {"devices": []},
        "os": {"system": "Linux", "kernel": "6.1"},
    }
    await services.storage.write_bytes(f"{prefix}/result.json", json.dumps(result).encode())
    await services.storage.write_bytes(f"{prefix}/hwinfo.json", json.dumps(hwinfo).encode())
    html = (await client.get(f"/benchmarks/{sub_id}")).text
    runs = re.search(r'<table id="bench-runs".*?</table>', html, re.S)
    assert runs and "1.2500" in runs.group(0) and "40960" in runs.group(0)
    machines = re.search(r'<table id="machines".*?</table>', html, re.S)
    assert machines and "Test CPU 3000" in machines.group(0) and "8192" in machines.group(0)
    assert "1024" in machines.group(0) and "Linux 6.1" in machines.group(0)
    assert 'href="/benchmarks/history/tiny"' in html
    # A private benchmark is no page for anyone else.
    async with services.db.session() as session:
        await session.execute(
            sa.update(Submission).where(Submission.id == sub_id).values(private=True)
        )
    assert (await client.get(f"/benchmarks/{sub_id}")).status_code == 404


async def test_an_inspections_runs_with_the_unstarted_ones_cancelled(
    services: Services, client: httpx.AsyncClient
) -> None:
    owner = await make_owner(services)
    async with services.db.session() as session:
        s = Submission(
            kind="inspection",
            user_id=owner.id,  # type: ignore[arg-type]
            name="amun check",
            status="cancelled",
            meta={"inspection": {"batch_size": 3}},
        )
        session.add(s)
        await session.flush()
        session.add(Run(submission_id=s.id, name="run-1", status="done", attempt=1))
        session.add(Run(submission_id=s.id, name="run-2", status="cancelled", attempt=1))
        sub_id = s.id
    html = (await client.get(f"/inspections/{sub_id}")).text
    runs = re.search(r'<table id="bench-runs".*?</table>', html, re.S)
    assert runs, html
    assert re.findall(r'<span class="status (\w+)">', runs.group(0)) == [
        "done",
        "cancelled",
        "cancelled",
    ]
    assert "not started: the inspection was cancelled" in runs.group(0)
    assert "queued" not in runs.group(0)


async def test_the_pages_have_one_h1_and_name_nothing_outside_the_site(
    services: Services, client: httpx.AsyncClient
) -> None:
    ids = await step_history(services)
    for path in ("/benchmarks/history/tiny", f"/benchmarks/{ids[0]}"):
        html = (await client.get(path)).text
        assert html.count("<h1") == 1, path
        assert foreign_urls(html) == [], path
        # Each chart is an image with a text alternative.
        for svg in re.findall(r"<svg[^>]*>(?:<title>[^<]+</title>)?", html):
            assert 'role="img"' in svg and "<title>" in svg, svg


async def issue_token_for(services: Services, user: User) -> str:
    async with services.db.session() as session:
        row = await session.get(User, user.id)
        assert row is not None
        return await issue_token(session, row, label="test")


async def test_amuns_workflow_status_says_cancelled_for_runs_never_started(
    services: Services, client: httpx.AsyncClient
) -> None:
    owner = await make_owner(services)
    async with services.db.session() as session:
        s = Submission(
            kind="inspection",
            user_id=owner.id,  # type: ignore[arg-type]
            name="amun check",
            status="building",
            meta={"inspection": {"batch_size": 2}},
        )
        session.add(s)
        await session.flush()
        sub_id = s.id
    token = await issue_token_for(services, owner)
    headers = {"Authorization": f"Bearer {token}"}
    r = await client.get(f"/api/v1/inspections/{sub_id}/status", headers=headers)
    assert [x["status"] for x in r.json()["status"]["workflow"]["runs"]] == ["queued", "queued"]
    async with services.db.session() as session:
        row = await session.get(Submission, sub_id)
        assert row is not None
        await cancel(session, row, service="api", message="cancelled by ada")
    r = await client.get(f"/api/v1/inspections/{sub_id}/status", headers=headers)
    runs = r.json()["status"]["workflow"]["runs"]
    assert [x["status"] for x in runs] == ["cancelled", "cancelled"]


async def test_a_schedules_runs_side_by_side_are_told_apart_by_time(
    services: Services, client: httpx.AsyncClient
) -> None:
    owner = await make_owner(services)
    parent = await make_schedule(services, owner, "*/5 * * * *")
    async with services.db.session() as session:
        for minute, value in ((5, 11.0), (10, 12.0)):
            child = Submission(
                kind="benchmark",
                user_id=owner.id,  # type: ignore[arg-type]
                name=f"tiny tick {minute}",
                status="done",
                parent_id=parent.id,
                meta={"benchmark": "tiny"},
                created_at=T0 + timedelta(minutes=minute),
            )
            session.add(child)
            await session.flush()
            session.add(Score(submission_id=child.id, dataset="all", metric="elapsed", value=value))
    html = (await client.get(f"/benchmarks/{parent.id}")).text
    multiples = re.search(r'<div class="multiples".*?</div>', html, re.S)
    assert multiples, html
    assert "2026-01-01 00:05" in multiples.group(0) and "2026-01-01 00:10" in multiples.group(0)
    assert multiples.group(0).count('<circle class="point"') == 2
