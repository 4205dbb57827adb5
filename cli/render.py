"""Everything a command shows: JSON on stdout, rich tables and timelines, messages on stderr."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

STATUS_STYLES = {
    "uploaded": "cyan",
    "building": "yellow",
    "built": "yellow",
    "evaluating": "yellow",
    "done": "bold green",
    "failed": "bold red",
    "cancelled": "magenta",
}
TERMINAL = frozenset({"done", "failed", "cancelled"})

_options = {"no_color": False}


def configure(*, no_color: bool = False) -> None:
    _options["no_color"] = no_color
    stdout.cache_clear()
    stderr.cache_clear()


@functools.cache
def stdout() -> Console:
    # file=None: rich looks sys.stdout up at each write, so redirections (tests) are honoured.
    return Console(no_color=_options["no_color"] or None, highlight=False)


@functools.cache
def stderr() -> Console:
    return Console(stderr=True, no_color=_options["no_color"] or None, highlight=False)


def print_json(document: Any) -> None:
    """The one JSON document a `--json` command prints; nothing else goes to stdout."""
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")
    sys.stdout.flush()


def print_error(message: str, *, hint: str | None = None) -> None:
    console = stderr()
    console.print(f"[bold red]error:[/] {escape(message)}")
    if hint:
        console.print(f"[dim]{escape(hint)}[/]")


def note(message: str, *, style: str = "dim") -> None:
    """A progress or status message: stderr, so stdout stays clean for the record."""
    stderr().print(Text(message, style=style))


def status_text(status: str | None) -> Text:
    status = status or "-"
    return Text(status, style=STATUS_STYLES.get(status, ""))


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def fmt_time(value: str | None, *, date: bool = True) -> str:
    """An API timestamp in the user's local time."""
    moment = parse_time(value)
    if moment is None:
        return value or "-"
    moment = moment.astimezone()
    return moment.strftime("%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S")


def fmt_duration(start: str | None, end: str | None) -> str:
    a, b = parse_time(start), parse_time(end)
    if a is None or b is None:
        return "-"
    seconds = max(0.0, (b - a).total_seconds())
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


