"""A task's leaderboard: done submissions ranked by Dynascore over the hidden scoring datasets.

The aggregate itself (dataset-weighted averages, AMRS, Dynascore, competition ranks) is
`metrics.leaderboard.rank_models`. Computing a board (`compute_entries`: scores, predictions,
paired bootstraps) happens when it changes and is stored by core/boards.py; reading one
(`read_leaderboard`) is one query on the stored rows plus Dynascore with the viewer's weights.
`compute_leaderboard` recomputes everything from the scores, as every read once did.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from core.errors import WeighbridgeError
from core.kinds import is_ranked
from core.models import Dataset, Run, Score, Submission, Task, User
from core.states import Status
from core.storage import Storage
from core.taskconfig import DELTA_METRICS, TaskConfig
from core.tasks import get_task, task_config

if TYPE_CHECKING:
    from metrics.leaderboard import Leaderboard as RankedBoard
    from metrics.leaderboard import LeaderboardRow


def scoring_datasets(config: TaskConfig) -> dict[str, float]:
    """The hidden datasets a model is ranked on, with their weights (weight 0 does not count)."""
    return {d.name: d.weight for d in config.datasets if d.access == "hidden" and d.weight > 0}


def leaderboard_weights(
    config: TaskConfig, weights: dict[str, float] | None = None
) -> dict[str, float]:
    """The task's metric weights with a caller's override; unknown metrics are refused."""
    merged = config.metric_weights()
    for name, weight in (weights or {}).items():
        if name not in merged:
            raise WeighbridgeError(
                f"weights: {name!r} is not a metric of task {config.slug!r} "
                f"(its metrics: {', '.join(merged)})",
                field="weights",
            )
        if not isinstance(weight, int | float) or not math.isfinite(weight) or weight < 0:
            raise WeighbridgeError(
                f"weights: the weight of {name!r} must be a non-negative number",
                field="weights",
            )
        merged[name] = float(weight)
    if sum(merged.values()) <= 0:
        raise WeighbridgeError("weights: at least one weight must be positive", field="weights")
    return merged


def parse_weights(text: str) -> dict[str, float]:
    """A `weights=metric=w,...` query or `--weights` option as a dict; a clear 400 otherwise."""
    from metrics.errors import MetricError
    from metrics.leaderboard import parse_weights as parse

    try:
        return parse(text)
    except MetricError as exc:
        raise WeighbridgeError(f"weights: {exc}", field="weights") from None


def visible_to(task: Task, viewer: User | None) -> sa.ColumnElement[bool]:
    """SQL: a done, ranked submission of the task that `viewer` may see on its board: rows an
    admin hid are shown to admins only, private ones to their owner only."""
    condition = sa.and_(
        col(Submission.task_id) == task.id,
        col(Submission.status) == Status.DONE.value,
        is_ranked(),
    )
    if viewer is None or not viewer.is_admin:
        condition = sa.and_(condition, col(Submission.hidden) == sa.false())
    if viewer is None or viewer.id is None:
        return sa.and_(condition, col(Submission.private) == sa.false())
    # Private submissions appear only to their owner (not even to admins: it is their board).
    return sa.and_(
        condition,
        sa.or_(col(Submission.private) == sa.false(), col(Submission.user_id) == viewer.id),
    )


def scores_hidden(task: Task | None, viewer: User | None) -> bool:
    """Whether `viewer` is kept from a submission's scores on `task`: a rank-only task (a blind
    phase, `[leaderboard] rank_only = true`) shows them to admins only, its owner included, so
    that no view tells what its board hides."""
    if task is None or (viewer is not None and viewer.is_admin):
        return False
    return task_config(task).leaderboard.rank_only


# The payload keys of timeline events that report a score's value (dataset.finished, ...).
VALUE_KEYS = ("values", "scores", "value")


def shown_event(
    event_type: str, message: str, payload: dict[str, Any], *, hidden: bool
) -> tuple[str, dict[str, Any]]:
    """An event's message and payload as shown where the scores are hidden (`scores_hidden`):
    the values it reports are left out, and the message says so."""
    if not hidden or not any(key in payload for key in VALUE_KEYS):
        return message, payload
    kept = {k: v for k, v in payload.items() if k not in VALUE_KEYS}
    return f"{event_type}: done (scores are hidden: this task shows ranks only)", kept


def _combined_ci(
    per_dataset: dict[str, Score], dataset_weights: dict[str, float]
) -> tuple[float, float] | None:
    """The dataset-weighted interval of the primary metric (None when a dataset has none)."""
    total = sum(dataset_weights.values())
    low = high = 0.0
    for name, weight in dataset_weights.items():
        score = per_dataset.get(name)
        if score is None or score.ci_low is None or score.ci_high is None:
            return None
        low += weight / total * score.ci_low
        high += weight / total * score.ci_high
    return (low, high)


@dataclass
class Collected:
    """A task's done submissions with their dataset values, read once for ranking."""

    models: list[dict[str, Any]]
    incomplete: dict[str, str]
    unsandboxed: set[str]


