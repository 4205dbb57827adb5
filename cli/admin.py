"""Commands that work on the database directly, on the server's machine: `db`, `admin`."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer
from rich.markup import escape

from cli import render
from cli.errors import CliError, reports_errors

db_app = typer.Typer(help="The database: apply migrations.", no_args_is_help=True)
admin_app = typer.Typer(help="Administration on the server's machine.", no_args_is_help=True)


def masked_url(url: str) -> str:
    """A database URL fit to print: the password replaced by ***."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


async def _upgrade() -> dict[str, Any]:
    from core.context import start_services
    from core.settings import Settings

    settings = Settings()
    # start_services applies the migrations; task configs are not needed to migrate.
    services = await start_services(settings, sync=False)
    await services.close()
    return {"database": masked_url(settings.database_url), "revision": "head"}


@db_app.command("upgrade")
@reports_errors
def upgrade() -> None:
    """Apply every migration the database does not have yet."""
    result = asyncio.run(_upgrade())
    render.stdout().print(f"database {escape(result['database'])} is up to date")


async def _create_user(name: str, email: str, is_admin: bool) -> dict[str, Any]:
    from core.accounts import create_user
    from core.context import start_services
    from core.errors import WeighbridgeError
    from core.settings import Settings

    settings = Settings()
    services = await start_services(settings, sync=False)
    try:
        async with services.db.session() as session:
            user, token = await create_user(session, name, email=email, is_admin=is_admin)
    except WeighbridgeError as exc:
        # A malformed name or email is a usage error; an existing user is a failure.
        raise CliError(exc.message, exit_code=2 if exc.status in (400, 422) else 1) from None
    finally:
        await services.close()
    return {
        "name": user.name,
        "email": user.email,
        "is_admin": user.is_admin,
        "token": token,
        "url": settings.public_url,
    }


@admin_app.command("create-user")
@reports_errors
def create_user(
    name: Annotated[str, typer.Argument(help="Login name (letters, digits, '.', '_', '-').")],
    email: Annotated[str, typer.Option("--email", help="Where completion emails go.")],
    admin: Annotated[bool, typer.Option("--admin", help="May see and cancel anything.")] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON document on stdout.")
    ] = False,
) -> None:
    """Create a user and print their API token (shown this once, never stored)."""
    created = asyncio.run(_create_user(name, email, admin))
    if json_output:
        render.print_json(created)
        return
    console = render.stdout()
    role = "admin" if created["is_admin"] else "user"
    console.print(f"created {role} [bold]{escape(name)}[/] <{escape(email)}>")
    console.print("API token (shown once; keep it secret):")
    console.print(created["token"], style="bold", soft_wrap=True)
    console.print(
        f"[dim]log in with: weighbridge login --url {escape(created['url'])} "
        f"--token {created['token']}[/]",
        soft_wrap=True,
    )
