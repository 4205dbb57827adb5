"""`weighbridge inspect REQUEST.json`: an Amun inspection request sent, and optionally followed.

The file is Amun's InspectionSpecification as JSON (only `base` is required). It is read and
checked for JSON syntax here, so a typo is named with its line before anything is sent; the
server checks the fields and names the one it refuses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.table import Table
from rich.text import Text

from cli import render
from cli.client import ApiError, Client
from cli.errors import UsageError, reports_errors
from cli.submissions import IntervalOption, JsonOption
from cli.timeline import follow, submission_path

MAX_REQUEST_BYTES = 16 * 1024 * 1024  # the server's limit (core.inspections)


def read_request(path: Path) -> dict[str, Any]:
    """The request file's JSON object; UsageError naming the file (and line) otherwise."""
    if not path.is_file():
        raise UsageError(f"{path} is not a file", hint="give the path of an inspection request")
    if path.stat().st_size > MAX_REQUEST_BYTES:
        raise UsageError(f"{path} is larger than {render.fmt_bytes(MAX_REQUEST_BYTES)}")
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg})",
            hint='an inspection request is a JSON object, e.g. {"base": "python:3.11", '
            '"script": "print(1)"}',
        ) from None
    if not isinstance(body, dict):
        raise UsageError(f"{path} holds JSON, but not an object with at least 'base'")
    return body


def _inspection_path(inspection_id: str, suffix: str) -> str:
    return f"/inspections/{quote(inspection_id, safe='')}{suffix}"


def fetch_results(client: Client, inspection_id: str, batch_size: int) -> list[dict[str, Any]]:
    """Each item's result (Amun's shape); an item that stored none is `{"item", "error"}`."""
    out = []
    for item in range(batch_size):
        try:
            answer = client.get(_inspection_path(inspection_id, f"/job/{item}/result"))
        except ApiError as exc:
            if exc.status not in (404, 409):
                raise
            out.append({"item": item, "error": exc.message})
            continue
        out.append({"item": item, **answer["result"]})
    return out


def results_table(results: list[dict[str, Any]]) -> Table:
    table = Table(title="runs", title_justify="left")
    for column in ("item", "exit", "took", "max RSS", "user s", "system s", "stdout"):
        table.add_column(column, overflow="fold")
    for result in results:
        if "error" in result:
            render.add_row(table, str(result["item"]), "", "", "", "", "", result["error"])
            continue
        usage = result.get("usage") or {}
        maxrss = usage.get("ru_maxrss")
        stdout = result.get("stdout")
        text = json.dumps(stdout) if not isinstance(stdout, str) else stdout.strip()
        render.add_row(
            table,
            str(result["item"]),
            render.fmt_value(result.get("exit_code")),
            render.fmt_duration(result.get("start_datetime"), result.get("end_datetime")),
            render.fmt_bytes(int(maxrss) * 1024) if isinstance(maxrss, int | float) else "",
            render.fmt_value(usage.get("ru_utime")),
            render.fmt_value(usage.get("ru_stime")),
            render.printable(text[:200]),
        )
    return table


@reports_errors
def inspect(
    request: Annotated[
        Path, typer.Argument(help="An Amun inspection request (JSON; only 'base' is required).")
    ],
    wait: Annotated[
        bool,
        typer.Option("--wait", help="Follow it until done and show each run; exit 1 if it fails."),
    ] = False,
    json_output: JsonOption = False,
    interval: IntervalOption = 1.0,
) -> None:
    """Run an Amun-style inspection: build its environment, run its script batch_size times,
    and record hardware info and process usage for every run."""
    body = read_request(request)
    show = not json_output
    with Client.from_login() as client:
        answer = client.post("/inspections", json=body)
        inspection_id = str(answer["inspection_id"])
        batch_size = int((answer.get("parameters") or {}).get("batch_size") or 1)
        summary = {"id": inspection_id, "status": answer.get("status"), **answer}
        if show:
            render.stdout().print(
                f"inspection [bold]{inspection_id}[/] queued ({batch_size} run"
                f"{'s' if batch_size != 1 else ''})",
                soft_wrap=True,
            )
        if not wait:
            if json_output:
                render.print_json(summary)
            else:
                render.note(f"follow it with: weighbridge status {inspection_id} --watch")
            return
        submission = client.get(submission_path(inspection_id))
        if show:
            for event in submission.get("events") or []:
                render.stdout().print(render.event_line(event))
        final = follow(client, submission, show=show, interval=interval)
        ended = final.get("status") in ("done", "failed")
        results = fetch_results(client, inspection_id, batch_size) if ended else []
    if json_output:
        render.print_json({**final, "inspection_id": inspection_id, "results": results})
    else:
        console = render.stdout()
        line = Text(f"inspection {render.printable(inspection_id)} is ")
        line.append_text(render.status_text(final.get("status")))
        console.print(line)
        if final.get("error"):
            console.print(render.error_text(final["error"]))
        if results:
            console.print(results_table(results))
            where = f"/api/v1/inspections/{inspection_id}/job/N/result"
            console.print(Text(f"each run in full: GET {where} (N from 0)", "dim"))
    if final.get("status") in ("failed", "cancelled"):
        raise typer.Exit(1)
