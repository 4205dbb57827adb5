"""`init` and `test`: scaffold a model folder and check it locally, like Dynalab's init/test.

Both read the task from the task configs (WEIGHBRIDGE_TASK_CONFIGS, by default the ones
shipped with Weighbridge), so they work from any folder and without a server, on the task's
public examples. `upload` runs the same check before it sends anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from cli import render
from cli.errors import CliError, UsageError, reports_errors

if TYPE_CHECKING:
    from core.modelkit import ModelTestReport
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
    example: Annotated[
        str | None,
        typer.Option(
            "--example",
            help="Copy a worked example shipped with Weighbridge (handler and trained weights) "
            "instead of a skeleton, e.g. digits-cnn.",
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing files.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Create a model folder with a handler skeleton for the task (or a worked example)."""
    from core.errors import WeighbridgeError
    from core.modelkit import copy_example, init_model_folder

    config = _task(task)
    try:
        if example is not None:
            written = copy_example(folder, example, config, force=force)
        else:
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
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder")
    report = run_check(folder, _task(task), limit=limit, timeout=timeout)
    if json_output:
        render.print_json(report.to_dict())
    else:
        _show(report)
    if not report.ok:
        raise typer.Exit(1)


def run_check(
    folder: Path,
    config: TaskConfig,
    *,
    handler: str = "handler.py",
    limit: int | None = None,
    timeout: float | None = None,
    shown_as: str | None = None,
) -> ModelTestReport:
    """Run `folder`'s handler on the task's public examples in the evaluator's sandbox."""
    from core.modelkit import test_model_folder_sync
    from core.settings import Settings
    from sandbox.jail import SandboxUnavailable, configure

    try:  # the same sandbox (and WEIGHBRIDGE_SANDBOX) as the evaluator
        configure(Settings().sandbox)
    except SandboxUnavailable as exc:
        raise CliError(f"cannot test the handler in the sandbox: {exc}") from None
    where = shown_as or f"{folder}/{handler}"
    with render.stderr().status(f"running {where} on the public examples…"):
        return test_model_folder_sync(
            folder, config, limit=limit, timeout_seconds=timeout, handler=handler
        )


def check_before_upload(path: Path, task: str, *, show: bool) -> None:
    """What `upload` runs before sending: `test`'s checks on the bundle, or a CliError.

    A folder is checked in place; an archive is unpacked (with the builder's safe extraction)
    into a temporary folder first. A task the local configs do not hold is the server's own:
    the server checks it at build time instead.
    """
    from builder.bundle import unpacked_bundle
    from builder.extraction import BundleError

    try:
        config = _task(task)
    except UsageError:
        if show:
            render.note(
                f"the task {task!r} is not among the local task configs; the server checks the "
                "bundle when it builds it"
            )
        return
    if path.is_dir():
        _judge(run_check(path, config), path, show=show)
        return
    try:
        with unpacked_bundle(path) as bundle:
            handler = "handler.py"
            if bundle.manifest is not None:
                handler = str((bundle.manifest.get("model") or {}).get("handler") or handler)
            if not handler.endswith(".py") or not (bundle.root / handler).is_file():
                if show:
                    render.note(
                        f"{path}: the handler {handler!r} is not a file in the bundle (a "
                        "TorchServe built-in?); the server checks it when it builds it"
                    )
                return
            report = run_check(bundle.root, config, handler=handler, shown_as=f"{path}:{handler}")
            report.folder = str(path)
            # Name files as the user knows them: inside the archive, not our temporary folder.
            report.log_tail = report.log_tail.replace(f"{bundle.root}/", f"{path}:")
            _judge(report, path, show=show)
    except BundleError as exc:
        raise CliError(f"{path}: {exc}", hint="fix the archive, then upload again") from None


def _judge(report: ModelTestReport, path: Path, *, show: bool) -> None:
    if report.ok:
        if show:
            render.note(
                f"checked {path} on the public examples: {report.passed}/"
                f"{len(report.examples)} answers well-formed{_scores(report)}"
            )
        return
    if show:
        _show(report)
    raise CliError(
        f"{path} did not pass the checks on the task's public examples; nothing was uploaded",
        hint=f"see above, or run `weighbridge test {path} --task {report.task}`; "
        "--no-check uploads without checking",
    )


def _show(report: ModelTestReport) -> None:
    out = render.stdout()
    if report.error:
        # The handler's log first, the verdict last, where the eye lands. The log is the
        # handler's own output: nothing in it may drive the terminal.
        if report.log_tail:
            out.print(
                render.printable(report.log_tail, keep_lines=True), markup=False, highlight=False
            )
        render.print_error(f"{report.error_kind or 'error'}: {report.error}")
        return
    table = Table(title=render.printable(f"{report.folder} on {report.task}'s public examples"))
    for col in ("uid", "ok", "answer", "label", "problems"):
        table.add_column(col)
    for e in report.examples:
        render.add_row(
            table,
            render.plain(e.uid),
            render.plain("✓" if e.ok else "✗", style="green" if e.ok else "red"),
            render.plain(_answer(e.answer)),
            render.plain(_answer(e.label)),
            render.plain("; ".join(e.problems)),
        )
    out.print(table)
    summary = f"{report.passed}/{len(report.examples)} answers well-formed{_scores(report)}"
    out.print(f"{summary} in {render.fmt_seconds(report.seconds)}")


def _scores(report: ModelTestReport) -> str:
    """The accuracy of the answers and, where the task's primary metric is another, its value
    too (", bleu 91.23"): exact answers alone undersell a translation or a QA model."""
    text = f", accuracy {report.accuracy:.1%}" if report.accuracy is not None else ""
    primary = report.primary
    if primary and primary["metric"] != "accuracy":
        text += f", {primary['metric']} {primary['value']:.4g}"
    return text


def _answer(value: object) -> str:
    """An answer or label as the JSON the handler returned, shortened to fit a cell."""
    import json

    if value is None:
        return "-"
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:59] + "…"
