"""Exit codes and output discipline that hold without a server."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.conftest import Cli, clean_env, free_port


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """The app in-process: these checks need no interpreter start each."""
    return Cli(env=clean_env(tmp_path), cwd=tmp_path, in_process=True)


@pytest.mark.parametrize(
    "args",
    [
        ["upload"],  # no PATH
        ["upload", "model.tar.gz"],  # no --task
        ["status", "--no-such-option"],
        ["serve", "nonsense"],
        ["serve", "api", "--fleet", "gpu"],  # --fleet is for evaluators
        ["leaderboard", "toy", "--weights", "accuracy"],
        ["leaderboard", "toy", "--weights", "accuracy=high"],
        ["status", "--watch"],  # nothing to watch
        ["no-such-command"],
    ],
)
def test_usage_errors_exit_2(cli: Cli, args: list[str]) -> None:
    result = cli.run(*args, WEIGHBRIDGE_URL="http://127.0.0.1:9", WEIGHBRIDGE_TOKEN="wb_x")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""


def test_upload_of_a_missing_path_exits_2(cli: Cli) -> None:
    result = cli.run("upload", "nowhere.tar.gz", "--task", "toy", "--json")
    assert result.returncode == 2
    assert "nowhere.tar.gz does not exist" in result.stderr
    assert result.stdout == ""


def test_upload_of_an_unknown_kind_of_file_exits_2(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    result = cli.run("upload", "notes.txt", "--task", "toy")
    assert result.returncode == 2
    assert ".tar.gz, a .zip or a .mar" in result.stderr


@pytest.mark.parametrize("args", [["ping"], ["tasks", "--json"], ["status"], ["cancel", "0" * 32]])
def test_not_logged_in_exits_2_and_says_how_to_log_in(cli: Cli, args: list[str]) -> None:
    result = cli.run(*args)
    assert result.returncode == 2
    assert "not logged in" in result.stderr
    assert "weighbridge login" in result.stderr
    assert result.stdout == ""


def test_unreachable_server_is_a_clean_failure(cli: Cli) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = cli.run("tasks", "--json", WEIGHBRIDGE_URL=url)
    assert result.returncode == 1
    assert f"cannot reach the Weighbridge server at {url}" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_login_to_an_unreachable_server_stores_nothing(cli: Cli, tmp_path: Path) -> None:
    result = cli.run("login", "--url", f"127.0.0.1:{free_port()}", "--token", "wb_x")
    assert result.returncode == 1
    assert not (tmp_path / "config" / "weighbridge" / "config.json").exists()


def test_installed_command_exits_2_on_a_usage_error(cli: Cli) -> None:
    result = cli.installed("upload", "--task", "toy")
    assert result.returncode == 2
    assert "Missing argument" in result.stderr


def test_version(cli: Cli) -> None:
    from cli import __version__

    result = cli.installed("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"weighbridge {__version__}"


@pytest.mark.parametrize("role", ["evaluator", "builder"])
def test_roles_running_user_code_refuse_to_start_without_the_sandbox(
    tmp_path: Path, role: str
) -> None:
    # No bubblewrap on PATH: one sentence saying what to install, exit 1, nothing started.
    cli = Cli(env=clean_env(tmp_path), cwd=tmp_path)
    result = cli.installed("serve", role, PATH=str(tmp_path / "empty-bin"), timeout=60)
    assert result.returncode == 1, (result.stdout, result.stderr)
    output = result.stdout + result.stderr
    assert "the sandbox for user code is not available" in output
    assert "apt-get install bubblewrap" in output
    assert "Traceback" not in output


def test_an_unknown_sandbox_setting_is_refused(tmp_path: Path) -> None:
    cli = Cli(env=clean_env(tmp_path), cwd=tmp_path)
    result = cli.installed("serve", "evaluator", WEIGHBRIDGE_SANDBOX="docker", timeout=60)
    assert result.returncode == 1
    assert "WEIGHBRIDGE_SANDBOX is 'docker'" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("role", "setting", "value"),
    [
        ("builder", "WEIGHBRIDGE_BUILDER", "kaniko"),
        ("evaluator", "WEIGHBRIDGE_RUNNER", "lambda"),
    ],
)
def test_a_builder_or_runner_this_build_does_not_have_is_refused_at_start(
    tmp_path: Path, role: str, setting: str, value: str
) -> None:
    cli = Cli(env=clean_env(tmp_path, **{setting: value}), cwd=tmp_path)
    result = cli.installed("serve", role, timeout=60)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert f"{setting}={value!r} is not a" in result.stderr
    assert "(it has: " in result.stderr and "local" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_the_docker_builder_without_its_role_is_refused_at_start(tmp_path: Path) -> None:
    cli = Cli(env=clean_env(tmp_path, WEIGHBRIDGE_BUILDER="docker"), cwd=tmp_path)
    result = cli.installed("serve", "builder", timeout=60)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "set WEIGHBRIDGE_SAGEMAKER_ROLE_ARN" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
