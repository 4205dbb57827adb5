"""Commands that work on the database directly, on the server's machine: `db`, `admin`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from cli import render
from cli.errors import CliError, UsageError, reports_errors

if TYPE_CHECKING:
    from core.settings import Settings

db_app = typer.Typer(help="The database: apply migrations.", no_args_is_help=True)
admin_app = typer.Typer(help="Administration on the server's machine.", no_args_is_help=True)


def masked_url(url: str) -> str:
    """A database URL fit to print: the password replaced by ***."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def where_from(settings: Settings) -> str:
    """Which home and database a command acts on, fit to print."""
    return f"home {settings.home}, database {masked_url(settings.database_url)}"


def require_database(settings: Settings) -> None:
    """Refuse to act on a database that does not exist yet: it is not the server's.

    Run from another folder, the default home (./.weighbridge) names a fresh SQLite file,
    and a user created there holds a token no running server knows.
    """
    from sqlalchemy.engine import make_url

    url = make_url(settings.database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return
    if not Path(url.database).is_file():
        raise CliError(
            f"there is no Weighbridge database at {url.database} ({where_from(settings)})",
            hint="run this in the folder where `weighbridge up` runs, or set WEIGHBRIDGE_HOME "
            "(or WEIGHBRIDGE_DATABASE_URL) to the server's; `weighbridge db upgrade` makes a "
            "new database",
        )


def server_url(settings: Settings) -> str:
    """The server a token made here should work on: the login's, else the server's own URL."""
    from cli.config import resolve_login

    try:
        return resolve_login(need_token=False).url
    except UsageError:
        return settings.public_url.rstrip("/")


def who_the_server_says(url: str, token: str) -> str | bool | None:
    """The user name the server at `url` gives this token; None when it does not know it,
    False when no Weighbridge server answers there."""
    import httpx

    try:
        response = httpx.get(
            f"{url}/api/v1/ping", headers={"Authorization": f"Bearer {token}"}, timeout=5.0
        )
        answer = response.json()
    except (httpx.HTTPError, ValueError):
        return False
    if response.status_code == 401:
        return None
    if response.status_code != 200 or not isinstance(answer, dict) or "version" not in answer:
        return False
    user = answer.get("user")
    return user.get("name") if isinstance(user, dict) else None


async def _upgrade() -> dict[str, Any]:
    from core.context import start_services
    from core.settings import Settings

    settings = Settings()
    # start_services applies the migrations; task configs are not needed to migrate.
    services = await start_services(settings, sync=False)
    await services.close()
    return {
        "home": str(settings.home),
        "database": masked_url(settings.database_url),
        "revision": "head",
    }


@db_app.command("upgrade")
@reports_errors
def upgrade() -> None:
    """Apply every migration the database does not have yet (creating it if need be)."""
    result = asyncio.run(_upgrade())
    render.stdout().print(
        f"database {escape(result['database'])} (home {escape(result['home'])}) is up to date"
    )


async def _create_user(name: str, email: str, is_admin: bool) -> dict[str, Any]:
    from core.accounts import create_user, delete_new_user
    from core.context import start_services
    from core.errors import WeighbridgeError
    from core.settings import Settings

    settings = Settings()
    require_database(settings)
    services = await start_services(settings, sync=False)
    try:
        async with services.db.session() as session:
            user, token = await create_user(session, name, email=email, is_admin=is_admin)
        url = server_url(settings)
        # A server that does not know the new token uses another database: the user would
        # be a stranger to it, so none is kept.
        seen = await asyncio.to_thread(who_the_server_says, url, token)
        if seen is not False and seen != name:
            async with services.db.session() as session:
                await delete_new_user(session, await session.merge(user))
            raise CliError(
                f"the server at {url} does not use this database ({where_from(settings)}); "
                f"no user was created",
                hint="run this where that server runs, or with its WEIGHBRIDGE_HOME / "
                "WEIGHBRIDGE_DATABASE_URL",
            )
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
        "url": url,
        "server_checked": seen is not False,
        "home": str(settings.home),
        "database": masked_url(settings.database_url),
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
    token_only: Annotated[
        bool,
        typer.Option("--token-only", help="Print only the token (for scripts: TOKEN=$(...))."),
    ] = False,
) -> None:
    """Create a user and print their API token (shown this once, never stored).

    It acts on the database of WEIGHBRIDGE_HOME (default ./.weighbridge) or
    WEIGHBRIDGE_DATABASE_URL, which must exist, and checks that the server at the logged-in
    URL (else WEIGHBRIDGE_PUBLIC_URL) accepts the new token; it refuses otherwise.
    """
    created = asyncio.run(_create_user(name, email, admin))
    if token_only:
        typer.echo(created["token"])
        return
    if json_output:
        render.print_json(created)
        return
    console = render.stdout()
    role = "admin" if created["is_admin"] else "user"
    console.print(f"created {role} [bold]{escape(name)}[/] <{escape(email)}>")
    console.print(
        f"[dim]in {escape(created['home'])} (database {escape(created['database'])})[/]",
        soft_wrap=True,
    )
    if not created["server_checked"]:
        render.note(
            f"no Weighbridge server answered at {created['url']}; the token works on a server "
            "using this database"
        )
    console.print("API token (shown once; keep it secret):")
    console.print(created["token"], style="bold", soft_wrap=True)
    console.print(
        f"[dim]log in with: weighbridge login --url {escape(created['url'])} "
        f"--token {created['token']}[/]",
        soft_wrap=True,
    )


