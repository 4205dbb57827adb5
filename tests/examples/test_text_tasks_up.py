"""The text tasks through `weighbridge up --demo`: the demo uploads the sentiment and QA
baselines, the stack builds and evaluates them on the hidden sets, and each reaches the score
docs/tasks.md states; the scores equal scikit-learn's and the SQuAD v1.1 rules' on the
predictions the stack stored."""

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
from sklearn.metrics import accuracy_score, f1_score

from core.datasets import generate_rows
from task_configs import FOLDER as SHIPPED_TASKS
from tests.conftest import free_port
from tests.examples.test_demo import DONE_MARKER, weighbridge_command
from tests.examples.test_qa import EXACT_MATCH_FLOOR, F1_FLOOR, squad_scores
from tests.examples.test_sentiment import ACCURACY_FLOOR, MACRO_F1_FLOOR

pytestmark = pytest.mark.slow

UPLOADED = re.compile(r"Uploaded (\S+): submission (\S+)")


def stored_predictions(home: Path, sid: str, dataset: str) -> list[dict]:
    path = home / "storage" / "submissions" / sid / "results" / dataset / "predictions.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_up_demo_evaluates_the_text_baselines_to_their_stated_scores(tmp_path: Path) -> None:
    configs = tmp_path / "task_configs"
    configs.mkdir()
    for task in ("sentiment", "qa"):
        (configs / f"{task}.toml").write_text((SHIPPED_TASKS / f"{task}.toml").read_text())
    home = tmp_path / "home"
    port = free_port()
    env = {
        **os.environ,
        "WEIGHBRIDGE_HOME": str(home),
        "WEIGHBRIDGE_TASK_CONFIGS": str(configs),
        "COLUMNS": "160",
    }
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
            assert set(ids) == {"sentiment-bow", "qa-span"}, output[-4000:]
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                records = {n: client.get(f"/api/v1/submissions/{i}").json() for n, i in ids.items()}
                scores = {
                    n: {
                        (s["dataset"], s["metric"]): s["value"]
                        for s in client.get(f"/api/v1/submissions/{i}/results").json()["scores"]
                    }
                    for n, i in ids.items()
                }
                boards = {
                    t: client.get(f"/api/v1/tasks/{t}/leaderboard").json()
                    for t in ("sentiment", "qa")
                }
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    for name, record in records.items():
        assert record["status"] == "done", (name, record.get("error"))
    assert [r["model"] for r in boards["sentiment"]["rows"]] == ["sentiment-bow"]
    assert [r["model"] for r in boards["qa"]["rows"]] == ["qa-span"]

    # Sentiment: macro-F1 and accuracy as scikit-learn computes them on the stored answers.
    heldout = generate_rows("sentiment", {"split": "heldout"})
    stored = stored_predictions(home, ids["sentiment-bow"], "heldout")
    assert [p["uid"] for p in stored] == [r["uid"] for r in heldout]
    predicted = [p["outputs"]["label"] for p in stored]
    gold = [r["label"] for r in heldout]
    sentiment = scores["sentiment-bow"]
    macro_f1 = f1_score(gold, predicted, average="macro")
    assert sentiment["heldout", "macro_f1"] == pytest.approx(macro_f1, abs=1e-12)
    assert sentiment["heldout", "accuracy"] == pytest.approx(
        accuracy_score(gold, predicted), abs=1e-12
    )
    assert macro_f1 >= MACRO_F1_FLOOR, macro_f1
    assert sentiment["heldout", "accuracy"] >= ACCURACY_FLOOR
    # Robustness: the share of perturbed reviews answered as the model answered the original.
    again = stored_predictions(home, ids["sentiment-bow"], "heldout-perturbed")
    unchanged = sum(
        a["outputs"]["label"] == p for a, p in zip(again, predicted, strict=True)
    ) / len(predicted)
    assert sentiment["heldout-perturbed", "robustness"] == pytest.approx(unchanged, abs=1e-12)
    assert 0.6 < unchanged < 1.0

    # QA: exact match and F1 as the SQuAD v1.1 rules (written in test_qa.py) give them.
    heldout = generate_rows("qa", {"split": "heldout"})
    stored = stored_predictions(home, ids["qa-span"], "heldout")
    assert [p["uid"] for p in stored] == [r["uid"] for r in heldout]
    answers = [p["outputs"]["answer"] for p in stored]
    exact, f1 = squad_scores(answers, [r["answers"] for r in heldout])
    assert scores["qa-span"]["heldout", "exact_match"] == pytest.approx(exact, abs=1e-12)
    assert scores["qa-span"]["heldout", "squad_f1"] == pytest.approx(f1, abs=1e-12)
    assert f1 >= F1_FLOOR and exact >= EXACT_MATCH_FLOOR, (f1, exact)
