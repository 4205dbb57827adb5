"""The leaderboard table's HTML rows and CSV hold the same values: full precision in the CSV,
an empty cell (a dash on the page) where a row has no value, large numbers grouped."""

from __future__ import annotations

import csv
import io

from web.boardtable import board_columns, board_records, records_csv, rows_html

BOARD = {
    "primary_metric": "accuracy",
    "rank_only": False,
    "rows": [
        {
            "rank": 1,
            "model": "<b>first</b>",
            "submission_id": "a" * 32,
            "owner": "ada",
            "created_at": "2026-12-01T10:00:00+00:00",
            "score": 0.1 + 0.2,
            "metrics": {"accuracy": 0.1 + 0.2, "latency_ms": 12345.678},
            "ci": [0.25, 0.35],
            "tied": False,
            "datasets": {"test": {"accuracy": 1 / 3, "latency_ms": 12345.678}},
        },
        {
            "rank": 2,
            "model": "second",
            "submission_id": "b" * 32,
            "owner": "bob",
            "created_at": "2026-12-02T10:00:00+00:00",
            "score": 0.25,
            "metrics": {"accuracy": 0.25, "latency_ms": 3.5},
            "ci": None,
            "tied": True,
            "flagged": True,
            "flag_reason": 'said "trust me"',
            "datasets": {"test": {"accuracy": 0.25}},
        },
    ],
}


def test_csv_keeps_full_precision_and_empty_cells_and_html_shows_them_formatted() -> None:
    columns = board_columns(BOARD, metrics=["accuracy", "latency_ms"], datasets=["test"])
    records = list(csv.DictReader(io.StringIO(records_csv(board_records(BOARD, columns), columns))))
    assert [r["model"] for r in records] == ["<b>first</b>", "second"]
    assert float(records[0]["dynascore"]) == 0.1 + 0.2  # the same float, not a rounding
    assert float(records[0]["test/accuracy"]) == 1 / 3
    assert records[0]["latency_ms"] == "12345.678"
    assert records[1]["ci_low"] == "" and records[1]["test/latency_ms"] == ""
    assert records[1]["tied"] == "True" and records[1]["flag_reason"] == 'said "trust me"'

    html = str(rows_html(BOARD, columns))
    first, second = html.split("\n")
    assert "&lt;b&gt;first&lt;/b&gt;" in first and "<b>" not in first
    assert "<td>0.3000</td>" in first and "<td>12,346</td>" in first
    assert "<td>0.3333</td>" in first
    assert second.count("<td>\u2013</td>") == 3  # the interval's two ends, latency on test
    assert "≈" in second and "⚑ flagged: said &quot;trust me&quot;" in second
