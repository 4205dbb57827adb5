"""Sandbox user ids are shared out across every Weighbridge process on the machine, whatever
temporary folder each was started with: two sandboxes alive at once never get the same id
(closing a cell kills every process of its id, so a shared id killed the other's handler)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sandbox.uids import acquire_uid
from tests.conftest import ROOT

# Holds the lowest free id until its stdin closes; prints the id first.
HOLDER = """
import sys
from sandbox.uids import acquire_uid
slot = acquire_uid(first=int(sys.argv[1]), count=int(sys.argv[2]))
print(slot.uid, flush=True)
sys.stdin.read()
"""

# A range of its own, far from the one real sandboxes use, so this test never takes their ids.
FIRST, COUNT = 3_900_000, 8


def test_a_process_with_another_tmpdir_never_gets_an_id_held_here(tmp_path: Path) -> None:
    own = tmp_path / "elsewhere"
    own.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(FIRST), str(COUNT)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(own)},  # as a test's scratch or a PrivateTmp
    )
    try:
        assert holder.stdout is not None
        theirs = int(holder.stdout.readline())
        mine = acquire_uid(first=FIRST, count=COUNT)
        try:
            assert mine.uid != theirs, f"uid {theirs} was handed out twice"
        finally:
            mine.release()
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