async def _queue_report(redrive: str | None) -> dict[str, Any]:
    from core.context import start_services
    from core.queue import dead_letter_queue, is_dead_letter_queue
    from core.settings import Settings

    settings = Settings()
    require_database(settings)
    services = await start_services(settings, sync=False)
    try:
        queue = services.queue
        names = await queue.queues()
        main = sorted({n.removesuffix("-dlq") if is_dead_letter_queue(n) else n for n in names})
        redriven = None
        if redrive is not None:
            for name in main:
                if await queue.redrive(name, redrive):
                    redriven = name
                    break
            else:
                raise CliError(
                    f"no dead letter {redrive!r} in any queue",
                    hint="`weighbridge admin queue` lists them with their message ids",
                )
        rows, letters = [], []
        for name in main:
            dead = await queue.dead_letters(name)
            rows.append(
                {
                    "queue": name,
                    "waiting": await queue.depth(name),
                    "in_flight": await queue.in_flight(name),
                    "dead_letters": len(dead),
                    "dead_letters_unrecorded": await queue.depth(dead_letter_queue(name)),
                }
            )
            letters += [
                {
                    "queue": name,
                    "message_id": d.message_id,
                    "submission_id": d.body.get("action_id"),
                    "type": d.body.get("type"),
                    "attempts": d.attempts,
                    "recorded": d.settled,
                    "error": d.last_error or "",
                }
                for d in dead
            ]
        staged = await services.outbox.pending()
    finally:
        await services.close()
    return {
        "home": str(settings.home),
        "database": masked_url(settings.database_url),
        # Messages committed by a sender and not yet relayed to the transport (0 for db://).
        "outbox_pending": staged,
        "queues": rows,
        "dead_letters": letters,
        "redriven": {"message_id": redrive, "queue": redriven} if redriven else None,
    }


