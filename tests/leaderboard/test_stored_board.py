"""The stored board: rebuilt when it changes, read back by one query that never recomputes."""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa

from core.boards import read_leaderboard, rebuild_stale_leaderboards, stale_tasks
from core.context import Services
from core.leaderboard import compute_leaderboard
from core.models import LeaderboardEntry, Submission
from core.submissions import purge_submission
from core.taskconfig import load_task_configs
from core.tasks import get_task, sync_tasks
from tests.conftest import ROOT
from tests.leaderboard.test_leaderboard import digits_services, populate, rebuild, scores
from tests.notifications.conftest import make_owner, make_scored_submission, task_row

__all__ = ["digits_services"]  # the fixture, imported for these tests


async def test_a_read_is_one_query_on_the_stored_rows(digits_services: Services) -> None:
    made = await populate(digits_services)
    statements: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:
        statements.append(statement)

    engine = digits_services.db.engine.sync_engine
    async with digits_services.db.session() as session:
        task = await get_task(session, "digits")
        sa.event.listen(engine, "before_cursor_execute", record)
        try:
            board = await read_leaderboard(
                session, task, weights={"macro_f1": 2}, viewer=made["bob"]
            )
        finally:
            sa.event.remove(engine, "before_cursor_execute", record)
    assert [r["model"] for r in board["rows"]] == ["secret", "cnn", "linear"]
    assert len(statements) == 1, statements
    (statement,) = statements
    assert "leaderboard_entries" in statement
    # Nothing recomputed: no scores, no runs (the sandbox flag is stored), no datasets.
    tables = set(re.findall(r"(?:FROM|JOIN)\s+\(?[\"`]?(\w+)", statement))
    assert tables == {"leaderboards", "leaderboard_entries", "submissions", "users"}, statement


async def test_the_stored_board_agrees_with_a_recomputation(digits_services: Services) -> None:
    made = await populate(digits_services)
    async with digits_services.db.session() as session:
        for viewer in (None, made["bob"]):
            stored = await read_leaderboard(session, "digits", viewer=viewer)
            computed = await compute_leaderboard(session, "digits", viewer=viewer)
            keys = ("rank", "model", "submission_id", "owner", "ci", "tied", "private")
            assert [{k: r[k] for k in keys} for r in stored["rows"]] == [
                {k: r[k] for k in keys} for r in computed["rows"]
            ]
            for ours, theirs in zip(stored["rows"], computed["rows"], strict=True):
                assert ours["score"] == pytest.approx(theirs["score"])
                assert ours["metrics"] == pytest.approx(theirs["metrics"])
                assert ours["datasets"] == theirs["datasets"]
            assert stored["unranked"] == computed["unranked"]
    assert stored["board"]["built"] is True and stored["board"]["stale"] is False


async def test_custom_weights_reorder_the_stored_rows(digits_services: Services) -> None:
    async with digits_services.db.session() as session:
        ada = await make_owner(session, "ada")
        task = await task_row(session, "digits")
        for name, acc, f1 in (("accurate", 0.95, 0.70), ("balanced", 0.94, 0.93)):
            await make_scored_submission(session, ada, task, scores(acc, f1), name=name)
    await rebuild(digits_services)
    async with digits_services.db.session() as session:
        default = await read_leaderboard(session, "digits")
        f1_heavy = await read_leaderboard(session, "digits", weights={"macro_f1": 8})
    assert [r["model"] for r in default["rows"]] == ["accurate", "balanced"]
    assert [r["model"] for r in f1_heavy["rows"]] == ["balanced", "accurate"]
    assert f1_heavy["rows"][0]["score"] > f1_heavy["rows"][1]["score"]
    # Ties are those of the default weights; here none came from a paired bootstrap (no
    # predictions were stored), and the JSON says so.
    assert f1_heavy["ties"] == {"weights": "default", "paired_bootstrap": 0, "interval_overlap": 1}
    assert all(r["pvalue"] is None for r in f1_heavy["rows"])


