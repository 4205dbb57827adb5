"""`weighbridge infra render`: the fleet-dependent deployment files, from the task configs.

Writes docker-compose.yml, infra/elasticmq.conf and infra/terraform/queues.tf under `--out`
(default: the current folder, the repository's root); `--check` writes nothing and exits 1
when a file differs from what would be written (for CI).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli import render
from cli.errors import CliError, reports_errors

infra_app = typer.Typer(help="Deployment files (docker-compose, ElasticMQ, Terraform).")


@infra_app.command("render")
@reports_errors
def render_infra(
    out: Annotated[
        Path,
        typer.Option(
            "--out", help="The deployment's root folder (holds docker-compose.yml and infra/)."
        ),
    ] = Path("."),
    task_configs: Annotated[
        Path | None,
        typer.Option(
            "--task-configs", help="The task config folder (default WEIGHBRIDGE_TASK_CONFIGS)."
        ),
    ] = None,
    check: Annotated[
        bool,
        typer.Option("--check", help="Write nothing; exit 1 if a file is not up to date."),
    ] = False,
) -> None:
    """Render the files that depend on the fleets: compose services, queues, Terraform queues."""
    from core.deployment import (
        EXTRA_FLEETS,
        plan_deployment,
        read_extra_fleets,
        render_deployment,
        stale_files,
        write_files,
    )
    from core.errors import WeighbridgeError
    from core.settings import Settings
    from core.taskconfig import load_task_configs

    settings = Settings()
    folder = task_configs if task_configs is not None else settings.task_configs
    try:
        tasks = load_task_configs(folder)
        extra = read_extra_fleets(out / EXTRA_FLEETS)
        plan = plan_deployment(settings, tasks, extra_fleets=extra)
    except WeighbridgeError as exc:
        raise CliError(exc.message) from None
    rendered = render_deployment(plan)
    console = render.stdout()
    if check:
        stale = stale_files(out, rendered)
        if stale:
            raise CliError(
                f"not up to date with the task configs (fleets {', '.join(plan.fleets)}): "
                + ", ".join(stale),
                hint="run `weighbridge infra render` and commit the result",
            )
        console.print(f"up to date (fleets {', '.join(plan.fleets)})")
        return
    changed = write_files(out, rendered)
    for path in rendered:
        console.print(f"{'wrote' if path in changed else 'unchanged'} {out / path}")
    console.print(f"fleets: {', '.join(plan.fleets)}")
