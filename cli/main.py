"""The `weighbridge` command: the typer app, its global options and its commands."""

from __future__ import annotations

from typing import Annotated

import typer

from cli import (
    account,
    benchmarks,
    history,
    inspections,
    models,
    render,
    server,
    submissions,
    tasks,
)
from cli.admin import admin_app, db_app
from cli.infra import infra_app
from cli.tokens import token_app

app = typer.Typer(
    name="weighbridge",
    help="Weigh machine-learning models: upload, evaluate, rank.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def _show_version(value: bool) -> None:
    if value:
        from cli import __version__

        typer.echo(f"weighbridge {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    no_color: Annotated[
        bool, typer.Option("--no-color", help="Plain output (NO_COLOR is honoured too).")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Weigh machine-learning models: upload, evaluate, rank."""
    render.configure(no_color=no_color)


# Running the stack.
app.command("up")(server.up)
app.command("serve")(server.serve)
app.add_typer(db_app, name="db")
app.add_typer(admin_app, name="admin")
app.add_typer(infra_app, name="infra")
app.add_typer(token_app, name="token")
# Talking to a server.
app.command("login")(account.login)
# Making a model.
app.command("init")(models.init)
app.command("test")(models.test)
app.command("ping")(account.ping)
app.command("tasks")(tasks.tasks)
app.command("upload")(submissions.upload)
app.command("submit")(benchmarks.submit)
app.command("inspect")(inspections.inspect)
app.command("status")(submissions.status)
app.command("results")(submissions.results)
app.command("logs")(submissions.logs)
app.command("cancel")(submissions.cancel)
app.command("rerun")(submissions.rerun)
app.command("leaderboard")(tasks.leaderboard)
app.command("history")(history.history)

if __name__ == "__main__":
    app()
