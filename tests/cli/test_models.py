"""`weighbridge init` and `weighbridge test` on the fixture task's public examples."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.conftest import Cli


def test_init_then_test_a_scaffold_gives_well_formed_answers(cli: Cli, tmp_path: Path):
    made = cli.installed("init", "mine", "--task", "toy", "--json")
    assert made.returncode == 0, made.stderr
    files = json.loads(made.stdout)["files"]
    assert sorted(Path(f).name for f in files) == ["README.md", "handler.py"]
    handler = (tmp_path / "mine" / "handler.py").read_text()
    assert "x" in handler and "label" in handler
    checked = cli.installed("test", "mine", "--task", "toy", "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    report = json.loads(checked.stdout)
    assert report["ok"] is True and report["failed"] == 0 and report["passed"] > 0
    again = cli.installed("init", "mine", "--task", "toy")
    assert again.returncode == 2 and "--force" in again.stderr


def test_test_reports_a_wrong_field_and_exits_1(cli: Cli, tmp_path: Path):
    folder = tmp_path / "wrong"
    folder.mkdir()
    # TorchServe calls a module-level handle(None, context) once to initialise it.
    (folder / "handler.py").write_text(
        "def handle(data, context):\n"
        "    if data is None:\n"
        "        return None\n"
        "    return [{'answer': 1} for _ in data]\n"
    )
    checked = cli.installed("test", "wrong", "--task", "toy", "--json")
    assert checked.returncode == 1
    report = json.loads(checked.stdout)
    assert report["ok"] is False and report["passed"] == 0
    assert any("label" in p for e in report["examples"] for p in e["problems"])


def test_unknown_task_is_a_usage_error(cli: Cli):
    result = cli.installed("init", "x", "--task", "nope")
    assert result.returncode == 2 and "'nope'" in result.stderr


def test_test_runs_in_the_sandbox_and_says_so_when_it_cannot(cli: Cli, tmp_path: Path):
    folder = tmp_path / "who"
    folder.mkdir()
    # The handler's answers tell where it ran: another user, no network, only its model.
    (folder / "handler.py").write_text(
        "import os, socket\n"
        "def handle(data, context):\n"
        "    if data is None:\n"
        "        return None\n"
        "    try:\n"
        "        socket.socket(socket.AF_INET)\n"
        "        net = 1\n"
        "    except OSError:\n"
        "        net = 0\n"
        "    return [{'label': int(os.getuid() != 0 and not net and os.getcwd() == '/scratch')}\n"
        "            for _ in data]\n"
    )
    checked = cli.installed("test", "who", "--task", "toy", "--json")
    report = json.loads(checked.stdout)
    assert {e["answer"]["label"] for e in report["examples"]} == {1}, report
    # Without bubblewrap: one sentence, exit 1, nothing run unsandboxed.
    refused = cli.installed("test", "who", "--task", "toy", PATH=str(tmp_path / "empty-bin"))
    assert refused.returncode == 1
    assert "cannot test the handler in the sandbox" in refused.stdout + refused.stderr
    assert "apt-get install bubblewrap" in refused.stdout + refused.stderr
