"""Everything a command shows: JSON on stdout, rich tables and timelines, messages on stderr."""

from __future__ import annotations

import functools
import json
import math
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from rich.console import Console, Group, RenderableType
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
    console.print(Text.assemble(("error:", "bold red"), " ", printable(message)))
    if hint:
        console.print(Text(printable(hint), style="dim"))


def note(message: str, *, style: str = "dim") -> None:
    """A progress or status message: stderr, so stdout stays clean for the record."""
    stderr().print(Text(printable(message), style=style))


# What must not reach a terminal as is: C0 controls, DEL, C1 controls (ESC and CSI start
# sequences that retitle, clear or rewrite a screen), the bidirectional overrides and
# isolates that show text in another order than it is stored, the Unicode line and
# paragraph separators, and lone surrogates (which cannot even be encoded).
_UNSAFE = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]"
)
_UNSAFE_IN_LOGS = re.compile(
    r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]"
)
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _visible(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object, *, keep_lines: bool = False) -> str:
    """`text` safe to show on a terminal: every control character written as a visible
    escape (ESC as `\\x1b`, U+202E as `\\u202e`). With `keep_lines` (logs) newlines and
    tabs stay, and CRLF counts as a newline."""
    text = str(text)
    if keep_lines:
        return _UNSAFE_IN_LOGS.sub(_visible, text.replace("\r\n", "\n"))
    return _UNSAFE.sub(_visible, text)


def plain(value: object, *, style: str = "") -> Text:
    """A cell or field made of text that came from someone else: printable, never markup."""
    return Text("-" if value is None or value == "" else printable(value), style=style)


def add_row(table: Table, *cells: RenderableType) -> None:
    """A row whose plain strings are text, never markup (a name like "[/]" breaks markup)."""
    table.add_row(*(Text(cell) if isinstance(cell, str) else cell for cell in cells))


def status_text(status: str | None) -> Text:
    status = status or "-"
    return Text(printable(status), style=STATUS_STYLES.get(status, ""))


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    # The API writes UTC; a stamp without an offset is taken as UTC too.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def fmt_time(value: str | None, *, date: bool = True) -> str:
    """An API timestamp in UTC, to the minute ("2026-12-06 08:01 UTC"); a time of day to
    the second when `date` is false (a timeline, whose heading says UTC)."""
    moment = parse_time(value)
    if moment is None:
        return printable(value) if value else "-"
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M UTC" if date else "%H:%M:%S")


def fmt_seconds(seconds: float | None) -> str:
    """Every duration and age shown: "2.5 ms", "340 ms", "1.2 s", "4 min 3 s", "23 h 58 min",
    "2 d 3 h".

    Cut down, never rounded up: a wait shown as 23 h 58 min is at least that long, and a
    value never shows as the next unit's boundary ("60.0 s").
    """
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = max(0.0, float(seconds))
    if seconds < 1:
        # The epsilons keep 0.29 s (0.28999… in binary) from showing as 289 ms.
        ms = seconds * 1000
        return f"{math.floor(ms * 10 + 1e-6) / 10:.1f} ms" if ms < 10 else f"{int(ms + 1e-6)} ms"
    if seconds < 60:
        return f"{math.floor(seconds * 10 + 1e-9) / 10:.1f} s"
    whole = int(seconds + 1e-9)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    # The two largest units, the smaller left out when it is 0: "4 min", "2 h 5 min".
    if days:
        major, minor = f"{days} d", f"{hours} h" if hours else ""
    elif hours:
        major, minor = f"{hours} h", f"{minutes} min" if minutes else ""
    else:
        major, minor = f"{minutes} min", f"{secs} s" if secs else ""
    return f"{major} {minor}" if minor else major


def fmt_duration(start: str | None, end: str | None) -> str:
    """The time between two API timestamps (see fmt_seconds)."""
    a, b = parse_time(start), parse_time(end)
    if a is None or b is None:
        return "-"
    return fmt_seconds((b - a).total_seconds())