@admin_app.command("queue")
@reports_errors
def queue(
    redrive: Annotated[
        str | None,
        typer.Option(
            "--redrive",
            metavar="MESSAGE_ID",
            help="Send this dead letter back to its queue with fresh attempts.",
        ),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON document on stdout.")
    ] = False,
) -> None:
    """The queues: messages waiting, leased to a worker, and dead letters (with --redrive,
    send one back). Acts on the database of WEIGHBRIDGE_HOME / WEIGHBRIDGE_DATABASE_URL."""
    from rich.table import Table

    report = asyncio.run(_queue_report(redrive))
    if json_output:
        render.print_json(report)
        return
    console = render.stdout()
    console.print(
        f"[dim]in {escape(report['home'])} (database {escape(report['database'])})[/]",
        soft_wrap=True,
    )
    if report["redriven"]:
        back = report["redriven"]
        console.print(
            f"sent dead letter {escape(back['message_id'])} back to {escape(back['queue'])}"
        )
    if report["outbox_pending"]:
        render.note(
            f"{report['outbox_pending']} message(s) committed and not yet relayed to the queue "
            "(a running server relays them within seconds)"
        )
    if not report["queues"]:
        render.note("the queues are empty")
        return
    table = Table(title="queues")
    for column in ("queue", "waiting", "in flight", "dead letters", "not yet recorded"):
        table.add_column(column, justify="left" if column == "queue" else "right")
    for row in report["queues"]:
        render.add_row(
            table,
            render.plain(row["queue"]),
            str(row["waiting"]),
            str(row["in_flight"]),
            str(row["dead_letters"]),
            str(row["dead_letters_unrecorded"]),
        )
    console.print(table)
    if report["dead_letters"]:
        letters = Table(title="dead letters")
        for column in ("queue", "message id", "submission", "attempts", "recorded", "error"):
            letters.add_column(column)
        for d in report["dead_letters"]:
            first = (d["error"].strip().splitlines() or [""])[0]
            render.add_row(
                letters,
                render.plain(d["queue"]),
                render.plain(d["message_id"]),
                render.plain(d["submission_id"]),
                str(d["attempts"]),
                "yes" if d["recorded"] else "not yet",
                render.plain(first[:120]),
            )
        console.print(letters)
        render.note("send one back with: weighbridge admin queue --redrive MESSAGE_ID")


worker_token_app = typer.Typer(
    help="Tokens of remote evaluator workers: each grants one fleet's jobs and nothing else.",
    no_args_is_help=True,
)
admin_app.add_typer(worker_token_app, name="worker-token")


def served_fleets(settings: Settings) -> list[str]:
    """The fleets this server's task configs name (and `default`, and WEIGHBRIDGE_FLEETS)."""
    from core.taskconfig import load_task_configs

    tasks = load_task_configs(settings.task_configs)
    return sorted(
        {"default", *settings.fleet_ids(), *(t.eval.eval_server_id for t in tasks.values())}
    )


def _worker_token_row(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "fleet": row.fleet,
        "label": row.label,
        "created_at": row.created_at.isoformat() if row.created_at else None,
        "last_used_at": row.last_used_at.isoformat() if row.last_used_at else None,
        "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
    }


async def _worker_tokens(action: str, **kwargs: Any) -> dict[str, Any]:
    from core import worker_tokens
    from core.context import start_services
    from core.errors import WeighbridgeError
    from core.settings import Settings

    settings = Settings()
    require_database(settings)
    fleets = served_fleets(settings) if action == "create" else []
    services = await start_services(settings, sync=False)
    try:
        async with services.db.session() as session:
            if action == "create":
                row, token = await worker_tokens.create_worker_token(
                    session, fleet=kwargs["fleet"], label=kwargs["label"], fleets=fleets
                )
                return {**_worker_token_row(row), "token": token}
            if action == "revoke":
                row = await worker_tokens.revoke_worker_token(session, kwargs["token_id"])
                return _worker_token_row(row)
            rows = await worker_tokens.list_worker_tokens(session)
            return {"tokens": [_worker_token_row(r) for r in rows]}
    except WeighbridgeError as exc:
        raise CliError(exc.message, exit_code=2 if exc.status in (400, 422) else 1) from None
    finally:
        await services.close()


JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]


@worker_token_app.command("create")
@reports_errors
def create_worker_token(
    fleet: Annotated[str, typer.Option("--fleet", help="The fleet (eval_server_id) it serves.")],
    label: Annotated[
        str, typer.Option("--label", help="A name to tell the token apart (who runs it).")
    ] = "worker",
    json_output: JsonOption = False,
) -> None:
    """Make a worker token for one fleet and print it (shown this once, never stored).

    Start the worker anywhere with:
    weighbridge serve evaluator --api URL --token TOKEN --fleet FLEET
    """
    created = asyncio.run(_worker_tokens("create", fleet=fleet, label=label))
    if json_output:
        render.print_json(created)
        return
    console = render.stdout()
    console.print(
        f"worker token {created['id']} for fleet [bold]{escape(fleet)}[/] "
        f"({escape(created['label'])}); shown once, keep it secret:"
    )
    console.print(created["token"], style="bold", soft_wrap=True)
    console.print(
        f"[dim]start a worker with: weighbridge serve evaluator --api URL --token "
        f"{created['token']} --fleet {escape(fleet)}[/]",
        soft_wrap=True,
    )


