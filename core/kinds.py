"""What each kind of submission is, in one table: the dispatch point for scoring and ranking.

A model is ranked on its task's leaderboard; a benchmark keeps a metric series per benchmark
identity (its history, watched for regressions); an inspection records runs and nothing else.
The workers dispatch the build and the evaluation of a kind through their own `KINDS`
(builder.worker, evaluator.worker); everything that decides what happens to a finished
submission asks `policy_of(kind)` here, never compares kind names itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlmodel import col

from core.errors import WeighbridgeError
from core.models import Submission


@dataclass(frozen=True)
class KindPolicy:
    name: str
    # Placed on its task's leaderboard (ranked by Dynascore) and told its rank by email.
    ranked: bool
    # Its metrics are kept as a series per benchmark identity and compared with history.
    tracked: bool
    # What a user sends for it, for messages that name the kind.
    what: str


POLICIES: dict[str, KindPolicy] = {
    "model": KindPolicy("model", ranked=True, tracked=False, what="a model bundle"),
    "benchmark": KindPolicy(
        "benchmark", ranked=False, tracked=True, what="a benchmark descriptor (TOML)"
    ),
    "inspection": KindPolicy(
        "inspection", ranked=False, tracked=False, what="an inspection request (JSON)"
    ),
}
KIND_NAMES = tuple(POLICIES)


def policy_of(kind: str) -> KindPolicy:
    policy = POLICIES.get(kind)
    if policy is None:
        raise WeighbridgeError(f"kind must be one of {', '.join(POLICIES)}", field="kind")
    return policy


def ranked_kinds() -> list[str]:
    return [name for name, policy in POLICIES.items() if policy.ranked]


def is_ranked() -> sa.ColumnElement[bool]:
    """SQL: the submission is of a kind its task's leaderboard ranks."""
    return col(Submission.kind).in_(ranked_kinds())