def fmt_age(value: str | None, *, now: datetime | None = None) -> str:
    """How long ago an API timestamp was ("4 min 3 s ago")."""
    moment = parse_time(value)
    if moment is None:
        return "-"
    return f"{fmt_seconds(((now or datetime.now(UTC)) - moment).total_seconds())} ago"


def fmt_bytes(size: int | None) -> str:
    """A size with its unit: "512 B", "3.4 MiB"."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def fmt_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return printable(value)


def event_line(event: dict[str, Any]) -> Text:
    """One timeline entry: time (UTC), what happened, the message."""
    line = Text()
    line.append(fmt_time(event.get("created_at"), date=False), style="dim")
    line.append("  ")
    status = event.get("status")
    label = printable(status or str(event.get("type", "")).removeprefix("status."))
    line.append(f"{label:<11}", style=STATUS_STYLES.get(status or "", "blue"))
    message = event.get("message") or ""
    if message:
        line.append(" ")
        line.append(printable(message))
    return line


def submission_view(sub: dict[str, Any]) -> RenderableType:
    """A submission's header, timeline, error and runs."""
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    add_row(head, "submission", plain(sub.get("id")))
    add_row(head, "status", status_text(sub.get("status")))
    add_row(head, "task", plain(f"{sub.get('task') or '-'}  ({sub.get('kind') or '-'})"))
    add_row(head, "name", plain(sub.get("name")))
    owner = plain(sub.get("owner"))
    if sub.get("private"):
        owner.append("  (private)")
    add_row(head, "owner", owner)
    if sub.get("bytes") is not None:
        sha = printable((sub.get("sha256") or "")[:12])
        add_row(head, "bundle", f"{fmt_bytes(sub.get('bytes'))}  sha256 {sha}…")
    created = sub.get("created_at")
    add_row(head, "uploaded", f"{fmt_time(created)}  ({fmt_age(created)})" if created else "-")
    parts: list[RenderableType] = [head, Text("")]
    events = sub.get("events") or []
    parts.append(Text.assemble(("timeline", "bold"), (" (UTC)", "dim")))
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
        return Text(f"error: {printable(error)}", style="red")
    text = Text("failed", style="bold red")
    if error.get("stage"):
        text.append(f" at {printable(error['stage'])}", style="bold red")
    text.append(f": {printable(error.get('reason') or 'no reason given')}", style="red")
    if error.get("log_key"):
        text.append(f"\nlog: {printable(error['log_key'])}", style="dim")
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
        add_row(
            table,
            plain(s.get("id")),
            plain(s.get("task")),
            plain(s.get("kind")),
            plain(s.get("name")),
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
            str(m.get("name")) + (f" x{m['weight']:g}" if m.get("weight") not in (None, 1) else "")
            for m in t.get("metrics", [])
        )
        datasets = ", ".join(
            f"{d.get('name')} ({d.get('access', '?')})" for d in t.get("datasets", [])
        )
        add_row(
            table,
            plain(t.get("slug")),
            plain(t.get("name")),
            plain(metrics),
            plain(datasets),
            plain(t.get("eval_server_id")),
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
        unit = (s.get("extra") or {}).get("unit") if isinstance(s.get("extra"), dict) else None
        value = fmt_value(s.get("value")) + (f" {printable(unit)}" if unit else "")
        add_row(
            table,
            plain(s.get("dataset")),
            plain(s.get("metric")),
            value,
            ci,
            fmt_value(s.get("n_examples")),
        )
    return table


# What a dataset run's summary holds that has a column of its own, or is not for people
# (hashes, storage keys, the sandbox's description); anything else is shown under "details".
_RUN_FIELDS = frozenset(
    {"dataset", "sha256", "n_examples", "performance", "timings", "worker", "files", "scores"}
)


def _run_took(run: dict[str, Any]) -> str:
    started, finished = run.get("started_at"), run.get("finished_at")
    if started and not finished and run.get("status") == "running":
        return fmt_age(started).removesuffix(" ago")  # so far: its status says running
    return fmt_duration(started, finished)


def _run_details(summary: dict[str, Any]) -> str:
    shown = []
    for key, value in summary.items():
        if key in _RUN_FIELDS or isinstance(value, dict | list) or value is None:
            continue
        shown.append(f"{key} {fmt_value(value)}")
    return printable(", ".join(shown)) or "-"


def runs_table(runs: Iterable[dict[str, Any]]) -> RenderableType:
    """One row per run (a dataset of a model, or run N of a benchmark): how long it took, on
    how many examples, how fast; a failed run's error under the table."""
    runs = list(runs)
    summaries: list[dict[str, Any]] = [
        summary if isinstance(summary := r.get("summary"), dict) else {} for r in runs
    ]
    performance = [p if isinstance(p := s.get("performance"), dict) else {} for s in summaries]
    columns: dict[str, list[Text]] = {
        "dataset": [plain(r.get("name")) for r in runs],
        "status": [status_text(r.get("status")) for r in runs],
        "took": [Text(_run_took(r)) for r in runs],
        "examples": [Text(_count(s.get("n_examples"))) for s in summaries],
    }
    shown = {
        "examples/s": ("examples_per_second", lambda v: f"{v:,.1f}"),
        "latency p50": ("latency_p50_ms", lambda v: fmt_seconds(v / 1000)),
        "peak memory": ("peak_memory_mb", lambda v: fmt_bytes(round(v * 2**20))),
    }
    for header, (key, show) in shown.items():
        values = [as_number(p.get(key)) for p in performance]
        if any(v is not None for v in values):
            columns[header] = [Text(show(v) if v is not None else "-") for v in values]
    details = [_run_details(s) for s in summaries]
    if any(d != "-" for d in details):
        columns["details"] = [Text(d) for d in details]
    # No rules: seven columns fit an 80-column terminal.
    table = Table(
        title="runs",
        title_justify="left",
        title_style="bold",
        box=None,
        header_style="bold underline",
    )
    for header, cells in columns.items():
        # Wide enough for its values (headers may wrap): rich would otherwise squeeze a
        # short column to nothing to fit a long one on a narrow terminal.
        widest = max((cell.cell_len for cell in cells), default=1)
        names = header in ("dataset", "details")
        table.add_column(
            header,
            justify="left" if names or header == "status" else "right",
            min_width=min(widest, 12) if names else widest,
            overflow="fold",
        )
    for row in zip(*columns.values(), strict=True):
        table.add_row(*row)
    errors = [
        Text.assemble((printable(r.get("name") or "-"), "bold red"), ": ", printable(r["error"]))
        for r in runs
        if r.get("error")
    ]
    return Group(table, *errors) if errors else table


def _count(value: Any) -> str:
    number = as_number(value)
    return f"{number:,.0f}" if number is not None and number == int(number) else fmt_value(value)


def as_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


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


def family_table(children: Iterable[dict[str, Any]]) -> RenderableType:
    """A benchmark family (or a schedule's runs) side by side: one row per child, its range
    values (or tick), its status and each metric over all its runs."""
    children = list(children)
    names = list(dict.fromkeys(k for c in children for k in (c.get("values") or {})))
    metrics = list(dict.fromkeys(m for c in children for m in (c.get("metrics") or {})))
    table = Table(title="family", title_justify="left", title_style="bold")
    table.add_column("id")
    if any(c.get("tick") for c in children):
        table.add_column("tick")
    for name in names:
        table.add_column(name, justify="right")
    table.add_column("status")
    for metric in metrics:
        table.add_column(metric, justify="right")
    for child in children:
        values = child.get("values") or {}
        found = child.get("metrics") or {}
        cells: list[Text] = [plain(child.get("id"))]
        if any(c.get("tick") for c in children):
            cells.append(plain(child.get("tick") or "-"))
        cells += [plain(str(values.get(n, "-"))) for n in names]
        cells.append(status_text(child.get("status")))
        for metric in metrics:
            value = as_number(found.get(metric))
            cells.append(Text(f"{value:,.4g}" if value is not None else "-"))
        add_row(table, *cells)
    return table
