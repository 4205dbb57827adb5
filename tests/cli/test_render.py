"""Human output: the leaderboard table stays readable on an ordinary terminal."""

from __future__ import annotations

from rich.console import Console

from cli import render

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
    console.print(render.leaderboard_table(BOARD))
    text = console.export_text()
    assert all(len(line) <= 80 for line in text.splitlines())
    for whole in ("digits-linear", "robustness", "macro_f1"):
        assert whole in text, text
    # A name longer than its column wraps onto the next line, whole.
    assert "digits-cnn-with-a-long-name" in "".join(
        line[4:21].strip() for line in text.splitlines()
    )
    assert "…" not in text
    assert "2=" in text  # a tie with the row above is marked
    assert "0.9550" in text and "0.9840]" in text
