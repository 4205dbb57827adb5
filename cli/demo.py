"""`weighbridge up --demo`: prepare data, upload the shipped examples of every task, rank, show.

Runs beside the API in the same process and event loop, so everything here is async; the
uploads go through the HTTP API like any user's.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from cli import render
from cli.leaderboard import leaderboard_view
from core.context import Services

# The shipped examples the demo uploads, with their task (each is evaluated by its task's
# fleet, all of which `up` serves); a task that is not loaded is left out.
UPLOADS: tuple[tuple[str, str], ...] = (
    ("digits", "digits-linear"),
    ("digits", "digits-cnn"),
    ("sentiment", "sentiment-bow"),
    ("qa", "qa-span"),
    ("translation", "translation-lexicon"),
)
# The task the closing hints name.
TASK = "digits"
DEMO_USER = "demo"
DEMO_EMAIL = "demo@weighbridge.local"
STEPS = ("uploaded", "building", "built", "evaluating", "done")
FINISHED = ("done", "failed", "cancelled")


class DemoError(Exception):
    """The demo cannot go on; the message says why and what to do."""


async def demo_token(services: Services) -> str:
    """A fresh API token for the `demo` user (created on first use; tokens are never stored)."""
    from core.accounts import create_user, get_user, issue_token

    async with services.db.session() as session:
        user = await get_user(session, DEMO_USER)
        if user is None:
            _, token = await create_user(session, DEMO_USER, email=DEMO_EMAIL)
            return token
        return await issue_token(session, user, label="demo")


def example_folders(tasks: Collection[str] | None = None) -> dict[str, tuple[str, Path]]:
    """The shipped examples the demo uploads (of `tasks`, default all): name -> (task, folder)."""
    from core.examples import example_folder

    folders = {
        name: (task, example_folder(name))
        for task, name in UPLOADS
        if tasks is None or task in tasks
    }
    # Every example holds its handler and the trained weights beside it.
    missing = [
        f"{folder}/"
        for _, folder in folders.values()
        if not any(p.is_file() and p.name != "handler.py" for p in folder.iterdir())
    ]
    if missing:
        raise DemoError(
            f"the example weights are missing ({', '.join(missing)}): reinstall Weighbridge, "
            "or make them with `python -m core.examples.train_digits` (digits), "
            "`python -m core.examples.train_text` (sentiment, qa) or "
            "`python -m core.examples.train_translation` (translation)"
        )
    return folders


async def _mine(client: httpx.AsyncClient, task: str) -> dict[str, dict[str, Any]]:
    """The demo user's live (not failed or cancelled) submissions to `task` by name, newest
    first."""
    response = await client.get("/api/v1/submissions", params={"task": task, "limit": 200})
    _check(response, "listing the demo's submissions")
    found: dict[str, dict[str, Any]] = {}
    for item in response.json()["submissions"]:
        if item["status"] not in ("failed", "cancelled"):
            found.setdefault(item["name"], item)
    return found


async def upload_folder(
    client: httpx.AsyncClient, folder: Path, *, name: str, task: str = TASK
) -> dict[str, Any]:
    """Pack `folder` into a .tar.gz and stream it to POST /api/v1/submissions."""
    from cli.bundle import pack_folder

    with tempfile.TemporaryDirectory(prefix="weighbridge-demo-") as tmp:
        archive = Path(tmp) / f"{name}.tar.gz"
        await asyncio.to_thread(pack_folder, folder, archive)
        with archive.open("rb") as handle:
            response = await client.post(
                "/api/v1/submissions",
                data={"task": task, "name": name, "kind": "model", "private": "false"},
                files={"file": (archive.name, handle, "application/gzip")},
            )
    _check(response, f"uploading {name}")
    return response.json()


def _check(response: httpx.Response, doing: str) -> None:
    if response.is_success:
        return
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:500]
    raise DemoError(f"{doing}: the API answered {response.status_code}: {message}")


async def wait_until_finished(
    client: httpx.AsyncClient,
    submissions: dict[str, str],
    console: Console,
    *,
    timeout_seconds: float,
    poll_seconds: float = 1.0,
) -> dict[str, dict[str, Any]]:
    """Poll each submission until it is done, failed or cancelled; show progress bars."""
    final: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_seconds
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.fields[name]:<20}"),
        BarColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        bars = {
            sid: progress.add_task("", total=len(STEPS) - 1, name=name, status="uploaded")
            for name, sid in submissions.items()
        }
        while len(final) < len(submissions):
            for name, sid in submissions.items():
                if name in final:
                    continue
                response = await client.get(f"/api/v1/submissions/{sid}")
                _check(response, f"reading {name}")
                record = response.json()
                status = record["status"]
                step = STEPS.index(status) if status in STEPS else 0
                progress.update(bars[sid], completed=step, status=status)
                if status in FINISHED:
                    final[name] = record
            if len(final) == len(submissions):
                break
            if time.monotonic() > deadline:
                waiting = ", ".join(n for n in submissions if n not in final)
                raise DemoError(
                    f"{waiting} did not finish within {timeout_seconds:g} s; follow them with "
                    "`weighbridge status ID --watch`"
                )
            await asyncio.sleep(poll_seconds)
    return final


# How long the demo waits for the stored leaderboard to take in the submissions just done.
BOARD_WAIT_SECONDS = 30.0


async def settled_board(client: httpx.AsyncClient, ids: set[str], task: str = TASK) -> dict:
    """The task's leaderboard once it is rebuilt with `ids` in it: the board is stored and
    rebuilt in the background after a submission finishes, so right after it may not show it
    yet."""
    deadline = asyncio.get_running_loop().time() + BOARD_WAIT_SECONDS
    while True:
        response = await client.get(f"/api/v1/tasks/{task}/leaderboard")
        _check(response, "reading the leaderboard")
        board = response.json()
        shown = {r["submission_id"] for r in [*board["rows"], *board.get("unranked", [])]}
        settled = not (board.get("board") or {}).get("stale")
        if (settled and ids <= shown) or asyncio.get_running_loop().time() > deadline:
            return board
        await asyncio.sleep(0.25)


async def run_demo(
    services: Services,
    base_url: str,
    *,
    console: Console | None = None,
    timeout_seconds: float = 900.0,
) -> None:
    """Prepare the datasets, upload the shipped examples of every loaded task, show the
    leaderboards."""
    from core.datasets import prepare_datasets

    console = console or Console()
    # The demo's own polling would otherwise fill the server's log, one line per request.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    console.rule("Weighbridge demo")
    tasks = [t for t in dict.fromkeys(task for task, _ in UPLOADS) if t in services.tasks]
    if not tasks:
        wanted = ", ".join(repr(t) for t in dict.fromkeys(task for task, _ in UPLOADS))
        console.print(
            f"[yellow]The demo needs one of the tasks {wanted}, none of which is among the "
            f"loaded task configs ({services.settings.task_configs}); skipping the demo.[/]"
        )
        return
    try:
        prepared = await prepare_datasets(services)
        console.print(f"Datasets ready: {len(prepared)} across {len(services.tasks)} task(s)")
        token = await demo_token(services)
        folders = example_folders(tasks)
        headers = {"Authorization": f"Bearer {token}"}
        timeout = httpx.Timeout(60.0, connect=10.0)
        async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout) as client:
            existing = {task: await _mine(client, task) for task in tasks}
            ids: dict[str, str] = {}
            for name, (task, folder) in folders.items():
                if name in existing[task]:
                    ids[name] = existing[task][name]["id"]
                    console.print(f"Reusing {name}: submission {ids[name]}", highlight=False)
                    continue
                summary = await upload_folder(client, folder, name=name, task=task)
                ids[name] = summary["id"]
                console.print(f"Uploaded {name}: submission {ids[name]}", highlight=False)
            final = await wait_until_finished(client, ids, console, timeout_seconds=timeout_seconds)
            for name, record in final.items():
                if record["status"] != "done":
                    error = record.get("error") or {}
                    console.print(
                        Text(f"{name} {record['status']}", style="red"),
                        render.plain(f"at {error.get('stage')}: {error.get('reason')}")
                        if error
                        else "",
                    )
            done = {r["id"] for r in final.values() if r["status"] == "done"}
            for task in tasks:
                mine = {ids[name] for name, (of, _) in folders.items() if of == task}
                board = await settled_board(client, done & mine, task)
                console.print(leaderboard_view(board))
    except DemoError as exc:
        console.print(
            Text("Demo stopped:", style="red"), Text(render.printable(exc, keep_lines=True))
        )
        return
    # soft_wrap: a token or command cut in two by the terminal width cannot be pasted.
    console.print(
        f"\nThe demo user is [bold]{DEMO_USER}[/]; its token (shown once):\n  {token}\n"
        f"Log in with it:\n  weighbridge login --url {base_url} --token {token}\n"
        f"Then try:\n  weighbridge leaderboard {tasks[0]}\n  weighbridge status\n"
        f"  weighbridge init my-model --task {tasks[0]}",
        soft_wrap=True,
        highlight=False,
    )
