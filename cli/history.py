"""`history BENCHMARK`: a periodic benchmark's metric series and its regression alerts."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from cli import render
from cli.client import Client
from cli.errors import reports_errors

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
SPARKS = "▁▂▃▄▅▆▇█"
# Rows shown per metric in the human table; --json has them all.
SHOWN_RUNS = 20


def sparkline(values: list[float]) -> str:
    """The values as one line of block characters, low to high (the newest 60)."""
    values = values[-60:]
    if not values:
        return ""
    low, high = min(values), max(values)
    if high == low:
        return SPARKS[len(SPARKS) // 2] * len(values)
    scale = (len(SPARKS) - 1) / (high - low)
    return "".join(SPARKS[round((v - low) * scale)] for v in values)


def _series_title(series: dict[str, Any]) -> str:
    labels = ", ".join(
        f"{k}={v}" for k, v in sorted((series.get("labels") or {}).items()) if k != "task_name"
    )
    parts = [
        f"on {series['instance_type']}" if series.get("instance_type") else "",
        series.get("variant") or "",
        labels,
        f"identity {str(series.get('identity', ''))[:12]}",
    ]
    return " · ".join(p for p in parts if p)


def _metric_table(metric: dict[str, Any], alerts: list[dict[str, Any]]) -> RenderableType:
    points = metric.get("points", [])
    units = metric.get("units") or ""
    status = metric.get("status") or "no alert rule"
    flagged = {a["submission_id"]: a["kind"] for a in alerts if a.get("metric") == metric["metric"]}
    title = Text(f"{metric['metric']}" + (f" ({units})" if units else ""), style="bold")
    title.append(f"  {status}", style="red bold" if status == "alerting" else "dim")
    table = Table(title=title, title_justify="left")
    table.add_column("run", justify="right")
    table.add_column("when (UTC)", no_wrap=True)
    table.add_column("submission", no_wrap=True)
    table.add_column("value", justify="right")
    table.add_column("interval", justify="right")
    table.add_column("alert")
    shown = points[-SHOWN_RUNS:]
    for p in shown:
        interval = (
            f"[{p['ci_low']:.4g}, {p['ci_high']:.4g}]"
            if p.get("ci_low") is not None and p.get("ci_high") is not None
            else "-"
        )
        kind = flagged.get(p["submission_id"], "")
        render.add_row(
            table,
            str(p["run"]),
            render.fmt_time(p.get("at")),
            render.plain(p.get("submission_id")),
            f"{p['value']:.6g}",
            interval,
            Text(kind, style="red bold" if kind == "fired" else "green"),
        )
    line = Text(sparkline([p["value"] for p in points]))
    if len(points) > len(shown):
        line.append(f"  (the newest {len(shown)} of {len(points)} runs are listed)", style="dim")
    return Group(table, line)


def _alerts_table(alerts: list[dict[str, Any]]) -> RenderableType:
    table = Table(title="alerts", title_justify="left", title_style="bold")
    for name in ("when (UTC)", "metric", "alert", "from run", "baseline", "value", "change"):
        table.add_column(name, justify="right" if name in ("baseline", "value") else "left")
    for a in alerts:
        relative = a.get("relative_change")
        change = f"{a['change']:+.4g}" + (f" ({relative:+.1%})" if relative is not None else "")
        render.add_row(
            table,
            render.fmt_time(a.get("at")),
            render.plain(a.get("metric")),
            Text(a["kind"], style="red bold" if a["kind"] == "fired" else "green"),
            render.plain(a.get("submission_id")),
            f"{a['baseline']:.6g}",
            f"{a['value']:.6g}",
            change,
        )
    return table


def history_view(answer: dict[str, Any]) -> RenderableType:
    parts: list[RenderableType] = []
    for series in answer.get("series", []):
        parts.append(Text(f"{answer['benchmark']}  {_series_title(series)}", style="bold"))
        alerts = series.get("alerts", [])
        for metric in series.get("metrics", []):
            parts.append(_metric_table(metric, alerts))
        if alerts:
            parts.append(_alerts_table(alerts))
        parts.append(Text(""))
    return Group(*parts)


@reports_errors
def history(
    benchmark: Annotated[
        str, typer.Argument(help="The benchmark's name: its descriptor's info.labels.task_name.")
    ],
    metric: Annotated[str | None, typer.Option("--metric", help="Only this metric.")] = None,
    json_output: JsonOption = False,
) -> None:
    """Show a benchmark's metric series, run by run, and its regression alerts."""
    params = {"benchmark": benchmark, **({"metric": metric} if metric else {})}
    with Client.from_login(need_token=False) as client:
        answer = client.get("/benchmarks/history", params=params)
    if json_output:
        render.print_json(answer)
        return
    if not answer.get("series"):
        render.note(f"no runs of {benchmark} are visible to you yet")
        return
    render.stdout().print(history_view(answer))
