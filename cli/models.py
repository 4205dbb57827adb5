"""`init` and `test`: scaffold a model folder and check it locally, like Dynalab's init/test.

Both read the task from the local task configs (WEIGHBRIDGE_TASK_CONFIGS, default
`task_configs/`), so they work without a server, on the task's public examples.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from cli import render
from cli.errors import CliError, UsageError, reports_errors

if TYPE_CHECKING:
    from core.taskconfig import TaskConfig

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
TaskOption = Annotated[
    str, typer.Option("--task", help="The task's slug (see `weighbridge tasks`).")
]


def _task(slug: str) -> TaskConfig:
    from core.errors import InvalidConfig
    from core.settings import Settings
    from core.taskconfig import load_task_configs

    folder = Settings().task_configs
    try:
        configs = load_task_configs(folder)
    except InvalidConfig as exc:
        raise CliError(exc.message) from None
    if slug not in configs:
        known = ", ".join(sorted(configs)) or "none"
        raise UsageError(
            f"task {slug!r} is not in {folder} (tasks there: {known})",
            hint="point WEIGHBRIDGE_TASK_CONFIGS at the folder holding the task's TOML file",
        )
    return configs[slug]


@reports_errors
def init(
    folder: Annotated[Path, typer.Argument(help="The model folder to create.")],
    task: TaskOption,
    force: Annotated[bool, typer.Option("--force", help="Overwrite handler.py/README.md.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Create a model folder with a handler skeleton for the task."""
    from core.errors import WeighbridgeError
    from core.modelkit import init_model_folder

    config = _task(task)
    try:
        written = init_model_folder(folder, config, force=force)
    except WeighbridgeError as exc:
        raise UsageError(exc.message) from None
    if json_output:
        render.print_json({"folder": str(folder), "task": task, "files": [str(p) for p in written]})
        return
    for path in written:
        render.stdout().print(f"wrote {path}")
    render.note(
        f"edit {folder}/handler.py, then: weighbridge test {folder} --task {task} "
        f"and weighbridge upload {folder} --task {task} --wait"
    )


@reports_errors
def test(
    folder: Annotated[Path, typer.Argument(help="The model folder to check.")],
    task: TaskOption,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="At most N examples.")] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", min=1, help="Seconds per batch (task's default).")
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Run the handler on the task's public examples, as the evaluator would, and check it."""
    from core.modelkit import test_model_folder_sync
    from core.settings import Settings
    from sandbox.jail import SandboxUnavailable, configure

    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder")
    config = _task(task)
    try:  # the same sandbox (and WEIGHBRIDGE_SANDBOX) as the evaluator
        configure(Settings().sandbox)
    except SandboxUnavailable as exc:
        raise CliError(f"cannot test the handler in the sandbox: {exc}") from None
    with render.stderr().status(f"running {folder}/handler.py on the public examples…"):
        report = test_model_folder_sync(folder, config, limit=limit, timeout_seconds=timeout)
    if json_output:
        render.print_json(report.to_dict())
    else:
        _show(report)
    if not report.ok:
        raise typer.Exit(1)


def _show(report) -> None:
    out = render.stdout()
    if report.error:
        render.print_error(f"{report.error_kind or 'error'}: {report.error}")
        if report.log_tail:
            out.print(report.log_tail, markup=False, highlight=False)
        return
    table = Table(title=f"{report.folder} on {report.task}'s public examples")
    for col in ("uid", "ok", "answer", "label", "problems"):
        table.add_column(col)
    for e in report.examples:
        table.add_row(
            str(e.uid),
            "✓" if e.ok else "✗",
            render.fmt_value(e.answer),
            render.fmt_value(e.label),
            "; ".join(e.problems),
        )
    out.print(table)
    accuracy = f", accuracy {report.accuracy:.1%}" if report.accuracy is not None else ""
    summary = f"{report.passed}/{len(report.examples)} answers well-formed{accuracy}"
    out.print(f"{summary} in {report.seconds:.1f} s")
