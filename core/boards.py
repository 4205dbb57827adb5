"""Stored leaderboards: marked stale where a board changes, rebuilt in the background, read by
one query.

A change that moves a board (a submission done or purged, a task config changed) calls
`mark_leaderboard_stale` in its own transaction: one UPDATE raising the board's `requested`
counter, so the request commits or rolls back with the change. `run_leaderboards` (a worker
loop of `weighbridge up` and `serve scheduler`) rebuilds every board whose `requested` is past
its `built` with `rebuild_leaderboard`: the scores, predictions and paired bootstraps of
core/leaderboard.py, once per change, never inside the evaluator's transaction. Reads
(`read_leaderboard`: the API, the web page, the CLI, the email's rank) use the stored rows only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from core.errors import WeighbridgeError
from core.leaderboard import (
    compute_entries,
    leaderboard_weights,
    scoring_datasets,
    tied_with_above,
    visible_to,
)
from core.models import Leaderboard as LeaderboardHeader
from core.models import LeaderboardEntry, Submission, Task, User, table_of, utcnow
from core.storage import Storage
from core.tasks import get_task, task_config

if TYPE_CHECKING:
    from core.context import Services

log = logging.getLogger(__name__)


async def mark_leaderboard_stale(session: AsyncSession, task_id: int) -> None:
    """Ask for the task's board to be rebuilt, in the caller's transaction."""
    header = table_of(LeaderboardHeader)
    raise_request = (
        sa.update(header)
        .where(header.c.task_id == task_id)
        .values(requested=header.c.requested + 1)
    )
    result = cast(CursorResult[Any], await session.execute(raise_request))
    if result.rowcount:
        return
    try:
        async with session.begin_nested():
            session.add(LeaderboardHeader(task_id=task_id, requested=1))
    except IntegrityError:
        # Another transaction made the header first: raise its counter instead.
        await session.execute(raise_request)


async def rebuild_leaderboard(
    session: AsyncSession, task: Task, *, storage: Storage | None
) -> LeaderboardHeader:
    """Recompute the task's board and replace its stored rows (the caller commits).

    Idempotent: rebuilding twice stores the same rows under a new version. A request that
    arrives while this runs leaves `requested` past `built`, so the board is rebuilt again.
    """
    assert task.id is not None
    header = await session.get(LeaderboardHeader, task.id)
    if header is None:
        header = LeaderboardHeader(task_id=task.id)
        session.add(header)
        await session.flush()
    requested, version = header.requested, header.version
    # The long part (scores, predictions, bootstraps) holds no lock: a submission finishing
    # meanwhile marks the board without waiting, and so stays stale for the next round.
    entries = await compute_entries(session, task, storage=storage)
    await session.refresh(header, with_for_update=True)
    if header.version != version and header.built >= requested:
        return header  # another rebuilder stored a board at least as new while we computed
    table = table_of(LeaderboardEntry)
    await session.execute(sa.delete(table).where(table.c.task_id == task.id))
    if entries:
        await session.execute(sa.insert(table), [{"task_id": task.id, **e} for e in entries])
    header.version += 1
    header.built = requested
    header.config_sha256 = task.config_sha256
    header.updated_at = utcnow()
    session.add(header)
    await session.flush()
    return header


async def stale_tasks(session: AsyncSession) -> list[Task]:
    """Tasks whose board was asked for again, never built, or built from another config."""
    header = table_of(LeaderboardHeader).c
    return list(
        await session.scalars(
            sa.select(Task)
            .outerjoin(table_of(LeaderboardHeader), header.task_id == col(Task.id))
            .where(
                sa.or_(
                    header.task_id.is_(None),
                    header.requested > header.built,
                    header.config_sha256 != col(Task.config_sha256),
                )
            )
            .order_by(col(Task.id))
        )
    )


async def rebuild_stale_leaderboards(services: Services) -> int:
    """Rebuild every stale board, each in its own transaction, then refresh the done emails
    that were waiting for their rank; returns how many boards were rebuilt."""
    from core.notifications import refresh_rank_pending_emails

    async with services.db.session() as session:
        tasks = await stale_tasks(session)
    for task in tasks:
        async with services.db.session() as session:
            fresh = await session.get(Task, task.id)
            if fresh is None:
                continue
            await rebuild_leaderboard(session, fresh, storage=services.storage)
        async with services.db.session() as session:
            fresh = await session.get(Task, task.id)
            if fresh is not None:
                await refresh_rank_pending_emails(session, services, fresh)
    return len(tasks)


async def run_leaderboards(
    services: Services, stop: asyncio.Event, *, poll_seconds: float | None = None
) -> None:
    """Rebuild stale boards until `stop` is set (polling every `poll_seconds`, the settings'
    by default); an error is logged and the loop goes on."""
    poll_seconds = services.settings.poll_seconds if poll_seconds is None else poll_seconds
    while not stop.is_set():
        try:
            await rebuild_stale_leaderboards(services)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("rebuilding the leaderboards failed; retrying")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=poll_seconds)


def _entry_columns(*, with_datasets: bool) -> list[Any]:
    entries = table_of(LeaderboardEntry).c
    datasets = (sa.type_coerce(entries.datasets, sa.Text) if with_datasets else sa.null()).label(
        "datasets"
    )
    return [
        entries.submission_id,
        entries.ranked,
        entries.reason,
        sa.type_coerce(entries.metrics, sa.Text).label("metrics"),
        datasets,
        entries.ci_low,
        entries.ci_high,
        entries.compared_with,
        entries.pvalue,
        entries.unsandboxed,
    ]


async def read_leaderboard(
    session: AsyncSession,
    task: Task | str,
    *,
    weights: dict[str, float] | None = None,
    viewer: User | None = None,
    with_datasets: bool = True,
    best_per_user: bool = False,
) -> dict[str, Any]:
    """The stored board as `viewer` sees it, in one query; see docs/api.md for the JSON.

    `with_datasets=False` leaves out each row's per-dataset values. `best_per_user` keeps each
    owner's best row only (by Dynascore with these weights; baselines are all kept) and ranks
    those. Rows an admin hid are shown to admins only (marked `hidden`); private rows to their
    owner only. A task whose config says `[leaderboard] rank_only = true` gets rows with ranks
    and names only (no score, metrics, interval, tie or per-dataset value) and refuses weights.

    `{"task", "primary_metric", "weights", "rank_only", "per_user", "rows": [{rank, model,
    submission_id, owner, created_at, baseline, flagged, flag_reason, hidden, score, metrics,
    ci, tied, pvalue, private, datasets, unsandboxed}], "unranked", "board", "ties"}`.
    Dynascore (and so the order) is computed here from the stored per-metric averages with the
    task's weights overridden by `weights`. A row's tie comes from the stored paired bootstrap
    when the row above it here is the one it was compared with (default weights, public board),
    else from overlapping intervals; `ties` counts each. `board` says which version is shown and
    whether a rebuild is pending (`stale`), or `built: false` before the first one.
    """
    if isinstance(task, str):
        task = await get_task(session, task)
    config = task_config(task)
    rank_only = config.leaderboard.rank_only
    if rank_only and weights:
        raise WeighbridgeError(
            f"weights: task {task.slug!r} shows ranks only (a blind phase): its weights cannot "
            "be changed; leave weights out",
            field="weights",
        )
    metric_weights = leaderboard_weights(config, weights)
    header = table_of(LeaderboardHeader).c
    entries = table_of(LeaderboardEntry)
    shown = sa.join(entries, Submission, entries.c.submission_id == col(Submission.id)).join(
        User, col(User.id) == col(Submission.user_id)
    )
    # One statement: the header, outer-joined to the rows this viewer may see.
    rows = (
        await session.execute(
            sa.select(
                header.version,
                header.updated_at,
                header.requested,
                header.built,
                header.config_sha256,
                *_entry_columns(with_datasets=with_datasets),
                col(Submission.name),
                col(Submission.private),
                col(Submission.user_id),
                col(Submission.created_at),
                col(Submission.hidden),
                col(Submission.flagged),
                col(Submission.flag_reason),
                col(Submission.baseline),
                col(User.name).label("owner"),
            )
            .select_from(
                sa.outerjoin(
                    table_of(LeaderboardHeader),
                    shown,
                    sa.and_(entries.c.task_id == header.task_id, visible_to(task, viewer)),
                )
            )
            .where(header.task_id == task.id)
            .order_by(entries.c.position)
        )
    ).all()
    first = rows[0] if rows else None
    result: dict[str, Any] = {
        "task": task.slug,
        "primary_metric": config.primary_metric.name,
        "weights": metric_weights,
        "rank_only": rank_only,
        "per_user": "best" if best_per_user else "all",
        "rows": [],
        "unranked": [],
        "board": {
            "built": bool(first is not None and first.updated_at is not None),
            "version": first.version if first is not None else 0,
            "updated_at": first.updated_at.isoformat() if first and first.updated_at else None,
            "stale": first is None
            or first.requested > first.built
            or first.config_sha256 != task.config_sha256,
        },
        "ties": {"weights": "default", "paired_bootstrap": 0, "interval_overlap": 0},
    }
    found = [r for r in rows if r.submission_id is not None]
    result["unranked"] = [
        {
            "model": r.name,
            "submission_id": r.submission_id,
            "owner": r.owner,
            "reason": r.reason,
        }
        for r in found
        if not r.ranked
    ]
    ranked = [r for r in found if r.ranked]
    if not ranked or not scoring_datasets(config):
        return result
    import numpy as np

    from metrics.errors import MetricError
    from metrics.leaderboard import leaderboard_columns, normalise_weights, score_averages

    primary = config.primary_metric.name
    columns = leaderboard_columns([{"name": m.name, "offset": m.offset} for m in config.metrics])
    names = [c.name for c in columns]
    averages = [_json(r.metrics) for r in ranked]
    # A metric the task gained since the board was built: those rows wait for the rebuild.
    complete = [i for i, a in enumerate(averages) if all(n in a for n in names)]
    kept = set(complete)
    result["unranked"] += [
        {
            "model": ranked[i].name,
            "submission_id": ranked[i].submission_id,
            "owner": ranked[i].owner,
            "reason": "not ranked yet: the leaderboard is being rebuilt for the task's metrics",
        }
        for i in range(len(ranked))
        if i not in kept
    ]
    ranked, averages = [ranked[i] for i in complete], [averages[i] for i in complete]
    if not ranked:
        return result

    def score(kept: list[dict[str, float]]) -> Any:
        try:
            # Dynascore from the stored per-metric averages (the dataset weights were applied
            # when the board was built): numpy over one small matrix, whatever the weights.
            return score_averages(
                np.array([[a[n] for n in names] for a in kept], dtype=np.float64),
                columns=columns,
                weights=normalise_weights(metric_weights),
                primary=primary,
            )
        except MetricError as exc:
            raise WeighbridgeError(f"weights: {exc}", field="weights") from None

    scored = score(averages)
    if best_per_user:
        # Each owner's best row on the whole board (its order), then Dynascore again over the
        # rows kept: the board shown is ranked on itself, as a board of those rows would be.
        owners: set[int] = set()
        best = []
        for i in scored.order:
            if ranked[i].baseline or ranked[i].user_id not in owners:
                owners.add(ranked[i].user_id)
                best.append(i)
        best.sort()
        if len(best) < len(ranked):
            ranked, averages = [ranked[i] for i in best], [averages[i] for i in best]
            scored = score(averages)
    previous: Any = None
    previous_rank = 0
    for rank, i in zip(scored.ranks, scored.order, strict=True):
        stored = ranked[i]
        ci = (stored.ci_low, stored.ci_high) if stored.ci_low is not None else None
        paired = previous is not None and stored.compared_with == previous.submission_id
        pvalue = stored.pvalue if paired else None
        if previous is not None:
            result["ties"]["paired_bootstrap" if paired else "interval_overlap"] += 1
        previous_ci = (
            (previous.ci_low, previous.ci_high)
            if previous is not None and previous.ci_low is not None
            else None
        )
        tied = tied_with_above(ci, previous_ci, pvalue) or (
            previous is not None and rank == previous_rank
        )
        previous, previous_rank = stored, rank
        if rank_only:
            result["rows"].append(
                {
                    "rank": rank,
                    "model": stored.name,
                    "submission_id": stored.submission_id,
                    "owner": stored.owner,
                    **_marks(stored),
                    "private": bool(stored.private),
                    "unsandboxed": bool(stored.unsandboxed),
                }
            )
            continue
        result["rows"].append(
            {
                "rank": rank,
                "model": stored.name,
                "submission_id": stored.submission_id,
                "owner": stored.owner,
                **_marks(stored),
                "score": float(scored.dynascores[i]),
                "metrics": averages[i],
                "ci": list(ci) if ci is not None else None,
                "tied": tied,
                "pvalue": pvalue,
                "private": bool(stored.private),
                "datasets": _json(stored.datasets) if with_datasets else None,
                # Evaluated with WEIGHBRIDGE_SANDBOX=unsafe-no-isolation: its code could have
                # read the hidden labels, so the row says so wherever it is shown.
                "unsandboxed": bool(stored.unsandboxed),
            }
        )
    if rank_only:
        result["ties"] = {"weights": "default", "paired_bootstrap": 0, "interval_overlap": 0}
    return result


def _marks(row: Any) -> dict[str, Any]:
    """A board row's date and moderation marks (read from the submission, so an admin's change
    shows at once, without a rebuild)."""
    return {
        "created_at": row.created_at.isoformat() if row.created_at is not None else None,
        "baseline": bool(row.baseline),
        "flagged": bool(row.flagged),
        "flag_reason": row.flag_reason if row.flagged else None,
        "hidden": bool(row.hidden),
    }


def _json(value: Any) -> Any:
    """A JSON column read as text, decoded here (orjson: a large board's rows are most of the
    read's time); a driver that already decoded it hands back the value."""
    import orjson

    return orjson.loads(value) if isinstance(value, str | bytes) else value


async def rank_of(
    session: AsyncSession,
    task: Task | str,
    submission_id: str,
    *,
    viewer: User | None = None,
) -> tuple[int, int] | None:
    """(rank, number of ranked models) of a submission on the stored board as `viewer` sees
    it, or None when it is not ranked there (yet: see `board_place`)."""
    place = await board_place(session, task, submission_id, viewer=viewer)
    return place.rank


@dataclass(frozen=True)
class BoardPlace:
    """Where a submission stands on the stored board: ranked (rank, of), left out (reason),
    or pending (the board has not been rebuilt since it finished)."""

    rank: tuple[int, int] | None = None
    reason: str | None = None
    pending: bool = False


async def board_place(
    session: AsyncSession,
    task: Task | str,
    submission_id: str,
    *,
    viewer: User | None = None,
) -> BoardPlace:
    """The submission's place on the stored board as `viewer` sees it."""
    board = await read_leaderboard(session, task, viewer=viewer)
    for row in board["rows"]:
        if row["submission_id"] == submission_id:
            return BoardPlace(rank=(row["rank"], len(board["rows"])))
    for row in board["unranked"]:
        if row["submission_id"] == submission_id:
            return BoardPlace(reason=row["reason"])
    return BoardPlace(pending=True)
