"""`weighbridge up --demo` end to end: upload the shipped examples, evaluate, rank, email."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port

DONE_MARKER = "its token (shown once)"


def weighbridge_command() -> str:
    """The installed command: next to this interpreter (an unactivated venv), else on PATH."""
    beside = Path(sys.executable).with_name("weighbridge")
    return str(beside) if beside.exists() else (shutil.which("weighbridge") or "weighbridge")


def run_up_demo(home: Path, port: int, *, emails: int, timeout: float = 240) -> str:
    """Run `weighbridge up --demo` until the demo is over and `emails` are in the outbox."""
    env = {
        **os.environ,
        "WEIGHBRIDGE_HOME": str(home),
        "WEIGHBRIDGE_TASK_CONFIGS": str(ROOT / "task_configs"),
        "COLUMNS": "160",
    }
    log = home.parent / f"up-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [weighbridge_command(), "up", "--port", str(port), "--demo"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and proc.poll() is None:
                text = log.read_text(errors="replace")
                if "Demo stopped" in text:
                    break
                if DONE_MARKER in text and len(list(home.glob("outbox/*.eml"))) >= emails:
                    break
                time.sleep(0.5)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return log.read_text(errors="replace")


@pytest.mark.slow
def test_up_demo_ranks_the_cnn_first_and_emails_every_upload(tmp_path: Path) -> None:
    from cli.demo import UPLOADS

    home = tmp_path / "home"
    # One email per shipped example, each evaluated by its task's fleet (translation's own).
    output = run_up_demo(home, free_port(), emails=len(UPLOADS))
    assert DONE_MARKER in output, output[-4000:]
    board = output[output.index("leaderboard: digits") :]
    assert board.index("digits-cnn") < board.index("digits-linear")
    assert "translation-lexicon" in output[output.index("leaderboard: translation") :]
    emails = sorted((home / "outbox").glob("*.eml"))
    assert len(emails) == len(UPLOADS)
    assert any("rank 1 of 2" in e.read_text() for e in emails)
    assert any("translation-lexicon" in e.read_text() for e in emails)

    again = run_up_demo(home, free_port(), emails=len(UPLOADS))
    for _, name in UPLOADS:
        assert f"Reusing {name}" in again, again[-4000:]
    assert "Uploaded" not in again
    assert len(list((home / "outbox").glob("*.eml"))) == len(UPLOADS)
