"""Human output: the leaderboard table stays readable on an ordinary terminal."""

from __future__ import annotations

import pytest
from rich.console import Console

from cli import render
from cli.leaderboard import leaderboard_table

BOARD = {
    "task": "digits",
    "rows": [
        {
            "rank": 1,
            "model": "digits-cnn-with-a-long-name",
            "owner": "demo",
            "score": 0.8011,
            "metrics": {"accuracy": 0.9704, "macro_f1": 0.9703, "robustness": 0.9644},
            "ci": [0.955, 0.984],
        },
        {
            "rank": 2,
            "tied": True,
            "model": "digits-linear",
            "owner": "demo",
            "score": 0.7381,
            "metrics": {"accuracy": 0.8948, "macro_f1": 0.8911, "robustness": 0.9644},
            "ci": [0.865, 0.924],
        },
    ],
}


def test_names_headers_and_intervals_are_whole_at_80_columns() -> None:
    console = Console(width=80, record=True, color_system=None)
    console.print(leaderboard_table(BOARD))
    text = console.export_text()
    assert all(len(line) <= 80 for line in text.splitlines())
    for whole in ("digits-linear", "robustness", "macro_f1"):
        assert whole in text, text
    # A name longer than its column wraps onto the next line, whole.
    assert "digits-cnn-with-a-long-name" in "".join(
        line[4:21].strip() for line in text.splitlines()
    )
    assert "…" not in text
    assert "2 ≈" in text  # a tie with the row above is marked
    assert "0.9550" in text and "0.9840]" in text


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0, "0.0 ms"),
        (0.0025, "2.5 ms"),
        (0.00999, "9.9 ms"),
        (0.29, "290 ms"),
        (0.9999, "999 ms"),
        (1, "1.0 s"),
        (1.25, "1.2 s"),
        (59.99, "59.9 s"),
        (60, "1 min"),
        (243.3, "4 min 3 s"),
        (3599.9, "59 min 59 s"),
        (3600, "1 h"),
        (3660, "1 h 1 min"),
        (86316, "23 h 58 min"),
        (86399, "23 h 59 min"),
        (86400, "1 d"),
        (2 * 86400 + 3 * 3600 + 59, "2 d 3 h"),
        (-5, "0.0 ms"),
        (None, "-"),
        (float("nan"), "-"),
    ],
)
def test_durations_in_words_cut_down_at_every_boundary(seconds: float | None, shown: str) -> None:
    assert render.fmt_seconds(seconds) == shown


def test_times_are_utc_to_the_minute_and_sizes_have_units() -> None:
    assert render.fmt_time("2026-12-06T09:01:59.123456+01:00") == "2026-12-06 08:01 UTC"
    assert render.fmt_time("2026-12-06T08:01:59.123456") == "2026-12-06 08:01 UTC"
    assert render.fmt_duration("2026-12-06T08:00:00+00:00", "2026-12-06T08:04:03.5+00:00") == (
        "4 min 3 s"
    )
    assert render.fmt_bytes(512) == "512 B"
    assert render.fmt_bytes(3_565_158) == "3.4 MiB"


def test_printable_shows_every_control_and_keeps_ordinary_text() -> None:
    assert render.printable("naïve 模型 😀 [bold]x[/]") == "naïve 模型 😀 [bold]x[/]"
    assert render.printable("\x1b]0;t\x07\x1b[2J\r\n\t\x7f\x9b\u202e\u2066\ud800") == (
        "\\x1b]0;t\\x07\\x1b[2J\\r\\n\\t\\x7f\\x9b\\u202e\\u2066\\ud800"
    )
    assert render.printable("a\r\nb\tc\rd\x1b", keep_lines=True) == "a\nb\tc\\rd\\x1b"


def test_the_notes_say_when_the_stored_board_is_being_updated() -> None:
    from cli.leaderboard import leaderboard_notes

    board = {"rows": [], "board": {"stale": True, "updated_at": "2026-12-06T09:00:00+00:00"}}
    assert "being updated; shown as it was at 2026-12-06 09:00:00 UTC" in str(
        leaderboard_notes(board)
    )
    assert "being updated" not in str(leaderboard_notes({"rows": [], "board": {"stale": False}}))
