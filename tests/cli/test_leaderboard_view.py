"""`weighbridge leaderboard`'s table for a rank-only task and for marked rows."""

from __future__ import annotations

from rich.console import Console

from cli.leaderboard import leaderboard_view


def render(board: dict) -> str:
    console = Console(width=120, record=True, color_system=None)
    console.print(leaderboard_view(board))
    return console.export_text()


def test_a_rank_only_board_shows_ranks_and_names_without_score_columns() -> None:
    board = {
        "task": "blind",
        "primary_metric": "accuracy",
        "weights": {"accuracy": 4.0},
        "rank_only": True,
        "rows": [
            {"rank": 1, "model": "first", "submission_id": "a" * 32, "owner": "ada"},
            {"rank": 2, "model": "second", "submission_id": "b" * 32, "owner": "bob"},
        ],
        "unranked": [],
    }
    text = render(board)
    assert "first" in text and "second" in text
    assert "score" not in text.split("ranks only")[0] and "95% CI" not in text
    assert "ranks only: this task is in a blind phase" in text


def test_baselines_and_flags_are_marked() -> None:
    row = {"rank": 1, "submission_id": "a" * 32, "owner": "org", "score": 0.9}
    board = {
        "task": "toy",
        "primary_metric": "accuracy",
        "weights": {"accuracy": 4.0},
        "rows": [
            {**row, "model": "majority", "baseline": True, "metrics": {"accuracy": 0.9}},
            {**row, "rank": 2, "model": "copy", "flagged": True, "flag_reason": "a copy of v1"},
        ],
        "unranked": [],
    }
    text = render(board)
    assert "majority (baseline)" in text
    assert "copy ⚑ flagged: a copy of v1" in text
    assert "score" in text
