"""A leaderboard as one table: its columns, its rows as HTML, and the same rows as records for
the CSV and JSON exports, so that an export holds exactly what the page shows.

The rows are rendered here in Python rather than cell by cell in Jinja: a board of 1,000 models
over 10 datasets is some 25,000 cells, and the page must render in well under 100 ms.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from html import escape
from typing import Any

from markupsafe import Markup

DATASET_GROUP = "datasets"


@dataclass(frozen=True)
class Column:
    """One column of the table: its key in the export records, its header, how it is shown."""

    key: str
    label: str
    numeric: bool = False
    group: str | None = None  # DATASET_GROUP: a per-dataset column, collapsed by default
    title: str = ""
    dataset: str | None = None
    metric: str | None = None


def board_columns(
    board: dict[str, Any], *, metrics: list[str], datasets: list[str]
) -> list[Column]:
    """The columns of `board` (read_leaderboard's JSON): rank, model, owner, date, then (unless
    the task shows ranks only) Dynascore, each metric, the primary interval and each metric on
    each scoring dataset."""
    primary = board["primary_metric"]
    columns = [
        Column(
            "rank",
            "#",
            numeric=True,
            title="rank by the hidden scores"
            if board.get("rank_only")
            else "rank by Dynascore; ≈ tied with the row above",
        ),
        Column("model", "Model"),
        Column("owner", "Owner"),
        Column("submitted", "Submitted", title="when the model was uploaded (UTC)"),
    ]
    if board.get("rank_only"):
        return columns
    columns.append(
        Column(
            "dynascore",
            "Dynascore",
            numeric=True,
            title=f"the weighted combination of the metrics, in units of {primary}",
        )
    )
    columns += [
        Column(m, m, numeric=True, title="average over the scoring datasets", metric=m)
        for m in metrics
    ]
    interval = f"the 95% bootstrap interval of {primary}, the primary metric"
    columns += [
        Column("ci_low", "95% CI low", numeric=True, title=f"low end of {interval}"),
        Column("ci_high", "95% CI high", numeric=True, title=f"high end of {interval}"),
    ]
    columns += [
        Column(
            f"{d}/{m}",
            f"{m} on {d}",
            numeric=True,
            group=DATASET_GROUP,
            title=f"{m} on the hidden dataset {d}",
            dataset=d,
            metric=m,
        )
        for d in datasets
        for m in metrics
    ]
    return columns


def _numbers(row: dict[str, Any], metrics: list[str], cells: list[tuple[str, str]]) -> list[Any]:
    """A row's numeric cells in column order: Dynascore, each metric, the interval's ends, then
    each (dataset, metric) of `cells` (board_columns' order)."""
    averages = row.get("metrics") or {}
    datasets = row.get("datasets") or {}
    ci = row.get("ci") or (None, None)
    return [
        row.get("score"),
        *[averages.get(m) for m in metrics],
        ci[0],
        ci[1],
        *[(datasets.get(d) or {}).get(m) for d, m in cells],
    ]


def _layout(columns: list[Column]) -> tuple[list[str], list[tuple[str, str]]]:
    metrics = [c.metric for c in columns if c.metric is not None and c.dataset is None]
    cells = [(c.dataset, c.metric) for c in columns if c.dataset is not None and c.metric]
    return metrics, cells


RECORD_MARKS = ("submission_id", "baseline", "flagged", "flag_reason", "hidden", "private")


def board_records(board: dict[str, Any], columns: list[Column]) -> list[dict[str, Any]]:
    """The shown rows as flat records (full precision), in the shown order: the exports.
    Keys: the columns' keys (with `tied` after `rank`, and the row's marks after `model`)."""
    rank_only = bool(board.get("rank_only"))
    metrics, cells = _layout(columns)
    numeric = [c.key for c in columns if c.numeric and c.key != "rank"]
    records = []
    for row in board["rows"]:
        created = row.get("created_at")
        record: dict[str, Any] = {"rank": row["rank"]}
        if not rank_only:
            record["tied"] = bool(row.get("tied"))
        record["model"] = row["model"]
        record.update({k: row.get(k, False) for k in RECORD_MARKS})
        record["flag_reason"] = row.get("flag_reason")
        record["owner"] = row.get("owner")
        record["submitted"] = created
        if not rank_only:
            record.update(zip(numeric, _numbers(row, metrics, cells), strict=True))
        records.append(record)
    return records


def records_csv(records: list[dict[str, Any]], columns: list[Column]) -> str:
    """The records as CSV, one header line of the record keys (empty cells for no value).
    Numbers are written at full precision (the shortest text that reads back as the same
    float, as `repr` would), formatted by orjson: a 1,000-row board's 25,000 floats cost
    several times more through `str`."""
    import orjson

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if not records:
        writer.writerow([c.key for c in columns])
        return out.getvalue()
    keys = list(records[0])
    numeric = {c.key for c in columns if c.numeric and c.key != "rank"}
    split = next((i for i, k in enumerate(keys) if k in numeric), len(keys))
    writer.writerow(keys)
    for record in records:
        values = list(record.values())
        head = ["" if v is None else v for v in values[:split]]
        tail = orjson.dumps(values[split:]).decode()[1:-1]
        cells = [] if not tail else ["" if c == "null" else c for c in tail.split(",")]
        writer.writerow(head + cells)
    return out.getvalue()


# The marks after a model's name, in this order (flagged is written with its reason).
MARKS = {
    "baseline": '<span class="mark baseline" title="a reference model">baseline</span>',
    "flagged": "",
    "hidden": '<span class="mark hidden" title="hidden from all but admins">hidden</span>',
    "private": '<span class="mark private" title="only you see this row">private</span>',
    "unsandboxed": '<span class="unsafe" title="run without the sandbox">⚠ unsandboxed</span>',
}


def _num(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}"


def header_html(columns: list[Column]) -> Markup:
    """The header row; per-dataset columns carry the class that collapses them."""
    cells = []
    for c in columns:
        classes = " ".join(x for x in ("num" if c.numeric else "", "ds" if c.group else "") if x)
        attrs = f' class="{classes}"' if classes else ""
        title = f' title="{escape(c.title)}"' if c.title else ""
        cells.append(
            f'<th scope="col"{attrs}{title} data-key="{escape(c.key)}">{escape(c.label)}</th>'
        )
    return Markup("<tr>" + "".join(cells) + "</tr>")


def rows_html(board: dict[str, Any], columns: list[Column]) -> Markup:
    """The body rows. The cells of a column hold what the CSV's column holds, formatted."""
    rank_only = bool(board.get("rank_only"))
    metrics, cells = _layout(columns)
    fast: str | None = None
    out: list[str] = []
    for row in board["rows"]:
        sid = escape(row["submission_id"])
        if any(row.get(name) for name in MARKS):
            classes = [
                name
                for name, on in (
                    ("tied", row.get("tied")),
                    ("baseline", row.get("baseline")),
                    ("flagged", row.get("flagged")),
                    ("hidden-row", row.get("hidden")),
                )
                if on
            ]
            marks = [MARKS[name] for name in MARKS if row.get(name) and name != "flagged"]
            if row.get("flagged"):
                reason = escape(row.get("flag_reason") or "flagged by an admin")
                marks.insert(
                    1 if row.get("baseline") else 0,
                    f'<span class="mark flagged" title="{reason}">⚑ flagged: {reason}</span>',
                )
        else:  # most rows: no mark
            classes = ["tied"] if row.get("tied") else []
            marks = []
        tie = (
            ' <span class="tie" title="not significantly different from the row above">≈</span>'
            if row.get("tied") and not rank_only
            else ""
        )
        created = row.get("created_at") or ""
        html = [
            f'<td class="num">{row["rank"]}{tie}</td>',
            f'<td><a href="/submissions/{sid}">{escape(row["model"])}</a>'
            + ("".join(" " + m for m in marks))
            + "</td>",
            f"<td>{escape(row.get('owner') or '')}</td>",
            f'<td><time datetime="{escape(created)}">{escape(created[:10])}</time></td>',
        ]
        if not rank_only:
            values = _numbers(row, metrics, cells)
            if fast is None:
                fast = "<td>{:.4f}</td>" * len(values)
            # One format call per row where every value is a plain number (nearly always).
            if None not in values and max(map(abs, values), default=0) < 1000:
                html.append(fast.format(*values))
            else:
                html.append(
                    "".join(
                        "<td>\u2013</td>" if v is None else f"<td>{_num(v)}</td>" for v in values
                    )
                )
        cls = f' class="{" ".join(classes)}"' if classes else ""
        out.append(f'<tr data-submission="{sid}"{cls}>' + "".join(html) + "</tr>")
    return Markup("\n".join(out))
