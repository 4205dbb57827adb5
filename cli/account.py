"""`login` (store the server and token) and `ping` (is it there, which version, who am I)."""

from __future__ import annotations

import contextlib
import time
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cli import render
from cli.client import ApiError, Client
from cli.config import ClientSettings, Login, normalize_url, resolve_login, write_config
from cli.errors import CliError, UsageError, reports_errors

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]


def _who(user: dict | None) -> str:
    if not user:
        return "not signed in (no token)"
    admin = " (admin)" if user.get("is_admin") else ""
    return f"{user.get('name')} <{user.get('email')}>{admin}"


def _shown(value: object) -> str:
    """Someone else's text (a user's name, the server's answer) as rich markup, inert."""
    return escape(render.printable(value))


def _ping_until(client: Client, wait: float) -> dict:
    """/ping's answer; while the server cannot be reached, retry for up to `wait` seconds."""
    deadline = time.monotonic() + wait
    with contextlib.ExitStack() as stack:
        waiting = False
        while True:
            try:
                return client.get("/ping")
            except ApiError:
                raise  # the server answered: waiting will not change its mind
            except CliError:
                if time.monotonic() >= deadline:
                    raise
            if not waiting:
                stack.enter_context(render.stderr().status(f"waiting for {client.url}…"))
                waiting = True
            time.sleep(0.25)


@reports_errors
def login(
    url: Annotated[str, typer.Option("--url", help="The server, e.g. http://127.0.0.1:8000.")],
    token: Annotated[
        str, typer.Option("--token", help="Your API token (from `weighbridge admin create-user`).")
    ],
    json_output: JsonOption = False,
) -> None:
    """Check URL and TOKEN against the server, then store them in your config dir (mode 0600)."""
    url = normalize_url(url)
    with Client(url, token) as client:
        answer = client.get("/ping")
    if not answer.get("user"):
        # A server that accepts any token (or ignores it) would make every later command fail.
        raise CliError(f"{url} did not recognise the token", hint="check the token and try again")
    path = write_config(ClientSettings().config_path(), url=url, token=token)
    if json_output:
        render.print_json(
            {
                "url": url,
                "version": answer.get("version"),
                "user": answer["user"],
                "config": str(path),
            }
        )
        return
    render.stdout().print(
        f"logged in to [bold]{escape(url)}[/] as [bold]{_shown(_who(answer['user']))}[/] "
        f"(server {_shown(answer.get('version'))}); saved in {_shown(path)}",
        soft_wrap=True,
    )


@reports_errors
def ping(
    url: Annotated[
        str | None,
        typer.Option("--url", help="Ask this server instead of the one you logged in to."),
    ] = None,
    wait: Annotated[
        float,
        typer.Option(
            "--wait",
            min=0,
            help="Keep trying for up to this many seconds while the server is starting.",
        ),
    ] = 0,
    json_output: JsonOption = False,
) -> None:
    """Show the server's version, that the API answers, and who you are signed in as."""
    from cli import __version__

    if url is None:
        login_ = resolve_login(need_token=False)
    else:
        url = normalize_url(url)
        try:
            stored = resolve_login(need_token=False)
        except UsageError:  # nobody logged in yet: ask without a token
            stored = Login(url="", token="", url_from="", token_from="")
        # Another server: the stored token is not for it.
        token = stored.token if url == stored.url else ""
        login_ = Login(url=url, token=token, url_from="--url", token_from=stored.token_from)
    with Client.from_login(login_) as client:
        answer = _ping_until(client, wait)
    document = {
        "url": login_.url,
        "version": answer.get("version"),
        "client_version": __version__,
        "user": answer.get("user"),
    }
    if json_output:
        render.print_json(document)
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("server", _shown(login_.url))
    grid.add_row("api", "[green]reachable[/]")
    grid.add_row("version", _shown(f"{document['version']} (client {__version__})"))
    user = document.get("user")
    grid.add_row("user", _shown(_who(user if isinstance(user, dict) else None)))
    render.stdout().print(grid)
