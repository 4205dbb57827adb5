"""`weighbridge rerun ID`: a finished submission of the user's is queued again as a new attempt;
an unfinished one, or someone else's, is refused with the reason (exit 1). Against a real API
server (only the API runs, so nothing moves the submission on by itself)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.conftest import Cli, Server
from tests.cli.test_end_to_end import make_archive


@pytest.fixture(scope="module")
def user(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    """A user logged in (in-process) with their own config dir."""
    created = server.cli.json("admin", "create-user", "erin", "--email", "erin@example.com")
    root = tmp_path_factory.mktemp("erin")
    cli = Cli(
        env={**server.cli.env, "XDG_CONFIG_HOME": str(root / "config")},
        cwd=root,
        server_log=server.cli.server_log,
        in_process=True,
    )
    cli.json("login", "--url", server.url, "--token", created["token"])
    return cli


def test_rerun_a_cancelled_upload(user: Cli, server: Server, tmp_path: Path) -> None:
    archive = make_archive(tmp_path / "parity.tar.gz")
    sid = user.json("upload", str(archive), "--task", "toy", "--name", "again")["id"]

    early = user.run("rerun", sid)
    assert early.returncode == 1
    assert "still uploaded" in early.stderr

    assert user.json("cancel", sid)["status"] == "cancelled"
    rerun = user.json("rerun", sid)
    assert rerun["id"] == sid and rerun["status"] == "uploaded"
    events = user.json("status", sid)["events"]
    assert [e["status"] for e in events] == ["uploaded", "cancelled", "uploaded"]
    assert "run again by erin: attempt 2 (it was cancelled)" in events[-1]["message"]

    user.json("cancel", sid)
    human = user.run("rerun", sid)
    assert human.returncode == 0
    assert "uploaded" in human.stdout and "new attempt" in human.stdout

    other = server.cli.json("admin", "create-user", "frank", "--email", "frank@example.com")
    frank = Cli(
        env={**user.env, "WEIGHBRIDGE_TOKEN": other["token"]}, cwd=user.cwd, in_process=True
    )
    refused = frank.run("rerun", sid)
    assert refused.returncode == 1
    assert "only your own submissions" in refused.stderr
