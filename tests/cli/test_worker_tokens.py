"""`weighbridge admin worker-token create|list|revoke` and `serve evaluator --api --token`."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.accounts import hash_token
from tests.cli.conftest import Cli


@pytest.fixture
def cli(cli: Cli) -> Cli:
    """The server's machine, its database made (as `weighbridge up` leaves it)."""
    cli.in_process = True
    assert cli.run("db", "upgrade").returncode == 0
    return cli


def test_a_token_is_made_for_a_served_fleet_listed_and_revoked(cli: Cli, tmp_path: Path) -> None:
    # The fixture task configs name the fleet `toy-fleet`.
    made = cli.json("admin", "worker-token", "create", "--fleet", "toy-fleet", "--label", "lab-7")
    assert made["token"].startswith("wbw_")
    assert (made["fleet"], made["label"], made["revoked_at"]) == ("toy-fleet", "lab-7", None)
    stored = (tmp_path / "home" / "weighbridge.db").read_bytes()
    assert made["token"].encode() not in stored and hash_token(made["token"]).encode() in stored

    listed = cli.json("admin", "worker-token", "list")["tokens"]
    assert [(t["id"], t["fleet"], t["revoked_at"]) for t in listed] == [
        (made["id"], "toy-fleet", None)
    ]
    assert "token" not in listed[0]
    human = cli.run("admin", "worker-token", "list")
    assert human.returncode == 0 and "lab-7" in human.stdout and "wbw_" not in human.stdout

    revoked = cli.json("admin", "worker-token", "revoke", str(made["id"]))
    assert revoked["revoked_at"] is not None
    assert cli.json("admin", "worker-token", "list")["tokens"][0]["revoked_at"] is not None
    missing = cli.run("admin", "worker-token", "revoke", "999")
    assert missing.returncode == 1 and "no worker token 999" in missing.stderr


def test_a_fleet_the_server_does_not_serve_is_refused_with_the_list(cli: Cli) -> None:
    refused = cli.run("admin", "worker-token", "create", "--fleet", "nowhere")
    assert refused.returncode == 2
    assert "fleet 'nowhere' is not served here" in refused.stderr
    assert "toy-fleet" in refused.stderr and "default" in refused.stderr
    bad_label = cli.run("admin", "worker-token", "create", "--fleet", "default", "--label", "a b")
    assert bad_label.returncode == 2 and "label" in bad_label.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--api", "http://127.0.0.1:1", "--fleet", "toy-fleet"], "--api needs --token"),
        (["--token", "wbw_x", "--fleet", "toy-fleet"], "--token needs --api"),
        (["--api", "http://h", "--token", "wb_user", "--fleet", "f"], "must be a worker token"),
        (["--api", "http://h", "--token", "wbw_x"], "exactly one --fleet"),
        (["--api", "http://h", "--token", "wbw_x", "--fleet", "a", "--fleet", "b"], "exactly one"),
        (["--api", "ftp://h", "--token", "wbw_x", "--fleet", "a"], "not an http(s) URL"),
    ],
)
def test_serve_evaluator_refuses_half_a_remote_worker(cli: Cli, args: list[str], says: str) -> None:
    result = cli.run("serve", "evaluator", *args)
    assert result.returncode == 2
    assert says in " ".join(result.stderr.split())


def test_api_and_token_are_only_for_the_evaluator(cli: Cli) -> None:
    result = cli.run("serve", "builder", "--api", "http://h", "--token", "wbw_x")
    assert result.returncode == 2
    assert "are for `serve evaluator`" in " ".join(result.stderr.split())
