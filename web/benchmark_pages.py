"""Benchmark and inspection pages: a run's machine (hwinfo) and process usage (rusage) per run,
a range family side by side (a table and small multiples), and a periodic benchmark's
history, each metric a chart drawn on the server (web/charts.py) with its alerts marked.

`/benchmarks/{id}` (a benchmark submission, its runs or its family), `/benchmarks/history/
{name}` (every series of the descriptors whose task_name is `name`), `/inspections/{id}` (an
Amun-style inspection and its runs).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from core import submissions as subs
from core.context import services_of
from core.errors import NotFound
from core.histories import read_history
from core.inspection_results import batch_size_of, read_json, results_prefix
from core.inspections import get_inspection
from core.models import Score, Submission, User
from core.storage import Storage
from core.submissions import PARENT_ROLES
from web.auth import viewer_of
from web.charts import ChartMarker, ChartPoint, line_chart
from web.pages import templates

router = APIRouter(include_in_schema=False)

# The rusage fields a reader compares between runs: (field, heading).
RUSAGE = (
    ("ru_utime", "User CPU (s)"),
    ("ru_stime", "System CPU (s)"),
    ("ru_maxrss", "Max RSS (KiB)"),
    ("ru_nvcsw", "Voluntary switches"),
    ("ru_nivcsw", "Involuntary switches"),
    ("ru_majflt", "Major faults"),
)


def machine_of(hwinfo: dict[str, Any] | None) -> dict[str, Any] | None:
    """The headline figures of a run's hwinfo.json (missing fields stay missing)."""
    if not hwinfo:
        return None
    cpu = hwinfo.get("cpu") or {}
    memory = hwinfo.get("memory") or {}
    cgroup = hwinfo.get("cgroup") or {}
    gpu = hwinfo.get("gpu") or {}
    os_info = hwinfo.get("os") or {}
    total = memory.get("total_bytes")
    limit = cgroup.get("memory_limit_bytes")
    return {
        "cpu": cpu.get("model") or cpu.get("brand_raw"),
        "cores": cpu.get("logical_cores"),
        "effective_cores": cpu.get("effective_cores"),
        "cpu_limit": cgroup.get("cpu_limit"),
        "memory_mb": round(total / 2**20) if isinstance(total, int | float) else None,
        "memory_limit_mb": round(limit / 2**20) if isinstance(limit, int | float) else None,
        "gpus": ", ".join(str(d.get("name")) for d in gpu.get("devices") or []) or None,
        "os": " ".join(str(x) for x in (os_info.get("system"), os_info.get("kernel")) if x),
        "flags": len(cpu.get("flags") or []) or None,
    }


def run_number(name: str) -> int | None:
    number = name.removeprefix("run-")
    return int(number) if name.startswith("run-") and number.isdigit() else None