def fmt_bytes(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def fmt_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def event_line(event: dict[str, Any]) -> Text:
    """One timeline entry: time, what happened, the message."""
    line = Text()
    line.append(fmt_time(event.get("created_at"), date=False), style="dim")
    line.append("  ")
    status = event.get("status")
    label = status or str(event.get("type", "")).removeprefix("status.")
    line.append(f"{label:<11}", style=STATUS_STYLES.get(status or "", "blue"))
    message = event.get("message") or ""
    if message:
        line.append(" ")
        line.append(message)
    return line


def submission_view(sub: dict[str, Any]) -> RenderableType:
    """A submission's header, timeline, error and runs."""
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("submission", sub.get("id", "-"))
    head.add_row("status", status_text(sub.get("status")))
    head.add_row("task", f"{sub.get('task') or '-'}  ({sub.get('kind', '-')})")
    head.add_row("name", str(sub.get("name") or "-"))
    head.add_row("owner", f"{sub.get('owner') or '-'}{'  (private)' if sub.get('private') else ''}")
    if sub.get("bytes") is not None:
        sha = (sub.get("sha256") or "")[:12]
        head.add_row("bundle", f"{fmt_bytes(sub.get('bytes'))}  sha256 {sha}…")
    head.add_row("uploaded", fmt_time(sub.get("created_at")))
    parts: list[RenderableType] = [head, Text("")]
    events = sub.get("events") or []
    parts.append(Text("timeline", style="bold"))
    parts.extend(event_line(e) for e in events)
    if not events:
        parts.append(Text("(no events yet)", style="dim"))
    error = sub.get("error")
    if error:
        parts.append(Text(""))
        parts.append(error_text(error))
    runs = sub.get("runs") or []
    if runs:
        parts.append(Text(""))
        parts.append(runs_table(runs))
    return Group(*parts)


def error_text(error: dict[str, Any] | str) -> Text:
    if isinstance(error, str):
        return Text(f"error: {error}", style="red")
    text = Text("failed", style="bold red")
    if error.get("stage"):
        text.append(f" at {error['stage']}", style="bold red")
    text.append(f": {error.get('reason') or 'no reason given'}", style="red")
    if error.get("log_key"):
        text.append(f"\nlog: {error['log_key']}", style="dim")
    return text


def submissions_table(subs: Iterable[dict[str, Any]]) -> Table:
    table = Table(title="submissions", title_justify="left", title_style="bold")
    table.add_column("id", no_wrap=True, min_width=32)
    table.add_column("task", overflow="fold")
    table.add_column("kind", overflow="fold")
    table.add_column("name", overflow="fold")
    table.add_column("status", min_width=9)
    table.add_column("uploaded", overflow="fold")
    for s in subs:
        table.add_row(
            s.get("id", "-"),
            s.get("task") or "-",
            s.get("kind") or "-",
            s.get("name") or "-",
            status_text(s.get("status")),
            fmt_time(s.get("created_at")),
        )
    return table


def tasks_table(tasks: Iterable[dict[str, Any]]) -> Table:
    table = Table(title="tasks", title_justify="left", title_style="bold")
    table.add_column("task", no_wrap=True, style="bold")
    table.add_column("name")
    table.add_column("metrics")
    table.add_column("datasets")
    table.add_column("fleet")
    for t in tasks:
        metrics = ", ".join(
            m["name"] + (f" x{m['weight']:g}" if m.get("weight") not in (None, 1) else "")
            for m in t.get("metrics", [])
        )
        datasets = ", ".join(f"{d['name']} ({d.get('access', '?')})" for d in t.get("datasets", []))
        table.add_row(
            t.get("slug", "-"),
            t.get("name", "-"),
            metrics or "-",
            datasets or "-",
            t.get("eval_server_id") or "-",
        )
    return table


def scores_table(scores: Iterable[dict[str, Any]]) -> Table:
    table = Table(title="scores", title_justify="left", title_style="bold")
    table.add_column("dataset")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("95% CI", justify="right")
    table.add_column("examples", justify="right")
    for s in scores:
        ci = "-"
        if s.get("ci_low") is not None and s.get("ci_high") is not None:
            ci = f"[{fmt_value(s['ci_low'])}, {fmt_value(s['ci_high'])}]"
        table.add_row(
            s.get("dataset", "-"),
            s.get("metric", "-"),
            fmt_value(s.get("value")),
            ci,
            fmt_value(s.get("n_examples")),
        )
    return table


def runs_table(runs: Iterable[dict[str, Any]]) -> Table:
    table = Table(title="runs", title_justify="left", title_style="bold")
    table.add_column("run")
    table.add_column("status")
    table.add_column("started", no_wrap=True)
    table.add_column("took", justify="right")
    table.add_column("summary / error")
    for r in runs:
        detail = r.get("error") or r.get("summary") or ""
        if isinstance(detail, dict | list):
            detail = json.dumps(detail, default=str)
        table.add_row(
            str(r.get("name", "-")),
            status_text(r.get("status")),
            fmt_time(r.get("started_at")),
            fmt_duration(r.get("started_at"), r.get("finished_at")),
            str(detail)[:120],
        )
    return table


def leaderboard_table(board: dict[str, Any]) -> Table:
    rows = board.get("rows") or []
    metric_names: list[str] = []
    for row in rows:
        for name in row.get("metrics") or {}:
            if name not in metric_names:
                metric_names.append(name)
    unsafe = any(row.get("unsandboxed") for row in rows)
    table = Table(
        title=f"leaderboard: {board.get('task', '')}",
        caption="⚠ unsandboxed: evaluated without the sandbox; its scores cannot be trusted"
        if unsafe
        else None,
        title_justify="left",
        # No rules: rich lays a boxed table out wider than the terminal once cells must wrap.
        box=None,
        show_edge=False,
        collapse_padding=True,
        header_style="bold underline",
    )
    # On a narrow terminal cells wrap rather than end in an ellipsis: a model's name and a
    # metric's value are what a reader scans for.
    longest = max((len(str(row.get("model") or "-")) for row in rows), default=5)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("model", min_width=min(longest, 16), overflow="fold")
    table.add_column("owner", overflow="fold")
    table.add_column("score", justify="right", style="bold", overflow="fold")
    for name in metric_names:
        table.add_column(name, justify="right", overflow="fold")
    table.add_column("95% CI", justify="right", min_width=8, overflow="fold")
    for row in rows:
        ci = row.get("ci")
        rank = f"{row.get('rank', '-')}{'=' if row.get('tied') else ''}"
        metrics = row.get("metrics") or {}
        table.add_row(
            rank,
            str(row.get("model") or "-") + (" ⚠ unsandboxed" if row.get("unsandboxed") else ""),
            str(row.get("owner") or "-"),
            fmt_value(row.get("score")),
            *(fmt_value(metrics.get(name)) for name in metric_names),
            f"[{fmt_value(ci[0])}, {fmt_value(ci[1])}]" if ci else "-",
        )
    return table


def transfer_progress(*, enabled: bool) -> Progress:
    """A bytes progress bar (size, speed, ETA) on stderr; invisible when disabled."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=stderr(),
        disable=not enabled,
        transient=False,
    )
