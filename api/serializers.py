"""Rows to the JSON shapes of docs/api.md."""

from __future__ import annotations

from typing import Any

from core.leaderboard import shown_event
from core.models import Event, Run, Score, Submission, User


def submission_summary(s: Submission, *, task: str | None, owner: str | None) -> dict[str, Any]:
    return {
        "id": s.id,
        "kind": s.kind,
        "task": task,
        "name": s.name,
        "status": s.status,
        "private": s.private,
        "owner": owner,
        "bytes": s.upload_bytes,
        "sha256": s.upload_sha256,
        "created_at": s.created_at.isoformat(),
        "updated_at": s.updated_at.isoformat(),
    }


def event_json(e: Event, *, scores_hidden: bool = False) -> dict[str, Any]:
    """An event as the API shows it; where the scores are hidden (a rank-only task), without
    the values it reports."""
    message, payload = shown_event(
        e.type, e.message, (e.envelope or {}).get("payload", {}), hidden=scores_hidden
    )
    return {
        "id": e.id,
        "type": e.type,
        "status": e.status,
        "message": message,
        "created_at": e.created_at.isoformat(),
        "payload": payload,
    }


def run_json(r: Run) -> dict[str, Any]:
    return {
        "name": r.name,
        "status": r.status,
        "started_at": r.started_at.isoformat() if r.started_at else None,
        "finished_at": r.finished_at.isoformat() if r.finished_at else None,
        "summary": r.summary,
        "error": r.error,
    }


def score_json(s: Score) -> dict[str, Any]:
    return {
        "dataset": s.dataset,
        "metric": s.metric,
        "value": s.value,
        "ci_low": s.ci_low,
        "ci_high": s.ci_high,
        "n_examples": s.n_examples,
        **({"extra": s.extra} if s.extra else {}),
    }


def submission_json(
    s: Submission,
    *,
    task: str | None,
    owner: User | None,
    events: list[Event],
    runs: list[Run],
    scores_hidden: bool = False,
) -> dict[str, Any]:
    body = submission_summary(s, task=task, owner=owner.name if owner else None)
    body["error"] = (
        {"stage": s.failed_stage, "reason": s.error, "log_key": s.error_log_key}
        if s.status == "failed"
        else None
    )
    body["events"] = [event_json(e, scores_hidden=scores_hidden) for e in events]
    body["runs"] = [run_json(r) for r in runs]
    return body
