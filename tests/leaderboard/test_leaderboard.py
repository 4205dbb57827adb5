"""The leaderboard ranks done submissions by Dynascore over every hidden scoring dataset.

The board is stored (core.boards) and rebuilt when it changes; these tests rebuild it where the
service's background loop would, then read the stored rows.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from core.boards import rank_of, read_leaderboard, rebuild_leaderboard
from core.context import Services, start_services
from core.db import Database
from core.errors import WeighbridgeError
from core.tasks import get_task
from tests.conftest import ROOT, make_settings
from tests.notifications.conftest import make_owner, make_scored_submission, task_row


@pytest.fixture
async def digits_services(
    tmp_path: Path, database_url: str, db: Database
) -> AsyncIterator[Services]:
    # The shipped digits task alone: the other shipped tasks would be boards of their own here.
    configs = tmp_path / "task_configs"
    configs.mkdir()
    shutil.copy(ROOT / "task_configs" / "digits.toml", configs)
    settings = make_settings(tmp_path, database_url, task_configs=configs)
    services = await start_services(settings, migrate=False)
    yield services
    await services.close()


async def rebuild(services: Services, slug: str = "digits", *, storage: bool = False) -> None:
    """What the background loop does after a change: rebuild the task's stored board."""
    async with services.db.session() as session:
        task = await get_task(session, slug)
        await rebuild_leaderboard(session, task, storage=services.storage if storage else None)


def scores(acc: float, f1: float, *, noisy: bool = True, ci: float = 0.02) -> dict:
    sets = {"heldout": {"accuracy": (acc, acc - ci, acc + ci), "macro_f1": f1}}
    if noisy:
        sets["heldout-noisy"] = {
            "accuracy": (acc - 0.05, acc - 0.05 - ci, acc - 0.05 + ci),
            "macro_f1": f1 - 0.05,
            # Robustness lives on the perturbed set only (answers vs the model's own on heldout).
            "robustness": 0.96,
        }
    return sets


async def populate(services: Services) -> dict:
    async with services.db.session() as session:
        ada = await make_owner(session, "ada")
        bob = await make_owner(session, "bob")
        task = await task_row(session, "digits")
        made = {
            "cnn": await make_scored_submission(session, ada, task, scores(0.98, 0.98), name="cnn"),
            "linear": await make_scored_submission(
                session, bob, task, scores(0.90, 0.89), name="linear"
            ),
            "partial": await make_scored_submission(
                session, bob, task, scores(0.99, 0.99, noisy=False), name="partial"
            ),
            "secret": await make_scored_submission(
                session, bob, task, scores(0.995, 0.995), name="secret", private=True
            ),
            "running": await make_scored_submission(
                session, ada, task, scores(1.0, 1.0), name="running", status="evaluating"
            ),
        }
    await rebuild(services)
    return {"ada": ada, "bob": bob, **made}


async def test_better_model_ranks_first_and_incomplete_ones_are_not_ranked(
    digits_services: Services,
) -> None:
    made = await populate(digits_services)
    async with digits_services.db.session() as session:
        board = await read_leaderboard(session, "digits")
    assert board["task"] == "digits"
    names = [row["model"] for row in board["rows"]]
    assert names == ["cnn", "linear"]  # no private, no unfinished, no partial
    first, second = board["rows"]
    assert (first["rank"], second["rank"]) == (1, 2)
    assert first["submission_id"] == made["cnn"].id and first["owner"] == "ada"
    assert first["score"] > second["score"]
    # Dataset-weighted (heldout 1, heldout-noisy 0.5) average of the metric.
    assert first["metrics"]["accuracy"] == pytest.approx((0.98 + 0.5 * 0.93) / 1.5)
    assert set(first["metrics"]) == {"accuracy", "macro_f1", "robustness"}
    # A delta metric is one value per model: its (weighted) mean over the sets measuring it.
    assert first["metrics"]["robustness"] == pytest.approx(0.96)
    lo, hi = first["ci"]
    assert lo < first["metrics"]["accuracy"] < hi
    assert first["tied"] is False and second["tied"] is False
    assert [u["model"] for u in board["unranked"]] == ["partial"]
    assert "heldout-noisy" in board["unranked"][0]["reason"]


async def test_private_submissions_are_shown_only_to_their_owner(
    digits_services: Services,
) -> None:
    made = await populate(digits_services)
    async with digits_services.db.session() as session:
        as_bob = await read_leaderboard(session, "digits", viewer=made["bob"])
        as_ada = await read_leaderboard(session, "digits", viewer=made["ada"])
        bob_rank = await rank_of(session, "digits", made["secret"].id, viewer=made["bob"])
        public_rank = await rank_of(session, "digits", made["secret"].id)
        linear_rank = await rank_of(session, "digits", made["linear"].id)
    assert [r["model"] for r in as_bob["rows"]] == ["secret", "cnn", "linear"]
    assert as_bob["rows"][0]["private"] is True
    assert [r["model"] for r in as_ada["rows"]] == ["cnn", "linear"]
    assert bob_rank == (1, 3)
    assert public_rank is None
    assert linear_rank == (2, 2)


