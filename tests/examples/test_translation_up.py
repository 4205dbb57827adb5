"""The translation task through `weighbridge up --demo`: `up` serves the task's own fleet
beside `default`, the demo uploads the translation baseline, the `translation` fleet's
evaluator evaluates it on the 2,000 hidden sentences, and it reaches the BLEU and chrF
docs/tasks.md states; both equal sacrebleu's on the predictions the stack stored."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import sacrebleu

from core.datasets import generate_rows
from task_configs import FOLDER as SHIPPED_TASKS
from tests.conftest import free_port
from tests.e2e.stack import query
from tests.examples.test_demo import DONE_MARKER, weighbridge_command

pytestmark = pytest.mark.slow

UPLOADED = re.compile(r"Uploaded (\S+): submission (\S+)")
# docs/tasks.md: the baseline scores BLEU 90.89, chrF 96.64 on heldout.
STATED = {"bleu": 90.89, "chrf": 96.64}


def test_up_demo_evaluates_the_translation_baseline_on_its_fleet_to_its_stated_score(
    tmp_path: Path,
) -> None:
    configs = tmp_path / "task_configs"
    configs.mkdir()
    (configs / "translation.toml").write_text((SHIPPED_TASKS / "translation.toml").read_text())
    home = tmp_path / "home"
    port = free_port()
    env = {
        **os.environ,
        "WEIGHBRIDGE_HOME": str(home),
        "WEIGHBRIDGE_TASK_CONFIGS": str(configs),
        "COLUMNS": "160",
    }
    env.pop("WEIGHBRIDGE_FLEETS", None)  # `up` serves every task's fleet by default
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [weighbridge_command(), "up", "--port", str(port), "--demo"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
        )
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and proc.poll() is None:
                text = log.read_text(errors="replace")
                if DONE_MARKER in text or "Demo stopped" in text:
                    break
                time.sleep(0.5)
            output = log.read_text(errors="replace")
            assert DONE_MARKER in output, output[-4000:]
            ids = dict(UPLOADED.findall(output))
            assert set(ids) == {"translation-lexicon"}, output[-4000:]
            sid = ids["translation-lexicon"]
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                record = client.get(f"/api/v1/submissions/{sid}").json()
                results = client.get(f"/api/v1/submissions/{sid}/results").json()
                board = client.get("/api/v1/tasks/translation/leaderboard").json()
                page = client.get("/tasks/translation")
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    assert record["status"] == "done", record.get("error")
    assert [r["model"] for r in board["rows"]] == ["translation-lexicon"]
    # The task's public page ranks it, with its BLEU, without signing in.
    assert page.status_code == 200 and "translation-lexicon" in page.text and "BLEU" in page.text
    # The translation fleet's evaluator did the work (the events and the receipt say so).
    events = query(
        f"sqlite+aiosqlite:///{home / 'weighbridge.db'}",
        f"SELECT type, envelope FROM events WHERE submission_id = '{sid}' "
        "AND type IN ('status.evaluating', 'receipt')",
    )
    assert {kind for kind, _ in events} == {"status.evaluating", "receipt"}
    for _, envelope in events:
        payload = (json.loads(envelope) if isinstance(envelope, str) else envelope)["payload"]
        assert payload["evaluator"]["fleet"] == "translation", payload["evaluator"]

    scores = {(s["dataset"], s["metric"]): s["value"] for s in results["scores"]}
    path = home / "storage" / "submissions" / sid / "results" / "heldout" / "predictions.jsonl"
    stored = [json.loads(line) for line in path.read_text().splitlines()]
    heldout = generate_rows("translation", {"split": "heldout"})
    assert [p["uid"] for p in stored] == [r["uid"] for r in heldout]
    hypotheses = [p["outputs"]["translation"] for p in stored]
    references = [[r["translation"] for r in heldout]]
    bleu = sacrebleu.corpus_bleu(hypotheses, references).score
    chrf = sacrebleu.corpus_chrf(hypotheses, references).score
    assert scores["heldout", "bleu"] == pytest.approx(bleu, abs=1e-9)
    assert scores["heldout", "chrf"] == pytest.approx(chrf, abs=1e-9)
    assert (round(bleu, 2), round(chrf, 2)) == (STATED["bleu"], STATED["chrf"])
