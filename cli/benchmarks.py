"""`weighbridge submit`: an Anubis-style benchmark descriptor, with its scripts, to run.

The descriptor is checked here first (the same validation the server applies), so a mistake
is reported with its line before anything is sent. `--script DIR` packs the folder (paths
relative to it; a single file is packed on its own) and sends it beside the descriptor,
whose text is sent as it is: the user's TOML is never rewritten.
"""

from __future__ import annotations

import contextlib
import tarfile
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from cli import render
from cli.client import Client
from cli.errors import CliError, reports_errors
from cli.multipart import MultipartBody
from cli.submissions import (
    UPLOAD_TIMEOUT,
    IntervalOption,
    JsonOption,
    _exit_for,
    _pack,
    _print_final,
)
from cli.timeline import follow, submission_path


def read_descriptor(path: Path) -> bytes:
    """The descriptor's bytes, validated; CliError naming every problem with its line."""
    from core.descriptor import DescriptorError, parse_descriptor

    if not path.is_file():
        raise CliError(f"{path}: no such file", hint="give the path of a benchmark .toml")
    data = path.read_bytes()
    try:
        parse_descriptor(data, filename=path.name)
    except DescriptorError as exc:
        raise CliError(exc.message) from None
    return data


def pack_scripts(script: Path, workdir: Path, *, show: bool) -> Path:
    """A folder packed as its contents; a single file packed alone, under its own name."""
    if script.is_dir():
        return _pack(script, workdir, show=show)
    if not script.is_file():
        raise CliError(f"--script {script}: no such file or folder")
    dest = workdir / "scripts.tar.gz"
    with tarfile.open(dest, "w:gz") as tar:
        info = tar.gettarinfo(str(script), arcname=script.name)
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        with script.open("rb") as fh:
            tar.addfile(info, fh)
    return dest


@reports_errors
def submit(
    descriptor: Annotated[
        Path, typer.Argument(help="The benchmark descriptor (Anubis-compatible TOML).")
    ],
    script: Annotated[
        Path | None,
        typer.Option(
            "--script",
            help="A folder (or one file) the benchmark runs; the job sees it at "
            "$WEIGHBRIDGE_SCRIPTS_PATH (and $BAI_SCRIPTS_PATH).",
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Its name (default: task_name).")
    ] = None,
    private: Annotated[
        bool, typer.Option("--private", help="Only you (and admins) see it.")
    ] = False,
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow it until done; exit 1 if it fails.")
    ] = False,
    json_output: JsonOption = False,
    interval: IntervalOption = 1.0,
) -> None:
    """Submit a benchmark descriptor to run (with --script, the scripts it runs)."""
    text = read_descriptor(descriptor)
    show = not json_output
    fields = [
        ("descriptor", text.decode("utf-8")),
        ("descriptor_filename", descriptor.name),
        ("kind", "benchmark"),
        ("private", "true" if private else "false"),
    ]
    if name:
        fields.append(("name", name))
    with Client.from_login() as client, contextlib.ExitStack() as stack:
        if script is not None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="weighbridge-")))
            archive = pack_scripts(script, workdir, show=show)
            body = MultipartBody(fields, path=archive)
            with render.transfer_progress(enabled=show) as progress:
                job = progress.add_task(f"uploading {archive.name}", total=body.length)
                body.on_chunk = lambda n: progress.advance(job, n)
                summary = client.post(
                    "/benchmarks",
                    content=iter(body),
                    headers=body.headers(),
                    timeout=UPLOAD_TIMEOUT,
                )
        else:
            summary = client.post("/benchmarks", json=dict(fields))
        children = summary.get("children") or []
        if show:
            what = {"family": f"a family of {len(children)} runs", "schedule": "a schedule"}
            render.stdout().print(
                f"submitted [bold]{escape(render.printable(summary.get('name')))}[/] as "
                f"[bold]{summary.get('id')}[/]"
                + (f" ({what[summary['role']]})" if summary.get("role") in what else ""),
                soft_wrap=True,
            )
        if summary.get("role") == "schedule":
            if show:
                render.note(
                    "each tick of its schedule submits a run; see them with "
                    f"`weighbridge history {render.printable(summary.get('name'))}`"
                )
            if json_output:
                render.print_json(summary)
            return
        if not wait:
            if json_output:
                render.print_json(summary)
            elif children:
                render.stdout().print(render.family_table(children))
            else:
                render.note(f"follow it with: weighbridge status {summary.get('id')} --watch")
            return
        finals = []
        for item in children or [summary]:
            submission = client.get(submission_path(item["id"]))
            if show and not children:
                for event in submission.get("events") or []:
                    render.stdout().print(render.event_line(event))
            finals.append(follow(client, submission, show=show and not children, interval=interval))
    if children:
        for final, child in zip(finals, children, strict=True):
            child["status"] = final.get("status")
        if json_output:
            render.print_json({**summary, "children": children})
        else:
            render.stdout().print(render.family_table(children))
        if any(f.get("status") in ("failed", "cancelled") for f in finals):
            raise typer.Exit(1)
        return
    final = finals[0]
    if json_output:
        render.print_json(final)
    else:
        _print_final(final)
    _exit_for(final)