async def test_weights_override_changes_the_order(digits_services: Services) -> None:
    async with digits_services.db.session() as session:
        ada = await make_owner(session, "ada")
        task = await task_row(session, "digits")
        # Higher accuracy but lower macro F1 than "balanced".
        await make_scored_submission(session, ada, task, scores(0.95, 0.80), name="accurate")
        await make_scored_submission(session, ada, task, scores(0.94, 0.93), name="balanced")
    await rebuild(digits_services)
    async with digits_services.db.session() as session:
        default = await read_leaderboard(session, "digits")
        f1_only = await read_leaderboard(session, "digits", weights={"accuracy": 0, "macro_f1": 1})
        with pytest.raises(WeighbridgeError, match="not a metric"):
            await read_leaderboard(session, "digits", weights={"bleu": 1})
        with pytest.raises(WeighbridgeError, match="non-negative"):
            await read_leaderboard(session, "digits", weights={"accuracy": -1})
    assert [r["model"] for r in default["rows"]] == ["accurate", "balanced"]
    assert [r["model"] for r in f1_only["rows"]] == ["balanced", "accurate"]
    # The override replaces the named weights; robustness keeps its default.
    assert f1_only["weights"] == {"accuracy": 0.0, "macro_f1": 1.0, "robustness": 1.0}


async def test_overlapping_intervals_are_marked_tied(digits_services: Services) -> None:
    async with digits_services.db.session() as session:
        ada = await make_owner(session, "ada")
        task = await task_row(session, "digits")
        await make_scored_submission(session, ada, task, scores(0.95, 0.95), name="a")
        await make_scored_submission(session, ada, task, scores(0.949, 0.949), name="b")
        await make_scored_submission(session, ada, task, scores(0.80, 0.80), name="c")
    await rebuild(digits_services)
    async with digits_services.db.session() as session:
        board = await read_leaderboard(session, "digits")
    assert [(r["model"], r["tied"]) for r in board["rows"]] == [
        ("a", False),
        ("b", True),
        ("c", False),
    ]


async def test_an_empty_board(digits_services: Services) -> None:
    async with digits_services.db.session() as session:
        board = await read_leaderboard(session, "digits")
        with pytest.raises(WeighbridgeError, match="unknown task"):
            await read_leaderboard(session, "digitz")
    assert board["rows"] == [] and board["unranked"] == []


async def test_ties_come_from_a_paired_bootstrap_on_stored_predictions(
    digits_services: Services,
) -> None:
    import json

    from core.datasets import prepare_datasets, read_examples
    from core.models import Dataset

    services = digits_services
    await prepare_datasets(services)
    async with services.db.session() as session:
        ada = await make_owner(session, "ada")
        task = await task_row(session, "digits")
        made = {
            name: await make_scored_submission(session, ada, task, scores(acc, acc), name=name)
            for name, acc in (("a", 0.95), ("b", 0.949), ("c", 0.80))
        }
        rows = {
            d.name: d
            for d in await session.scalars(sa.select(Dataset).where(Dataset.task_id == task.id))
        }
    # a is right on all but every 20th example; b swaps one of a's errors for another
    # (the same accuracy: no evidence of a difference); c is also wrong on every 5th
    # example: a real, significant gap below b.
    for dataset in ("heldout", "heldout-noisy"):
        examples = await read_examples(services.storage, rows[dataset].uri, rows[dataset].sha256)
        for name, submission in made.items():
            lines = []
            for i, example in enumerate(examples):
                wrong = (i % 20 == 0 and not (name == "b" and i == 0)) or (
                    (name == "b" and i == 1) or (name == "c" and i % 5 == 1)
                )
                label = (example["label"] + 1) % 10 if wrong else example["label"]
                lines.append(json.dumps({"uid": example["uid"], "outputs": {"label": label}}))
            key = f"submissions/{submission.id}/results/{dataset}/predictions.jsonl"
            await services.storage.write_bytes(key, "\n".join(lines).encode())
    await rebuild(services, storage=True)
    async with services.db.session() as session:
        board = await read_leaderboard(session, "digits")
    got = {r["model"]: (r["tied"], r["pvalue"]) for r in board["rows"]}
    assert got["a"] == (False, None)
    assert got["b"][0] is True and got["b"][1] > 0.05
    assert got["c"][0] is False and got["c"][1] < 0.01


async def test_only_kinds_that_rank_are_on_the_board(digits_services: Services) -> None:
    """A benchmark run against a task may record numbers under the same names as a model's
    scores; its kind decides that it is tracked as a history, never ranked beside models."""
    await populate(digits_services)
    async with digits_services.db.session() as session:
        carol = await make_owner(session, "carol")
        task = await task_row(session, "digits")
        await make_scored_submission(
            session, carol, task, scores(0.999, 0.999), name="bench", kind="benchmark"
        )
        await make_scored_submission(
            session, carol, task, scores(0.999, 0.999), name="probe", kind="inspection"
        )
    await rebuild(digits_services)
    async with digits_services.db.session() as session:
        board = await read_leaderboard(session, "digits")
    assert [row["model"] for row in board["rows"]] == ["cnn", "linear"]
    assert [u["model"] for u in board["unranked"]] == ["partial"]
