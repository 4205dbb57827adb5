"""Commands on submissions: upload, status, results, logs, cancel."""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import httpx
import typer
from rich.markup import escape
from rich.text import Text

from cli import render
from cli.bundle import bundle_name, check_bundle, folder_bytes, pack_folder
from cli.client import ApiError, Client, error_from_response
from cli.errors import CliError, UsageError, reports_errors
from cli.multipart import MultipartBody
from cli.timeline import follow, resolve_id, submission_path

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
IdArgument = Annotated[
    str,
    typer.Argument(help="The submission's id, or `last` for your latest.", show_default=False),
]
IntervalOption = Annotated[
    float, typer.Option("--interval", min=0.05, hidden=True, help="Seconds between polls.")
]
# The server may take a while to store and hash a large bundle once the last byte is in.
UPLOAD_TIMEOUT = httpx.Timeout(60.0, connect=10.0, read=600.0)


def _exit_for(submission: dict[str, Any]) -> None:
    """Exit 1 when a watched submission ended badly (the contract for --wait / --watch)."""
    status = submission.get("status")
    if status in ("failed", "cancelled"):
        raise typer.Exit(1)


def _print_final(submission: dict[str, Any]) -> None:
    console = render.stdout()
    status = submission.get("status")
    line = Text(f"submission {render.printable(submission.get('id'))} is ")
    line.append_text(render.status_text(status))
    console.print(line)
    if submission.get("error"):
        console.print(render.error_text(submission["error"]))
    if status == "done":
        console.print(
            Text(f"scores: weighbridge results {render.printable(submission.get('id'))}", "dim")
        )


def _pack(folder: Path, workdir: Path, *, show: bool) -> Path:
    dest = workdir / f"{folder.resolve().name or 'bundle'}.tar.gz"
    with render.transfer_progress(enabled=show) as progress:
        job = progress.add_task(f"packing {folder.name or folder}", total=folder_bytes(folder))
        pack_folder(folder, dest, on_progress=lambda n: progress.advance(job, n))
    return dest


def _send(client: Client, body: MultipartBody, *, show: bool) -> dict[str, Any]:
    with render.transfer_progress(enabled=show) as progress:
        job = progress.add_task(f"uploading {body.path.name}", total=body.length)
        body.on_chunk = lambda n: progress.advance(job, n)
        try:
            return client.post(
                "/submissions", content=iter(body), headers=body.headers(), timeout=UPLOAD_TIMEOUT
            )
        except ApiError:
            raise
        except CliError as exc:
            raise CliError(
                f"the upload did not finish: {exc.message}",
                hint="the server may have refused it part way (size or submission limits); "
                "check `weighbridge tasks` and try again",
            ) from None


@reports_errors
def upload(
    path: Annotated[
        Path, typer.Argument(help="A model folder, or a .tar.gz, .zip or .mar of one.")
    ],
    task: Annotated[str, typer.Option("--task", help="The task to weigh it on.")],
    name: Annotated[
        str | None, typer.Option("--name", help="Its name on the leaderboard (default: PATH's).")
    ] = None,
    private: Annotated[
        bool, typer.Option("--private", help="Only you (and admins) see it.")
    ] = False,
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow it until done; exit 1 if it fails.")
    ] = False,
    no_check: Annotated[
        bool,
        typer.Option(
            "--no-check",
            help="Send without first running the handler on the public examples (as `test`).",
        ),
    ] = False,
    json_output: JsonOption = False,
    interval: IntervalOption = 1.0,
) -> None:
    """Upload a model bundle (streamed; a folder is packed into a .tar.gz first).

    The handler is first run on the task's public examples in the sandbox, as `weighbridge
    test` does; a bundle that fails is not sent (--no-check skips this).
    """
    from cli.models import check_before_upload

    path = check_bundle(path)
    show = not json_output
    with Client.from_login() as client, contextlib.ExitStack() as stack:
        # Asking first turns an unknown task into a clear answer before any byte is sent.
        client.get(f"/tasks/{quote(task, safe='')}")
        if not no_check:
            check_before_upload(path, task, show=show)
        archive = path
        if path.is_dir():
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="weighbridge-")))
            archive = _pack(path, workdir, show=show)
        fields = [
            ("task", task),
            ("name", name or bundle_name(path.resolve())),
            ("kind", "model"),
            ("private", "true" if private else "false"),
        ]
        summary = _send(client, MultipartBody(fields, path=archive), show=show)
        if show:
            render.stdout().print(
                f"uploaded [bold]{escape(render.printable(summary.get('name')))}[/] to "
                f"[bold]{escape(task)}[/] as [bold]{summary.get('id')}[/] "
                f"({render.fmt_bytes(summary.get('bytes'))})",
                soft_wrap=True,
            )
        if not wait:
            if json_output:
                render.print_json(summary)
            else:
                render.note(f"follow it with: weighbridge status {summary.get('id')} --watch")
            return
        submission = client.get(submission_path(summary["id"]))
        if show:
            for event in submission.get("events") or []:
                render.stdout().print(render.event_line(event))
        final = follow(client, submission, show=show, interval=interval)
    if json_output:
        render.print_json(final)
    else:
        _print_final(final)
    _exit_for(final)


