"""Robustness and fairness (Dynaboard): a model's answers on a perturbed copy of a dataset,
scored with the primary metric against its OWN answers on the original, stored once."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import metrics
from core.context import Services, start_services
from core.db import Database
from core.models import Score, Submission
from core.queue import eval_queue
from core.submissions import list_scores
from tests.conftest import FIXTURES, make_settings
from tests.evaluator.factories import (
    FLEET,
    events_of,
    make_built_submission,
    make_user,
    status_of,
    store_dataset,
    toy_rows,
    wait_for,
    wait_terminal,
)
from tests.evaluator.models import pack_mar, write_folder
from tests.evaluator.test_hwinfo import assert_hwinfo_document
from tests.evaluator.test_worker import evaluator

# Parity, wrong where x ends in 3 (so answers and labels differ), and flipped from x >= 1000
# on: a copy of x shifted by 1000 keeps x's label and last digit but gets the other answer.
SHIFTY = """
def handle(data, context):
    if data is None:
        return None
    out = []
    for item in data:
        x = item["body"]["x"]
        answer = x % 2
        if x % 10 == 3:
            answer = 1 - answer
        if x >= 1000:
            answer = 1 - answer
        out.append({"label": answer})
    return out
"""

PERTURBED = """
[[datasets]]
name = "shifted"
source = "generator:toy"
perturbation_of = "test"

[[datasets]]
name = "pairs"
source = "generator:toy"
perturbation_of = "test"
perturbation = "fairness"
weight = 0
"""


@pytest.fixture
async def services(tmp_path: Path, database_url: str, db: Database) -> AsyncIterator[Services]:
    """The toy task with two perturbations of `test` and robustness among its metrics."""
    folder = tmp_path / "task_configs"
    folder.mkdir()
    toy = (FIXTURES / "task_configs" / "toy.toml").read_text()
    toy = toy.replace(
        'metrics = [{ name = "accuracy" }, { name = "macro_f1" }]',
        'metrics = [{ name = "accuracy" }, { name = "macro_f1" }, { name = "robustness" }]',
    )
    head, sep, tail = toy.partition("[limits]")
    (folder / "toy.toml").write_text(head + PERTURBED + "\n" + sep + tail)
    settings = make_settings(tmp_path, database_url, task_configs=folder)
    started = await start_services(settings, migrate=False)
    assert started.tasks["toy"].dataset("pairs").delta_metric == "fairness"
    yield started
    await started.close()


def shifted_rows(original: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One copy per original, every 4th shifted by 1000, in reverse order (pairing is by
    `original_uid`, not by position)."""
    rows = [
        {
            "uid": f"s-{i:03d}",
            "original_uid": row["uid"],
            "x": row["x"] + (1000 if i % 4 == 0 else 0),
            "label": row["label"],
        }
        for i, row in enumerate(original)
    ]
    return rows[::-1]


