"""Fixtures for the CLI tests: the installed command, a clean environment, a real server."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
# The console script installed beside the interpreter running the tests (pip install -e .).
WEIGHBRIDGE = str(Path(sys.executable).parent / "weighbridge")
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(root: Path, **extra: str) -> dict[str, str]:
    """The environment of a user with a fresh home, config dir and no login.

    Inherited WEIGHBRIDGE_* variables are dropped so the tests never touch a real server
    or database.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEIGHBRIDGE_")}
    env.update(
        WEIGHBRIDGE_HOME=str(root / "home"),
        WEIGHBRIDGE_TASK_CONFIGS=str(FIXTURES / "task_configs"),
        XDG_CONFIG_HOME=str(root / "config"),
        NO_COLOR="1",
        COLUMNS="200",
    )
    env.update(extra)
    return env


@dataclass
class Cli:
    """Runs `weighbridge` in `cwd` with `env`: the installed command, or the same app in-process.

    In-process runs (typer's CliRunner: same app, same exit codes, stdout and stderr kept
    apart) save an interpreter start per command; `installed` always runs the real script.
    """

    env: dict[str, str]
    cwd: Path
    # The log of the server these commands talk to, quoted when a command fails.
    server_log: Path | None = None
    in_process: bool = False

    def run(self, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
        if self.in_process:
            return self._invoke(list(args), {**self.env, **env})
        return self.installed(*args, timeout=timeout, **env)

    def _invoke(self, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
        from typer.testing import CliRunner

        from cli.main import app

        # Unset what the test environment does not name, as a fresh process would have it.
        overrides: dict[str, str | None] = {
            k: None for k in os.environ if k.startswith("WEIGHBRIDGE_") and k not in env
        }
        overrides.update(env)
        with contextlib.chdir(self.cwd):
            result = CliRunner().invoke(app, args, env=overrides)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)

    def installed(self, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [WEIGHBRIDGE, *args],
            capture_output=True,
            text=True,
            env={**self.env, **env},
            cwd=self.cwd,
            timeout=timeout,
        )

    def popen(self, *args: str, log: Path | None = None, **env: str) -> subprocess.Popen:
        """Start a long-running command; a server logs to `log` (a pipe nobody reads fills up)."""
        out = open(log, "w") if log else subprocess.PIPE  # noqa: SIM115 (the child owns it)
        try:
            return subprocess.Popen(
                [WEIGHBRIDGE, *args],
                stdout=out,
                stderr=subprocess.STDOUT if log else subprocess.PIPE,
                text=True,
                env={**self.env, **env},
                cwd=self.cwd,
            )
        finally:
            if log:
                out.close()

    def json(self, *args: str, expect: int = 0, **env: str) -> dict:
        """Run with --json; stdout must be exactly one JSON document."""
        result = self.run(*args, "--json", **env)
        assert result.returncode == expect, (
            f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
            f"{self.log_tail()}"
        )
        return json.loads(result.stdout)

    def log_tail(self, lines: int = 40) -> str:
        if self.server_log is None or not self.server_log.exists():
            return ""
        tail = self.server_log.read_text(errors="replace").splitlines()[-lines:]
        return "\nserver log:\n" + "\n".join(tail)


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    # No server answers at the public URL (admin commands check the server found there).
    nobody = f"http://127.0.0.1:{free_port()}"
    return Cli(env=clean_env(tmp_path, WEIGHBRIDGE_PUBLIC_URL=nobody), cwd=tmp_path)


def wait_until_healthy(
    url: str, process: subprocess.Popen, log: Path, timeout: float = START_TIMEOUT
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"the server exited with {process.returncode}:\n{log.read_text(errors='replace')}"
            )
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the server did not answer {url}/healthz in {timeout}s")


def stop_server(process: subprocess.Popen, timeout: float = 20) -> int:
    """SIGTERM, as a service manager would; the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"the server did not stop within {timeout}s of SIGTERM") from None


@dataclass
class Server:
    url: str
    cli: Cli
    process: subprocess.Popen


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`weighbridge serve api` on a free port with its own home (SQLite, local storage).

    Only the API role runs, so no builder picks up an upload while a test looks at it.
    """
    pytest.importorskip("api.app", reason="the API app is not part of this build yet")
    root = tmp_path_factory.mktemp("server")
    log = root / "server.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cli = Cli(env=clean_env(root, WEIGHBRIDGE_PUBLIC_URL=url), cwd=root, server_log=log)
    process = cli.popen("serve", "api", "--port", str(port), log=log)
    try:
        wait_until_healthy(url, process, log)
        yield Server(url=url, cli=cli, process=process)
    finally:
        stop_server(process)