async def collect_models(
    session: AsyncSession,
    task: Task,
    config: TaskConfig,
    *,
    viewer: User | None = None,
    everyone: bool = False,
) -> Collected:
    """Read the done submissions `viewer` may see (every one when `everyone`), their scores on
    the scoring datasets and their sandbox flags; the models are shaped for `rank_models`."""
    datasets = scoring_datasets(config)
    metric_names = [m.name for m in config.metrics]
    primary = config.primary_metric.name
    where = (
        sa.and_(
            col(Submission.task_id) == task.id,
            col(Submission.status) == Status.DONE.value,
            is_ranked(),
        )
        if everyone
        else visible_to(task, viewer)
    )
    submissions = (
        await session.execute(
            sa.select(Submission, col(User.name))
            .join(User, col(User.id) == col(Submission.user_id))
            .where(where)
            .order_by(col(Submission.created_at), col(Submission.id))
        )
    ).all()
    # Robustness/fairness exist only on the perturbed datasets that measure them.
    deltas = {
        m: {
            d.name: d.weight
            for d in config.datasets
            if d.access == "hidden" and d.delta_metric == m
        }
        for m in metric_names
        if m in DELTA_METRICS
    }
    wanted = set(datasets).union(*deltas.values())
    scores: dict[str, dict[str, dict[str, Score]]] = defaultdict(lambda: defaultdict(dict))
    ids = [s.id for s, _ in submissions]
    if ids and datasets:
        for score in await session.scalars(
            sa.select(Score).where(
                col(Score.submission_id).in_(ids),
                col(Score.dataset).in_(list(wanted)),
                col(Score.metric).in_(metric_names),
            )
        ):
            scores[score.submission_id][score.dataset][score.metric] = score
    unsandboxed = await _unsandboxed(session, ids)

    models = []
    incomplete: dict[str, str] = {}
    for submission, owner in submissions:
        mine = scores.get(submission.id, {})
        primary_scores = {d: m[primary] for d, m in mine.items() if primary in m}
        values = {d: {m: s.value for m, s in per.items()} for d, per in mine.items()}
        for m, sets in deltas.items():
            # One value per model: the (dataset-weighted) mean over the datasets measuring it,
            # given to every scoring dataset so that the dataset average is that value.
            measured = [(values.get(d, {}).get(m), w) for d, w in sets.items()]
            known = [(v, w) for v, w in measured if v is not None]
            if measured and len(known) == len(measured):
                total = sum(w for _, w in known)
                value = (
                    sum(v * w for v, w in known) / total
                    if total > 0
                    else sum(v for v, _ in known) / len(known)
                )
                for d in datasets:
                    values.setdefault(d, {})[m] = value
            elif submission.id not in incomplete:
                # Say what is missing where it is missing, not on the first dataset checked.
                gap = next(d for d, _ in sets.items() if values.get(d, {}).get(m) is None)
                incomplete[submission.id] = (
                    f"no {m} on dataset {gap!r}"
                    if gap in values
                    else f"no scores on dataset {gap!r}"
                )
        models.append(
            {
                "model": submission.id,
                "scores": values,
                "primary_ci": _combined_ci(primary_scores, datasets),
                "name": submission.name,
                "owner": owner,
                "private": submission.private,
            }
        )
    return Collected(models, incomplete, unsandboxed)


def rank_collected(
    config: TaskConfig, models: list[dict[str, Any]], *, weights: dict[str, float]
) -> RankedBoard:
    """`rank_models` on the task's metrics and scoring datasets; a bad weight is a clear 400."""
    from metrics.errors import MetricError
    from metrics.leaderboard import rank_models

    try:
        return rank_models(
            models,
            metrics=[{"name": m.name, "offset": m.offset} for m in config.metrics],
            datasets=scoring_datasets(config),
            weights=weights,
            primary=config.primary_metric.name,
        )
    except MetricError as exc:
        raise WeighbridgeError(str(exc), field="weights") from None


def tied_with_above(
    ci: tuple[float, float] | None, previous_ci: tuple[float, float] | None, pvalue: float | None
) -> bool:
    """Tied with the row above: by the paired bootstrap's p-value where there is one, else by
    overlapping intervals of the primary metric."""
    if pvalue is not None:
        return pvalue >= TIE_ALPHA
    return (
        ci is not None
        and previous_ci is not None
        and ci[0] <= previous_ci[1]
        and previous_ci[0] <= ci[1]
    )