def pair_rows(original: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Two copies of each of the first 10 originals: one unchanged, one shifted."""
    return [
        {"uid": f"p-{i:03d}-{k}", "original_uid": row["uid"], "x": row["x"] + 1000 * k,
         "label": row["label"]}
        for i, row in enumerate(original[:10])
        for k in (0, 1)
    ]  # fmt: skip


async def stored_answers(services: Services, sid: str, dataset: str) -> dict[str, int]:
    data = await services.storage.read_bytes(
        f"submissions/{sid}/results/{dataset}/predictions.jsonl"
    )
    lines = [json.loads(line) for line in data.splitlines()]
    return {line["uid"]: line["outputs"]["label"] for line in lines}


async def evaluated(services: Services, tmp_path: Path) -> tuple[str, Any, list, list]:
    original = toy_rows(40)
    shifted = shifted_rows(original)
    test = await store_dataset(services, original, name="test")
    perturbed = await store_dataset(services, shifted, name="shifted")
    perturbed["perturbation_of"] = "test"
    pairs = await store_dataset(services, pair_rows(original), name="pairs")
    pairs["perturbation_of"] = "test"
    user = await make_user(services)
    mar = pack_mar(write_folder(tmp_path / "shifty", SHIFTY), tmp_path / "shifty.mar")
    sid, envelope = await make_built_submission(
        services, user, mar, [test, perturbed, pairs], eval_overrides={"bootstrap_resamples": 200}
    )
    async with evaluator(services):
        await wait_terminal(services, [sid], within=60)
    assert await status_of(services, sid) == "done"
    return sid, envelope, original, shifted


async def test_robustness_is_the_primary_metric_against_the_models_own_answers(
    services: Services, tmp_path: Path
) -> None:
    sid, _envelope, _original, shifted = await evaluated(services, tmp_path)

    async with services.db.session() as session:
        scores = {(s.dataset, s.metric): s for s in await list_scores(session, sid)}
    # Per-dataset task metrics skip the delta metric; deltas live on the perturbed datasets.
    assert ("test", "robustness") not in scores and ("shifted", "fairness") not in scores
    robustness = scores[("shifted", "robustness")]
    fairness = scores[("pairs", "fairness")]

    # By construction: the 10 shifted copies (every 4th of 40) change the answer -> 30/40.
    assert robustness.value == 0.75
    # And it is what the definition says, computed here from the stored predictions.
    before = await stored_answers(services, sid, "test")
    after = await stored_answers(services, sid, "shifted")
    pairs = [(after[row["uid"]], before[row["original_uid"]]) for row in shifted]
    assert robustness.value == metrics.compute(
        "accuracy", [p for p, _ in pairs], [o for _, o in pairs]
    )
    # ... which is not the accuracy on the perturbed set (that one is against the labels).
    assert scores[("shifted", "accuracy")].value != robustness.value
    assert robustness.n_examples == 40
    assert robustness.ci_low is not None and robustness.ci_high is not None
    assert robustness.ci_low <= robustness.value <= robustness.ci_high < 1.0
    assert robustness.extra["kind"] == "delta"
    assert robustness.extra["original"] == "test" and robustness.extra["of"] == "accuracy"
    assert robustness.extra["originals"] == 40

    # Fairness: 10 originals, two copies each, one of which changes the answer -> mean 0.5.
    assert fairness.value == 0.5 and fairness.n_examples == 20
    assert fairness.extra["originals"] == 10
    assert fairness.ci_low == fairness.ci_high == 0.5  # every original scores 0.5

    # The perturbed run's result.json carries its delta; the receipt lists deltas and hwinfo.
    result = json.loads(
        await services.storage.read_bytes(f"submissions/{sid}/results/shifted/result.json")
    )
    assert {s["metric"]: s["value"] for s in result["scores"]}["robustness"] == 0.75
    events = await events_of(services, sid)
    deltas = [e for e in events if e.type == "dataset.delta"]
    assert [e.envelope["payload"]["metric"] for e in deltas] == ["robustness", "fairness"]
    assert "robustness 0.75" in deltas[0].message
    receipt = events[-1].envelope["payload"]
    assert events[-1].type == "receipt"
    assert {(d["dataset"], d["metric"], d["value"]) for d in receipt["deltas"]} == {
        ("shifted", "robustness", 0.75),
        ("pairs", "fairness", 0.5),
    }
    assert set(receipt["hwinfo"]) == {"test", "shifted", "pairs"}
    for dataset, key in receipt["hwinfo"].items():
        assert key == f"submissions/{sid}/results/{dataset}/hwinfo.json"
        document = json.loads(await services.storage.read_bytes(key))
        assert_hwinfo_document(document)
        assert document["run"]["dataset"] == dataset
    assert receipt["hardware"]["effective_cores"] > 0


async def test_redelivery_stores_one_robustness_score(services: Services, tmp_path: Path) -> None:
    sid, envelope, _original, _shifted = await evaluated(services, tmp_path)

    async def count(metric: str) -> int:
        async with services.db.session() as session:
            return await session.scalar(
                sa.select(sa.func.count())
                .select_from(Score)
                .where(Score.submission_id == sid, Score.metric == metric)
            )

    async def drained() -> bool:
        return await services.queue.depth(eval_queue(FLEET)) == 0

    # Delivered again once done: acknowledged, nothing added.
    events_before = len(await events_of(services, sid))
    async with evaluator(services):
        await services.queue.send(eval_queue(FLEET), envelope)
        await wait_for(drained, within=30)
    assert len(await events_of(services, sid)) == events_before
    assert await count("robustness") == 1 and await count("fairness") == 1

    # An evaluator that died after every dataset was done but before the delta was stored:
    # the next delivery skips the datasets and computes the delta from the stored predictions.
    async with services.db.session() as session:
        await session.execute(
            sa.delete(Score).where(Score.submission_id == sid, Score.metric == "robustness")
        )
        await session.execute(
            sa.update(Submission).where(Submission.id == sid).values(status="evaluating")
        )
    async with evaluator(services):
        await services.queue.send(eval_queue(FLEET), envelope)
        await wait_terminal(services, [sid], within=60)
        await wait_for(drained, within=30)
    assert await status_of(services, sid) == "done"
    assert await count("robustness") == 1 and await count("fairness") == 1
    async with services.db.session() as session:
        scores = {(s.dataset, s.metric): s.value for s in await list_scores(session, sid)}
    assert scores[("shifted", "robustness")] == 0.75
    later = [e.type for e in (await events_of(services, sid))[events_before:]]
    assert "dataset.started" not in later and later.count("dataset.skipped") == 3
    assert later.count("dataset.delta") == 1  # robustness again; fairness was still stored


async def test_a_perturbation_that_does_not_match_its_original_fails_clearly(
    services: Services, tmp_path: Path
) -> None:
    original = toy_rows(12)
    test = await store_dataset(services, original, name="test")
    orphans = [{**row, "original_uid": f"elsewhere-{i}"} for i, row in enumerate(original)]
    perturbed = await store_dataset(services, orphans, name="shifted")
    user = await make_user(services)
    mar = pack_mar(write_folder(tmp_path / "shifty", SHIFTY), tmp_path / "shifty.mar")
    sid, _ = await make_built_submission(services, user, mar, [test, perturbed])
    async with evaluator(services):
        await wait_terminal(services, [sid], within=60)

    async with services.db.session() as session:
        submission = await session.get(Submission, sid)
        assert submission is not None
        stored = {(s.dataset, s.metric) for s in await list_scores(session, sid)}
    assert submission.status == "failed" and submission.failed_stage == "evaluate:shifted"
    assert "12 of its 12 examples have no original there" in (submission.error or "")
    assert "'elsewhere-0'" in (submission.error or "")
    assert ("shifted", "accuracy") in stored and ("shifted", "robustness") not in stored
