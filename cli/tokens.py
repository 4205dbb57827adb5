"""`weighbridge token list|create|revoke`: your own API tokens, through the server's API."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from cli import render
from cli.client import Client
from cli.errors import reports_errors

token_app = typer.Typer(
    help="Your API tokens: list, create (named, with an expiry), revoke.", no_args_is_help=True
)
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]


def _when(value: str | None, empty: str) -> str:
    return value[:16].replace("T", " ") if value else empty


@token_app.command("list")
@reports_errors
def list_tokens(json_output: JsonOption = False) -> None:
    """Your tokens (never the tokens themselves): name, created, last use, expiry, status."""
    with Client.from_login() as client:
        report: dict[str, Any] = client.get("/tokens")
    if json_output:
        render.print_json(report)
        return
    table = Table(title="API tokens")
    for column in ("id", "name", "created", "last used", "expires", "status"):
        table.add_column(column)
    for row in report["tokens"]:
        status = row["status"]
        if row.get("revoked_at"):
            status += f" {_when(row['revoked_at'], '')}"
        render.add_row(
            table,
            str(row["id"]),
            render.plain(row["name"]),
            render.plain(_when(row["created_at"], "")),
            render.plain(_when(row["last_used_at"], "never")),
            render.plain(_when(row["expires_at"], "never")),
            render.plain(status),
        )
    render.stdout().print(table)


@token_app.command("create")
@reports_errors
def create_token(
    name: Annotated[str, typer.Option("--name", help="A name to tell the token by.")] = "default",
    expires: Annotated[
        str | None,
        typer.Option("--expires", help="How long it lasts: 12h, 30d, 8w (default: no expiry)."),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Create a token and print it (shown this once; the server keeps only its hash)."""
    with Client.from_login() as client:
        created: dict[str, Any] = client.post("/tokens", json={"name": name, "expires": expires})
    if json_output:
        render.print_json(created)
        return
    console = render.stdout()
    life = f", expires {_when(created['expires_at'], '')} UTC" if created["expires_at"] else ""
    console.print(
        f"token {created['id']} [bold]{escape(created['name'])}[/]{life}; shown once, keep it "
        "secret:"
    )
    console.print(created["token"], style="bold", soft_wrap=True)


@token_app.command("revoke")
@reports_errors
def revoke_token(
    token_id: Annotated[int, typer.Argument(help="The token's id (see `weighbridge token list`).")],
    json_output: JsonOption = False,
) -> None:
    """Revoke one of your tokens: it is refused from now on (and sessions opened with it end)."""
    with Client.from_login() as client:
        revoked: dict[str, Any] = client.request("DELETE", f"/tokens/{token_id}")
    if json_output:
        render.print_json(revoked)
        return
    render.stdout().print(f"token {revoked['id']} ({escape(revoked['name'])}) is revoked")