async def run_records(
    storage: Storage, submission: Submission, runs: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Each run with its result.json (exit code, seconds, rusage, metrics) and machine."""
    out = []
    for row in runs:
        number = run_number(row["name"])
        result = hwinfo = None
        if number is not None:
            prefix = results_prefix(submission.id, number)
            result = await read_json(storage, f"{prefix}/result.json")
            hwinfo = await read_json(storage, f"{prefix}/hwinfo.json")
        usage = (result or {}).get("usage") or {}
        out.append(
            {
                **row,
                "exit_code": (result or {}).get("exit_code"),
                "seconds": (result or {}).get("seconds"),
                "metrics": (result or {}).get("metrics") or {},
                "usage": {field: usage.get(field) for field, _ in RUSAGE},
                "machine": machine_of(hwinfo),
            }
        )
    return out


def _runs_of(submission: Submission, runs: list[Any]) -> list[dict[str, Any]]:
    rows = [
        {"name": r.name, "status": r.status, "attempt": r.attempt, "error": r.error} for r in runs
    ]
    if submission.kind == "inspection":
        have = {r["name"] for r in rows}
        for n in range(1, batch_size_of(submission) + 1):
            if f"run-{n}" not in have:
                ended = submission.status in ("done", "failed", "cancelled")
                rows.append(
                    {
                        "name": f"run-{n}",
                        "status": "cancelled" if ended else "queued",
                        "attempt": 0,
                        "error": f"not started: the inspection was {submission.status}"
                        if ended
                        else None,
                    }
                )
    return rows


def _values_label(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


def _sort_key(value: Any) -> tuple[int, float, str]:
    """Numbers in numeric order, before other values in text order; missing ones last."""
    if isinstance(value, bool) or value is None:
        return (2, 0.0, str(value))
    if isinstance(value, int | float):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def family_view(children: list[dict[str, Any]]) -> dict[str, Any]:
    """A range family side by side: the value columns, the metric columns and one small
    chart per metric across the family's members."""
    value_names = sorted({k for c in children for k in c["values"]})
    if value_names:
        # A family's members in the order of their values (members made in one transaction
        # share a creation time, so that order is no order on every database).
        children = sorted(
            children,
            key=lambda c: [_sort_key(c["values"].get(k)) for k in value_names],
        )
    metric_names = sorted({k for c in children for k in c["metrics"]})
    charts = []
    # A range family's members are told apart by their values, a schedule's by their time.
    labels = [
        _values_label(c["values"]) if c["values"] else str(c["created_at"])[:16].replace("T", " ")
        for c in children
    ]
    for metric in metric_names:
        members = [(c, label) for c, label in zip(children, labels, strict=True)]
        measured = [(c, label) for c, label in members if metric in c["metrics"]]
        if not measured:
            continue
        points = [
            ChartPoint(
                value=c["metrics"][metric],
                title=f"{label}: {metric} = {c['metrics'][metric]:.6g}",
                href=f"/benchmarks/{c['id']}",
            )
            for c, label in measured
        ]
        charts.append(
            {
                "metric": metric,
                "svg": line_chart(
                    points,
                    title=f"{metric} across the family",
                    x_label="",
                    x_ticks=[label for _, label in measured],
                    width=300,
                    height=180,
                    css_class="chart small",
                ),
            }
        )
    return {
        "children": children,
        "value_names": value_names,
        "metric_names": metric_names,
        "charts": charts,
    }


async def _page(request: Request, submission: Submission, viewer: User | None) -> HTMLResponse:
    services = services_of(request)
    async with services.db.session() as session:
        runs = await subs.list_runs(session, submission.id)
        scores: list[Score] = await subs.list_scores(session, submission.id)
        owner = await session.get(User, submission.user_id)
        parent = (
            await session.get(Submission, submission.parent_id) if submission.parent_id else None
        )
        children = (
            await subs.family_rows(session, submission)
            if submission.meta.get("role") in PARENT_ROLES
            else []
        )
    if parent is not None and not subs.can_view(parent, viewer):
        parent = None
    records = await run_records(services.storage, submission, _runs_of(submission, runs))
    return templates.TemplateResponse(
        request,
        "benchmark.html",
        {
            "s": submission,
            "owner": owner.name if owner else None,
            "parent": parent,
            "runs": records,
            "rusage": RUSAGE,
            "overall": [x for x in scores if x.dataset == subs.ALL_RUNS],
            "per_run": [x for x in scores if x.dataset != subs.ALL_RUNS],
            "family": family_view(children) if children else None,
            "benchmark": submission.meta.get("benchmark"),
            "batch_size": batch_size_of(submission) if submission.kind == "inspection" else None,
        },
    )


@router.get("/benchmarks/{submission_id}", response_class=HTMLResponse)
async def benchmark_page(submission_id: str, request: Request) -> HTMLResponse:
    viewer = await viewer_of(request)
    async with services_of(request).db.session() as session:
        s = await subs.get_submission(session, submission_id, viewer=viewer)
    if s.kind != "benchmark":
        raise NotFound(f"no benchmark {submission_id}", field="id")
    return await _page(request, s, viewer)


@router.get("/inspections/{inspection_id}", response_class=HTMLResponse)
async def inspection_page(inspection_id: str, request: Request) -> HTMLResponse:
    viewer = await viewer_of(request)
    async with services_of(request).db.session() as session:
        s = await get_inspection(session, inspection_id, viewer=viewer)
    return await _page(request, s, viewer)


def _alert_title(alert: dict[str, Any], units: str | None) -> str:
    unit = f" {units}" if units else ""
    if alert["kind"] == "fired":
        change = alert.get("relative_change")
        pct = f" ({change:+.1%})" if isinstance(change, int | float) else ""
        return (
            f"alert: {alert['metric']} moved to {alert['value']:.6g}{unit} from a baseline of "
            f"{alert['baseline']:.6g}{unit}{pct} ({alert['method']}), at {alert['at'][:19]}"
        )
    return (
        f"alert {alert['kind']}: {alert['metric']} is back near its baseline, at {alert['at'][:19]}"
    )


def history_charts(series: dict[str, Any]) -> list[dict[str, Any]]:
    """One chart per metric of a series, its alerts marked on the runs they were raised on."""
    charts = []
    for m in series["metrics"]:
        points = m["points"]
        index = {p["submission_id"]: i for i, p in enumerate(points)}
        units = m.get("units") or ""
        alerts = [a for a in series["alerts"] if a["metric"] == m["metric"]]
        markers = [
            ChartMarker(
                index=index[a["submission_id"]], title=_alert_title(a, units), kind=a["kind"]
            )
            for a in alerts
            if a["submission_id"] in index
        ]
        chart_points = [
            ChartPoint(
                value=p["value"],
                title=(
                    f"run {p['run']} ({p['name']}), {p['at'][:19]}: {p['value']:.6g} {units}"
                ).strip(),
                ci_low=p.get("ci_low"),
                ci_high=p.get("ci_high"),
                href=f"/benchmarks/{p['submission_id']}",
            )
            for p in points
        ]
        charts.append(
            {
                "metric": m["metric"],
                "units": units,
                "status": m.get("status"),
                "alerts": alerts,
                "n": len(points),
                "svg": line_chart(
                    chart_points,
                    title=f"{m['metric']} ({units})" if units else m["metric"],
                    y_label=units,
                    x_ticks=[str(p["run"]) for p in points],
                    markers=markers,
                ),
            }
        )
    return charts


@router.get("/benchmarks/history/{name}", response_class=HTMLResponse)
async def history_page(name: str, request: Request) -> HTMLResponse:
    viewer = await viewer_of(request)
    async with services_of(request).db.session() as session:
        history = await read_history(session, name, viewer=viewer)
    series = [{**s, "charts": history_charts(s)} for s in history["series"]]
    return templates.TemplateResponse(
        request, "benchmark_history.html", {"name": name, "series": series}
    )
