"""`weighbridge token list|create|revoke` against a real server, and the server machine's
`weighbridge admin revoke-token` and `admin set-password`."""

from __future__ import annotations

import re
import subprocess

import httpx

from tests.cli.conftest import WEIGHBRIDGE, Cli, Server


def _user_cli(server: Server, name: str) -> tuple[Cli, str]:
    """A user made on the server's machine, logged in (in-process commands, same env)."""
    cli = Cli(env=server.cli.env, cwd=server.cli.cwd, in_process=True)
    made = cli.run("admin", "create-user", name, "--email", f"{name}@example.org", "--token-only")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    login = cli.run("login", "--url", server.url, "--token", token)
    assert login.returncode == 0, login.stderr
    return cli, token


def test_tokens_are_created_listed_and_revoked_from_the_cli(server: Server) -> None:
    cli, _ = _user_cli(server, "tina")
    made = cli.json("token", "create", "--name", "laptop", "--expires", "30d")
    assert made["token"].startswith("wb_") and made["name"] == "laptop"
    assert made["expires_at"] is not None and made["status"] == "active"

    listed = cli.json("token", "list")["tokens"]
    assert [(t["name"], t["status"]) for t in listed] == [
        ("laptop", "active"),
        ("default", "active"),
    ]
    assert all("token" not in t for t in listed)
    human = cli.run("token", "list")
    assert human.returncode == 0 and "laptop" in human.stdout and "wb_" not in human.stdout

    revoked = cli.json("token", "revoke", str(made["id"]))
    assert revoked["status"] == "revoked" and revoked["revoked_at"]
    refused = httpx.get(
        f"{server.url}/api/v1/tokens", headers={"Authorization": f"Bearer {made['token']}"}
    )
    assert refused.status_code == 401
    assert refused.json()["error"]["message"].startswith("this token was revoked on 20")

    bad = cli.run("token", "create", "--expires", "soon")
    assert bad.returncode != 0 and "expires" in bad.stderr and "30d" in bad.stderr


def test_an_admin_revokes_anyones_token_and_sets_a_password(server: Server) -> None:
    cli, _ = _user_cli(server, "uma")
    mine = cli.json("token", "list")["tokens"][0]
    admin = Cli(env=server.cli.env, cwd=server.cli.cwd, in_process=True)
    revoked = admin.json("admin", "revoke-token", str(mine["id"]))
    assert revoked["owner"] == "uma" and revoked["status"] == "revoked"
    after = cli.run("token", "list")
    assert after.returncode != 0 and "this token was revoked on" in after.stderr
    missing = admin.run("admin", "revoke-token", "99999")
    assert missing.returncode == 1 and "no API token 99999" in missing.stderr

    # The installed command reads the password from stdin (a prompt for people).
    short = subprocess.run(
        [WEIGHBRIDGE, "admin", "set-password", "uma", "--password-stdin"],
        input="short\n",
        capture_output=True,
        text=True,
        env=server.cli.env,
        cwd=server.cli.cwd,
        timeout=60,
    )
    assert short.returncode == 2
    assert "password must be 10 to" in short.stderr
    done = subprocess.run(
        [WEIGHBRIDGE, "admin", "set-password", "uma", "--password-stdin"],
        input="a long passphrase\n",
        capture_output=True,
        text=True,
        env=server.cli.env,
        cwd=server.cli.cwd,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    with httpx.Client(base_url=server.url) as browser:
        page = browser.get("/signin")
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
        assert csrf is not None
        signed = browser.post(
            "/signin",
            data={"csrf": csrf.group(1), "name": "uma", "password": "a long passphrase"},
        )
        assert signed.status_code == 303
        assert "uma" in browser.get("/me").text