async def test_a_purged_or_no_longer_done_submission_leaves_the_board(
    digits_services: Services,
) -> None:
    made = await populate(digits_services)
    async with digits_services.db.session() as session:
        await purge_submission(
            session, digits_services.storage, made["linear"].id, user=made["bob"]
        )
        # The other way off a board: the submission is no longer done (an administrator's
        # correction; the state machine never moves a done submission itself).
        await session.execute(
            sa.update(Submission).where(Submission.id == made["cnn"].id).values(status="cancelled")
        )
    async with digits_services.db.session() as session:
        at_once = await read_leaderboard(session, "digits", viewer=made["bob"])
    # Gone at once (the read joins the live submission), and the board is marked stale.
    assert [r["model"] for r in at_once["rows"]] == ["secret"]
    assert at_once["board"]["stale"] is True
    assert await rebuild_stale_leaderboards(digits_services) == 1
    async with digits_services.db.session() as session:
        after = await read_leaderboard(session, "digits", viewer=made["bob"])
        stored = set(await session.scalars(sa.select(LeaderboardEntry.submission_id)))
    assert [r["model"] for r in after["rows"]] == ["secret"]
    assert after["board"]["stale"] is False
    assert made["linear"].id not in stored and made["cnn"].id not in stored


async def test_a_task_config_change_rebuilds_the_board(digits_services: Services) -> None:
    await populate(digits_services)
    async with digits_services.db.session() as session:
        assert await stale_tasks(session) == []
        before = await read_leaderboard(session, "digits")
        version = before["board"]["version"]
        config = load_task_configs(ROOT / "task_configs")["digits"]
        changed = config.model_copy(update={"leaderboard_weights": {"macro_f1": 9.0}})
        await sync_tasks(session, {"digits": changed})
    async with digits_services.db.session() as session:
        assert [t.slug for t in await stale_tasks(session)] == ["digits"]
        assert (await read_leaderboard(session, "digits"))["board"]["stale"] is True
    assert await rebuild_stale_leaderboards(digits_services) == 1
    async with digits_services.db.session() as session:
        after = await read_leaderboard(session, "digits")
        assert await stale_tasks(session) == []
    assert after["board"]["version"] == version + 1 and after["board"]["stale"] is False
    assert after["weights"]["macro_f1"] == 9.0


async def test_the_background_loop_rebuilds_a_board_marked_stale(digits_services: Services) -> None:
    import asyncio

    from core.boards import mark_leaderboard_stale, run_leaderboards

    stop = asyncio.Event()
    loop = asyncio.create_task(run_leaderboards(digits_services, stop, poll_seconds=0.05))
    try:
        async with digits_services.db.session() as session:
            ada = await make_owner(session, "ada")
            task = await task_row(session, "digits")
            await make_scored_submission(session, ada, task, scores(0.9, 0.9), name="late")
            assert task.id is not None
            await mark_leaderboard_stale(session, task.id)
        async with asyncio.timeout(10):
            while True:
                async with digits_services.db.session() as session:
                    board = await read_leaderboard(session, "digits")
                if not board["board"]["stale"] and board["rows"]:
                    break
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await loop
    assert [r["model"] for r in board["rows"]] == ["late"]


async def test_a_change_during_a_rebuild_leaves_the_board_stale_for_the_next_round(
    digits_services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    import core.boards
    from core.boards import mark_leaderboard_stale, rebuild_leaderboard

    made = await populate(digits_services)
    compute = core.boards.compute_entries

    async def compute_while_one_finishes(session, task, **kwargs):
        entries = await compute(session, task, **kwargs)
        # Another transaction (the evaluator's) marks the board while this one computes.
        async with digits_services.db.session() as other:
            await mark_leaderboard_stale(other, task.id)
        return entries

    monkeypatch.setattr(core.boards, "compute_entries", compute_while_one_finishes)
    async with digits_services.db.session() as session:
        await rebuild_leaderboard(session, await get_task(session, "digits"), storage=None)
    async with digits_services.db.session() as session:
        assert [t.slug for t in await stale_tasks(session)] == ["digits"]
        board = await read_leaderboard(session, "digits")
    assert board["board"]["stale"] is True
    assert [r["model"] for r in board["rows"]] == ["cnn", "linear"]
    assert made["cnn"].id == board["rows"][0]["submission_id"]
