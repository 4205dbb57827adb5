"""`tasks` (what can be weighed) and `leaderboard` (how the submissions rank)."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

import typer

from cli import render
from cli.client import Client
from cli.errors import reports_errors
from cli.leaderboard import leaderboard_notes, leaderboard_view

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]


def parse_weights(value: str | None) -> str | None:
    """Check `metric=w,...` here, so a typo is a usage error and not a server round trip."""
    if value is None:
        return None
    pairs = []
    for item in value.split(","):
        name, sep, weight = item.strip().partition("=")
        if not sep or not name.strip():
            raise typer.BadParameter(f"{item.strip()!r} is not metric=weight")
        try:
            number = float(weight)
        except ValueError:
            raise typer.BadParameter(f"the weight of {name.strip()!r} is not a number") from None
        if number < 0:
            raise typer.BadParameter(f"the weight of {name.strip()!r} is negative")
        pairs.append(f"{name.strip()}={weight.strip()}")
    return ",".join(pairs)


@reports_errors
def tasks(json_output: JsonOption = False) -> None:
    """List the tasks with their metrics and datasets."""
    with Client.from_login(need_token=False) as client:
        answer = client.get("/tasks")
    if json_output:
        render.print_json(answer)
        return
    rows = answer.get("tasks", [])
    if not rows:
        render.note("the server has no tasks (add task_configs/<task>.toml and restart it)")
        return
    render.stdout().print(render.tasks_table(rows))


@reports_errors
def leaderboard(
    task: Annotated[str, typer.Argument(help="The task's slug (see `weighbridge tasks`).")],
    weights: Annotated[
        str | None,
        typer.Option(
            "--weights",
            help="Your own metric weights, e.g. accuracy=2,macro_f1=1.",
            callback=parse_weights,
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Rank the task's submissions (by its weights, or by yours)."""
    params = {"weights": weights} if weights else None
    with Client.from_login(need_token=False) as client:
        board = client.get(f"/tasks/{quote(task, safe='')}/leaderboard", params=params)
    if json_output:
        render.print_json(board)
        return
    if not board.get("rows"):
        render.note(f"no ranked submissions for {task} yet")
        if board.get("unranked"):
            render.stdout().print(leaderboard_notes(board))
        return
    render.stdout().print(leaderboard_view(board))