@reports_errors
def status(
    submission_id: Annotated[
        str | None,
        typer.Argument(
            help="A submission's id (or `last`, your latest); without it, your recent ones."
        ),
    ] = None,
    watch: Annotated[
        bool,
        typer.Option("--watch", help="Follow the timeline until it ends; exit 1 if it fails."),
    ] = False,
    task: Annotated[str | None, typer.Option("--task", help="Only this task's.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=200)] = 20,
    everyone: Annotated[
        bool, typer.Option("--all", help="Everyone's public submissions too.")
    ] = False,
    json_output: JsonOption = False,
    interval: IntervalOption = 1.0,
) -> None:
    """One submission's timeline, or a table of your recent submissions."""
    if submission_id is None:
        if watch:
            raise UsageError("--watch needs a submission id")
        params: dict[str, Any] = {"limit": limit}
        if task:
            params["task"] = task
        if everyone:
            params["all"] = "true"
        with Client.from_login() as client:
            answer = client.get("/submissions", params=params)
        if json_output:
            render.print_json(answer)
        elif not answer.get("submissions"):
            render.note("no submissions yet; upload one with `weighbridge upload PATH --task T`")
        else:
            render.stdout().print(render.submissions_table(answer["submissions"]))
        return
    with Client.from_login(need_token=False) as client:
        submission_id = resolve_id(client, submission_id)
        submission = client.get(submission_path(submission_id))
        if not json_output:
            render.stdout().print(render.submission_view(submission))
            if submission.get("children"):
                render.stdout().print(render.family_table(submission["children"]))
        if not watch:
            if json_output:
                render.print_json(submission)
            return
        final = follow(client, submission, show=not json_output, interval=interval)
    if json_output:
        render.print_json(final)
    else:
        _print_final(final)
    _exit_for(final)


@reports_errors
def results(submission_id: IdArgument, json_output: JsonOption = False) -> None:
    """The scores, metrics and runs of a submission."""
    with Client.from_login(need_token=False) as client:
        submission_id = resolve_id(client, submission_id)
        answer = client.get(submission_path(submission_id, "/results"))
    if json_output:
        render.print_json(answer)
        return
    console = render.stdout()
    line = Text(f"submission {render.printable(answer.get('id'))} is ")
    line.append_text(render.status_text(answer.get("status")))
    console.print(line)
    if answer.get("scores"):
        console.print(render.scores_table(answer["scores"]))
    else:
        unfinished = answer.get("status") not in render.TERMINAL
        console.print("[dim]no scores yet[/]" if unfinished else "[dim]no scores[/]")
    if answer.get("runs"):
        console.print(render.runs_table(answer["runs"]))
    if answer.get("children"):
        console.print(render.family_table(answer["children"]))


@reports_errors
def logs(
    submission_id: IdArgument,
    follow_: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until the log is complete.")
    ] = False,
    json_output: JsonOption = False,
    interval: IntervalOption = 1.0,
) -> None:
    """Print a submission's log (build and evaluation), optionally following it."""
    offset = 0
    collected: list[str] = []
    complete = False
    with Client.from_login(need_token=False) as client:
        submission_id = resolve_id(client, submission_id)
        try:
            while True:
                answer = client.get(
                    submission_path(submission_id, "/logs"), params={"offset": offset}
                )
                text = answer.get("text") or ""
                if json_output:
                    collected.append(text)
                elif text:
                    # The log holds what the model's code printed: nothing in it may drive
                    # the terminal (retitle it, clear it, rewrite a line).
                    sys.stdout.write(render.printable(text, keep_lines=True))
                    sys.stdout.flush()
                offset = max(offset, int(answer.get("next_offset") or offset))
                complete = bool(answer.get("complete"))
                if complete or (not text and not follow_):
                    break
                if not text:
                    time.sleep(interval)
        except KeyboardInterrupt:
            raise CliError("stopped following the log", exit_code=130) from None
    if json_output:
        render.print_json(
            {
                "id": submission_id,
                "text": "".join(collected),
                "next_offset": offset,
                "complete": complete,
            }
        )


@reports_errors
def cancel(
    submission_id: IdArgument,
    purge: Annotated[
        bool, typer.Option("--purge", help="Also delete it and its files from the server.")
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Cancel a submission that has not finished (with --purge, also delete it)."""
    with Client.from_login() as client:
        submission_id = resolve_id(client, submission_id)
        try:
            submission = client.post(submission_path(submission_id, "/cancel"))
        except ApiError as exc:
            # A finished submission cannot be cancelled, but it can still be purged.
            if not (purge and exc.status == 409):
                raise
            submission = client.get(submission_path(submission_id))
        purged: bool | None = None
        if purge:
            response = client.send("DELETE", submission_path(submission_id))
            if response.status_code in (404, 405):
                purged = False
            elif response.is_error:
                raise error_from_response(response)
            else:
                purged = True
    if json_output:
        render.print_json({**submission, "purged": purged} if purge else submission)
    else:
        line = Text(f"submission {render.printable(submission.get('id'))} is ")
        line.append_text(render.status_text(submission.get("status")))
        render.stdout().print(line)
        if purged:
            render.stdout().print("purged: its record and files are deleted")
    if purged is False:
        render.print_error("purge is not supported by this server (nothing was deleted)")
        raise typer.Exit(1)


@reports_errors
def rerun(submission_id: IdArgument, json_output: JsonOption = False) -> None:
    """Evaluate a finished model submission again (yours, or any as an admin): a new attempt."""
    with Client.from_login() as client:
        submission_id = resolve_id(client, submission_id)
        submission = client.post(submission_path(submission_id, "/rerun"))
    if json_output:
        render.print_json(submission)
        return
    line = Text(f"submission {render.printable(submission.get('id'))} is ")
    line.append_text(render.status_text(submission.get("status")))
    line.append(" again: it is queued to be built and evaluated as a new attempt")
    render.stdout().print(line)