@worker_token_app.command("list")
@reports_errors
def list_worker_tokens(json_output: JsonOption = False) -> None:
    """The worker tokens (never the tokens themselves): fleet, label, last use, revoked."""
    from rich.table import Table

    report = asyncio.run(_worker_tokens("list"))
    if json_output:
        render.print_json(report)
        return
    if not report["tokens"]:
        render.note("no worker tokens yet (`weighbridge admin worker-token create --fleet F`)")
        return
    table = Table(title="worker tokens")
    for column in ("id", "fleet", "label", "created", "last used", "revoked"):
        table.add_column(column)
    for row in report["tokens"]:
        render.add_row(
            table,
            str(row["id"]),
            render.plain(row["fleet"]),
            render.plain(row["label"]),
            render.plain(row["created_at"] or ""),
            render.plain(row["last_used_at"] or "never"),
            render.plain(row["revoked_at"] or ""),
        )
    render.stdout().print(table)


@worker_token_app.command("revoke")
@reports_errors
def revoke_worker_token(
    token_id: Annotated[int, typer.Argument(help="The token's id (see `worker-token list`).")],
    json_output: JsonOption = False,
) -> None:
    """Revoke a worker token: the worker's next request is refused."""
    revoked = asyncio.run(_worker_tokens("revoke", token_id=token_id))
    if json_output:
        render.print_json(revoked)
        return
    render.stdout().print(
        f"worker token {revoked['id']} (fleet {escape(revoked['fleet'])}, "
        f"{escape(revoked['label'])}) is revoked"
    )


async def _account_action(action: str, **kwargs: Any) -> dict[str, Any]:
    """Set a user's password or revoke any API token, on the database directly."""
    from core.accounts import get_user, set_password
    from core.api_tokens import describe_token, revoke_token
    from core.context import start_services
    from core.errors import WeighbridgeError
    from core.models import ApiToken, User
    from core.settings import Settings

    settings = Settings()
    require_database(settings)
    services = await start_services(settings, sync=False)
    try:
        async with services.db.session() as session:
            if action == "set-password":
                user = await get_user(session, kwargs["name"])
                if user is None:
                    raise CliError(
                        f"no user {kwargs['name']!r}",
                        hint="`weighbridge admin create-user NAME --email E` makes one",
                    )
                await set_password(session, user, kwargs["password"])
                return {"name": user.name, "password_set": True}
            row = await session.get(ApiToken, kwargs["token_id"])
            if row is None:
                raise CliError(f"no API token {kwargs['token_id']}")
            # The admin of this machine acts for the service: revoke whoever's token it is.
            service = User(name="admin", email="admin@localhost", is_admin=True)
            revoked = await revoke_token(session, kwargs["token_id"], by=service)
            owner = await session.get(User, revoked.user_id)
            return {**describe_token(revoked), "owner": owner.name if owner else None}
    except WeighbridgeError as exc:
        raise CliError(exc.message, exit_code=2 if exc.status in (400, 422) else 1) from None
    finally:
        await services.close()


@admin_app.command("set-password")
@reports_errors
def set_password(
    name: Annotated[str, typer.Argument(help="The user's name.")],
    password_stdin: Annotated[
        bool,
        typer.Option("--password-stdin", help="Read the password from stdin (for scripts)."),
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Let a user sign in to the website with a name and password (kept as a scrypt hash)."""
    import sys

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("new password", hide_input=True, confirmation_prompt=True)
    done = asyncio.run(_account_action("set-password", name=name, password=password))
    if json_output:
        render.print_json(done)
        return
    render.stdout().print(f"{escape(name)} may now sign in at /signin with this password")


@admin_app.command("revoke-token")
@reports_errors
def revoke_api_token(
    token_id: Annotated[int, typer.Argument(help="The API token's id.")],
    json_output: JsonOption = False,
) -> None:
    """Revoke any user's API token: it is refused from now on, and its web sessions end."""
    revoked = asyncio.run(_account_action("revoke", token_id=token_id))
    if json_output:
        render.print_json(revoked)
        return
    render.stdout().print(
        f"API token {revoked['id']} ({escape(revoked['name'])}) of "
        f"{escape(str(revoked['owner']))} is revoked"
    )