def row_json(
    row: LeaderboardRow,
    *,
    tied: bool,
    pvalue: float | None,
    unsandboxed: bool,
    datasets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    ci = row.primary_ci
    return {
        "rank": row.rank,
        "model": row.info["name"],
        "submission_id": row.model,
        "owner": row.info["owner"],
        "score": row.dynascore,
        "metrics": row.metrics,
        "ci": list(ci) if ci is not None else None,
        "tied": tied,
        "pvalue": pvalue,
        "private": row.info["private"],
        "datasets": row.datasets if datasets is None else datasets,
        # Evaluated with WEIGHBRIDGE_SANDBOX=unsafe-no-isolation: its code could have read the
        # hidden labels, so the row says so wherever it is shown.
        "unsandboxed": unsandboxed,
    }


async def compute_leaderboard(
    session: AsyncSession,
    task: Task | str,
    *,
    weights: dict[str, float] | None = None,
    viewer: User | None = None,
    storage: Storage | None = None,
) -> dict[str, Any]:
    """The board recomputed from the scores (and, with `storage`, the predictions) now.

    This is what every read did before boards were stored; it stays as the reference the
    stored board is checked against and the baseline of bench/leaderboard.py. Rows are the
    task's done submissions the viewer may see, ranked by Dynascore with the task's metric
    weights (overridden by `weights`) and dataset weights. `tied` says the row's primary
    metric is not significantly different from the row above: by a paired bootstrap when
    `storage` holds both rows' predictions (`pvalue` is then set), else by overlapping
    intervals.
    """
    if isinstance(task, str):
        task = await get_task(session, task)
    config = task_config(task)
    metric_weights = leaderboard_weights(config, weights)
    collected = await collect_models(session, task, config, viewer=viewer)
    result: dict[str, Any] = {
        "task": task.slug,
        "primary_metric": config.primary_metric.name,
        "weights": metric_weights,
        "rows": [],
        "unranked": [],
    }
    if not collected.models or not scoring_datasets(config):
        return result
    board = rank_collected(
        config,
        [m for m in collected.models if m["model"] not in collected.incomplete],
        weights=metric_weights,
    )
    pvalues: dict[str, float] = {}
    if storage is not None and len(board.rows) > 1:
        pvalues = await paired_pvalues(
            session, storage, task, config, [row.model for row in board.rows]
        )
    previous: LeaderboardRow | None = None
    for row in board.rows:
        pvalue = pvalues.get(row.model)
        tied = tied_with_above(row.primary_ci, previous.primary_ci if previous else None, pvalue)
        result["rows"].append(
            row_json(
                row,
                tied=tied or (previous is not None and row.rank == previous.rank),
                pvalue=pvalue,
                unsandboxed=row.model in collected.unsandboxed,
            )
        )
        previous = row
    by_id = {m["model"]: m for m in collected.models}
    result["unranked"] = [
        {
            "model": by_id[sid]["name"],
            "submission_id": sid,
            "owner": by_id[sid]["owner"],
            "reason": reason,
        }
        for sid, reason in {**board.unranked, **collected.incomplete}.items()
    ]
    return result


async def compute_entries(
    session: AsyncSession, task: Task, *, storage: Storage | None
) -> list[dict[str, Any]]:
    """The rows of the stored board: every done submission (private ones too, the read filters
    them per viewer) with its per-metric averages, per-dataset values, primary interval, and
    the paired-bootstrap p-value against its neighbour above with the default weights.

    Neighbours are those of the public board; a private row is compared with the public row
    just above it, which is where its owner sees it unless they have several private rows.
    """
    config = task_config(task)
    if not scoring_datasets(config):
        return []
    collected = await collect_models(session, task, config, everyone=True)
    complete = [m for m in collected.models if m["model"] not in collected.incomplete]
    weights = leaderboard_weights(config)
    board = rank_collected(config, complete, weights=weights) if complete else None
    rows = board.rows if board is not None else []
    public = [m for m in complete if not m["private"]]
    public_order = (
        [r.model for r in rank_collected(config, public, weights=weights).rows] if public else []
    )
    compared: dict[str, str] = dict(
        (this, above) for above, this in itertools.pairwise(public_order)
    )
    last_public: str | None = None
    for row in rows:
        if row.info["private"]:
            if last_public is not None:
                compared[row.model] = last_public
        else:
            last_public = row.model
    pvalues: dict[tuple[str, str], float] = {}
    if storage is not None and compared:
        pvalues = await pair_pvalues(
            session, storage, task, config, [(above, this) for this, above in compared.items()]
        )
    entries: list[dict[str, Any]] = []
    for position, row in enumerate(rows):
        above = compared.get(row.model)
        pvalue = pvalues.get((above, row.model)) if above is not None else None
        ci = row.primary_ci
        entries.append(
            {
                "submission_id": row.model,
                "position": position,
                "ranked": True,
                "reason": None,
                "metrics": row.metrics,
                "datasets": row.datasets,
                "ci_low": ci[0] if ci is not None else None,
                "ci_high": ci[1] if ci is not None else None,
                "compared_with": above if pvalue is not None else None,
                "pvalue": pvalue,
                "unsandboxed": row.model in collected.unsandboxed,
            }
        )
    left_out = {**(board.unranked if board is not None else {}), **collected.incomplete}
    for position, model in enumerate(collected.models, start=len(entries)):
        if model["model"] in left_out:
            entries.append(
                {
                    "submission_id": model["model"],
                    "position": position,
                    "ranked": False,
                    "reason": left_out[model["model"]][:512],
                    "metrics": {},
                    "datasets": {},
                    "ci_low": None,
                    "ci_high": None,
                    "compared_with": None,
                    "pvalue": None,
                    "unsandboxed": model["model"] in collected.unsandboxed,
                }
            )
    return entries


async def _unsandboxed(session: AsyncSession, ids: list[str]) -> set[str]:
    """The submissions any of whose runs went without the sandbox (the runner records the
    sandbox it used in each run's summary)."""
    if not ids:
        return set()
    found: set[str] = set()
    for submission_id, summary in await session.execute(
        sa.select(col(Run.submission_id), col(Run.summary)).where(
            col(Run.submission_id).in_(ids), col(Run.status) == "done"
        )
    ):
        sandbox = ((summary or {}).get("worker") or {}).get("sandbox") or {}
        if sandbox.get("tool") == "none":
            found.add(submission_id)
    return found


TIE_ALPHA = 0.05
TIE_RESAMPLES = 1000


async def _jsonl(storage: Storage, key: str) -> list[dict[str, Any]] | None:
    import json

    try:
        data = await storage.read_bytes(key)
    except FileNotFoundError:
        return None
    return [json.loads(line) for line in data.splitlines() if line.strip()]


async def paired_pvalues(
    session: AsyncSession,
    storage: Storage,
    task: Task,
    config: TaskConfig,
    ranked: list[str],
) -> dict[str, float]:
    """For each ranked submission, the paired-bootstrap p-value of its primary metric against
    the row above (see `pair_pvalues`)."""
    found = await pair_pvalues(session, storage, task, config, list(itertools.pairwise(ranked)))
    return {this: pvalue for (_, this), pvalue in found.items()}


async def pair_pvalues(
    session: AsyncSession,
    storage: Storage,
    task: Task,
    config: TaskConfig,
    pairs: list[tuple[str, str]],
) -> dict[tuple[str, str], float]:
    """For each (above, this) pair, the paired-bootstrap p-value of the primary metric, on the
    examples of every scoring dataset together (aligned by uid).

    A pair without stored predictions for every scoring dataset gets no p-value.
    """
    import asyncio

    from core.datasets import DatasetError, read_examples
    from metrics import paired_bootstrap_pvalue

    datasets = scoring_datasets(config)
    rows = {
        d.name: d
        for d in await session.scalars(
            sa.select(Dataset).where(
                col(Dataset.task_id) == task.id, col(Dataset.name).in_(list(datasets))
            )
        )
    }
    uids: list[tuple[str, Any]] = []
    references: list[Any] = []
    for name in datasets:
        row = rows.get(name)
        if row is None or not row.uri:
            return {}
        try:
            examples = await read_examples(storage, row.uri, row.sha256)
        except (DatasetError, FileNotFoundError):
            return {}
        for example in examples:
            uids.append((name, example["uid"]))
            references.append(example.get(config.label_field))

    predictions: dict[str, list[Any]] = {}
    for sid in dict.fromkeys(s for pair in pairs for s in pair):
        answers: dict[tuple[str, Any], Any] = {}
        for name in datasets:
            lines = await _jsonl(storage, f"submissions/{sid}/results/{name}/predictions.jsonl")
            for line in lines or []:
                answers[(name, line.get("uid"))] = config.prediction_of(line.get("outputs"))
        if all(key in answers for key in uids):
            predictions[sid] = [answers[key] for key in uids]

    primary = config.primary_metric
    known = [pair for pair in pairs if pair[0] in predictions and pair[1] in predictions]

    def compute() -> dict[tuple[str, str], float]:
        return {
            (above, this): paired_bootstrap_pvalue(
                primary.name,
                predictions[above],
                predictions[this],
                references,
                resamples=TIE_RESAMPLES,
                seed=0,
                **primary.options,
            )
            for above, this in known
        }

    # CPU work: off the event loop.
    return await asyncio.to_thread(compute)
