"""The README's tour, run as it stands: the commands are read from README.md itself, so the
two cannot drift. It runs from the checkout (to activate the environment), then in a folder of
a fresh home outside it, against the server the tour starts; the only change is the port."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.conftest import free_port
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

TOUR_MARKER = "<!-- tour:"
TOUR_PORT = "8080"


def tour_block(readme: Path = ROOT / "README.md") -> str:
    """The fenced block that follows the tour marker."""
    text = readme.read_text()
    at = text.index(TOUR_MARKER)
    match = re.compile(r"```[a-z]*\n(.*?)```", re.S).search(text, at)
    assert match is not None, "README.md: no fenced block after the tour marker"
    return match.group(1)


def tour_env(home: Path) -> dict[str, str]:
    """A new user's shell: a fresh HOME, no Weighbridge settings, no environment active."""
    venv_bin = str(Path(sys.executable).parent)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("WEIGHBRIDGE_", "XDG_")) and k not in ("VIRTUAL_ENV", "PYTHONPATH")
    }
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    env.update(HOME=str(home), NO_COLOR="1", COLUMNS="160")
    return env


def test_the_tour_uses_a_port_we_can_move_and_no_checkout_paths() -> None:
    block = tour_block()
    assert TOUR_PORT in block
    # Past its first line (activating the environment) nothing may lean on the checkout.
    for line in block.splitlines()[1:]:
        command = line.split("#", 1)[0]
        assert "examples/" not in command and "task_configs" not in command, line


def test_the_readme_tour_runs_verbatim_outside_the_checkout(tmp_path: Path) -> None:
    if not (ROOT / ".venv" / "bin" / "activate").is_file():
        pytest.skip("the tour activates the checkout's .venv, which `make install` creates")
    home = tmp_path / "home"
    home.mkdir()
    port = str(free_port())
    script = "set -eo pipefail\n" + tour_block().replace(TOUR_PORT, port)
    process = subprocess.Popen(
        ["bash", "-c", script],
        cwd=ROOT,
        env=tour_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # the server the tour starts is in this group: stop it after
    )
    tour = home / "weighbridge-tour"
    try:
        output, _ = process.communicate(timeout=600)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        if process.poll() is None:
            process.kill()
            process.wait()
    log = tour / "server.log"
    server_log = log.read_text(errors="replace")[-6000:] if log.exists() else "(no server.log)"
    assert process.returncode == 0, f"{output}\n--- server.log ---\n{server_log}"

    # Everything the tour made is in its own folder, none of it in the checkout.
    assert (tour / ".weighbridge" / "weighbridge.db").is_file()
    assert (tour / "my-model" / "handler.py").is_file()
    assert (tour / "my-cnn" / "model.pt").is_file()
    assert not (ROOT / "my-cnn").exists() and not (ROOT / "my-model").exists()
    # The example was checked, uploaded, evaluated and ranked.
    assert "logged in to" in output
    assert "answers well-formed" in output
    assert re.search(r"my-cnn\b.*\bdone\b", output), output
    leaderboard = output[output.rindex("digits") :]
    assert "my-cnn" in leaderboard
    assert "Traceback" not in output, output
