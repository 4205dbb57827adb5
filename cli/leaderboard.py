"""The leaderboard as people read it: the ranked table and what its numbers mean."""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from cli.render import add_row, as_number, fmt_value, plain, printable


def leaderboard_table(board: dict[str, Any]) -> Table:
    rows = board.get("rows") or []
    metric_names: list[str] = []
    for row in rows:
        for name in row.get("metrics") or {}:
            if name not in metric_names:
                metric_names.append(name)
    unsafe = any(row.get("unsandboxed") for row in rows)
    table = Table(
        title=f"leaderboard: {printable(board.get('task', ''))}",
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
    longest = max((len(printable(row.get("model") or "-")) for row in rows), default=5)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("model", min_width=min(longest, 16), overflow="fold")
    table.add_column("owner", overflow="fold")
    # A rank-only task (a blind phase) has no scores to show: ranks and names only.
    scored = not board.get("rank_only")
    if scored:
        table.add_column("score", justify="right", style="bold", overflow="fold")
        for name in metric_names:
            table.add_column(printable(name), justify="right", overflow="fold")
        table.add_column("95% CI", justify="right", min_width=8, overflow="fold")
    for row in rows:
        ci = row.get("ci")
        rank = f"{row.get('rank', '-')}{' ≈' if row.get('tied') else ''}"
        metrics = row.get("metrics") or {}
        model = plain(row.get("model"))
        if row.get("unsandboxed"):
            model.append(" ⚠ unsandboxed")
        if row.get("baseline"):
            model.append(" (baseline)")
        if row.get("flagged"):
            model.append(f" ⚑ flagged: {printable(row.get('flag_reason') or '-')}")
        values = (
            [
                fmt_value(row.get("score")),
                *(fmt_value(metrics.get(name)) for name in metric_names),
                f"[{fmt_value(ci[0])}, {fmt_value(ci[1])}]" if ci else "-",
            ]
            if scored
            else []
        )
        add_row(table, rank, model, plain(row.get("owner")), *values)
    return table


def leaderboard_notes(board: dict[str, Any]) -> Text:
    """What the numbers under the leaderboard mean: the score, the interval, ≈, who is missing."""
    rows = board.get("rows") or []
    metrics = [name for row in rows for name in (row.get("metrics") or {})]
    primary = printable(board.get("primary_metric") or (metrics[0] if metrics else "the primary"))
    weights = board.get("weights") or {}
    used = ", ".join(
        f"{printable(name)} {w:g}" for name, w in weights.items() if as_number(w) is not None
    )
    lines = []
    if rows and board.get("rank_only"):
        lines.append(
            "ranks only: this task is in a blind phase; its scores are hidden until it ends."
        )
    elif rows:
        lines.append(
            "score: the Dynascore, the weighted combination of the task's metrics"
            + (f" (weights {used}, scaled to sum 1)" if used else "")
            + f", each averaged over the hidden datasets and converted to units of {primary}; "
            "higher is better."
        )
        lines.append(f"95% CI: the confidence interval of {primary}, the primary metric.")
    tied = [row for row in rows if row.get("tied")]
    if tied:
        tested = [row.get("pvalue") is not None for row in tied]
        how = []
        if any(tested):
            how.append("a paired bootstrap test on the same examples gives p ≥ 0.05")
        if not all(tested):
            how.append(f"the {primary} intervals overlap or the scores are equal")
        lines.append(f"≈: not significantly different from the row above ({' or '.join(how)}).")
    stored = board.get("board") or {}
    if stored.get("stale"):
        when = printable(str(stored.get("updated_at") or ""))[:19].replace("T", " ")
        lines.append(
            "the leaderboard is being updated"
            + (f"; shown as it was at {when} UTC." if when else ".")
        )
    for row in board.get("unranked") or []:
        lines.append(
            f"not ranked: {printable(row.get('model') or row.get('submission_id') or '-')} "
            f"({printable(row.get('owner') or '-')}): {printable(row.get('reason') or '-')}"
        )
    return Text("\n".join(lines), style="dim")


def leaderboard_view(board: dict[str, Any]) -> RenderableType:
    """The ranked table and, under it, what its numbers mean."""
    return Group(leaderboard_table(board), Text(""), leaderboard_notes(board))
