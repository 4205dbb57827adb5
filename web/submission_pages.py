"""The submission page: its runs, scores and performance, the failure with its log, the
receipt, a re-run button for its owner, and a timeline kept live by server-sent events.

`GET /submissions/{id}/live` streams the page's changes while the submission is unfinished:
each new timeline event (`event: timeline`), and the re-rendered parts of the page (`event:
parts`: runs, scores, performance, failure, receipt, actions) whenever the status, a run or a
score changes; `event: end` once it is done, failed or cancelled. The page works without
JavaScript (it is whole when rendered); web/static/timeline.js applies the stream.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.responses import StreamingResponse

from core import submissions as subs
from core.context import Services, services_of
from core.errors import NotFound
from core.inspection_results import batch_size_of
from core.leaderboard import scores_hidden, shown_event
from core.loglinks import log_key, log_parts, logs_public
from core.models import Event, Run, Score, Submission, Task, User
from core.reruns import can_rerun, rerun_submission
from core.scrub import scrub_text, service_paths
from core.storage import Storage
from core.tasks import list_datasets
from web.auth import check_csrf, csrf_token, require_viewer, viewer_of
from web.pages import templates

router = APIRouter(include_in_schema=False)

ENDED = ("done", "failed", "cancelled")
# The performance table's columns: (metric, heading).
PERFORMANCE = (
    ("examples_per_second", "Examples/s"),
    ("latency_p50_ms", "Latency p50 (ms)"),
    ("latency_p90_ms", "Latency p90 (ms)"),
    ("latency_p99_ms", "Latency p99 (ms)"),
    ("peak_memory_mb", "Peak memory (MiB)"),
)
LOG_TAIL_LINES = 40
LOG_PAGE_BYTES = 256 * 1024  # the log page's chunk (the rest follows by offset)
POLL_SECONDS = 0.5  # how often the live stream looks at the database
HEARTBEAT_SECONDS = 15.0
# A stream ends after this long (the browser reconnects at once, resuming after its last
# event), so a connection whose end the server missed costs a few minutes at most.
STREAM_SECONDS = 300.0
PARTS = ("runs", "scores", "performance", "failure", "receipt", "actions")


def scrubber(services: Services) -> Any:
    """Text as shown on a page: without the server's paths (its home, its storage, ...)."""
    paths = service_paths(services.settings.home, services.settings.storage_url)
    return lambda text: scrub_text(text, paths=paths)


def _shown_message(event: Event, hidden: bool) -> str:
    """An event's message, without the values it reports where the scores are hidden."""
    payload = (event.envelope or {}).get("payload") or {}
    return shown_event(event.type, event.message, payload, hidden=hidden)[0]


def is_owner(submission: Submission, viewer: User | None) -> bool:
    return viewer is not None and (viewer.is_admin or viewer.id == submission.user_id)


def expected_runs(submission: Submission, datasets: list[str]) -> list[str]:
    """The runs a submission will have: a model's one per task dataset, an inspection's one
    per batch item; a benchmark's are known once they exist."""
    if submission.kind == "model":
        return datasets
    if submission.kind == "inspection":
        return [f"run-{n}" for n in range(1, batch_size_of(submission) + 1)]
    return []


def run_rows(submission: Submission, runs: list[Run], expected: list[str]) -> list[dict[str, Any]]:
    """One row per run, those not started yet included. A run the submission never reached
    says why when the submission has ended: cancelled (with it), not queued or failed."""
    rows = [
        {
            "name": r.name,
            "status": r.status,
            "attempt": r.attempt,
            "started_at": r.started_at,
            "finished_at": r.finished_at,
            "error": r.error,
        }
        for r in runs
    ]
    have = {r.name for r in runs}
    for name in expected:
        if name in have:
            continue
        status, error = "queued", None
        if submission.status == "cancelled":
            status, error = "cancelled", "not started: the submission was cancelled"
        elif submission.status == "failed":
            stage = submission.failed_stage or "an earlier stage"
            status, error = "cancelled", f"not started: the submission failed at {stage}"
        rows.append(
            {
                "name": name,
                "status": status,
                "attempt": 0,
                "started_at": None,
                "finished_at": None,
                "error": error,
            }
        )
    return rows


def split_scores(scores: list[Score], runs: list[Run]) -> tuple[list[Score], list[dict[str, Any]]]:
    """Task scores (with their intervals), and one performance row per dataset or run."""
    task_scores: list[Score] = []
    perf: dict[str, dict[str, Any]] = {}
    names = {m for m, _ in PERFORMANCE}
    for score in scores:
        if (score.extra or {}).get("kind") == "performance" or score.metric in names:
            perf.setdefault(score.dataset, {})[score.metric] = score.value
        else:
            task_scores.append(score)
    for run in runs:
        measured = (run.summary or {}).get("performance") or {}
        row = perf.setdefault(run.name, {}) if measured else None
        for metric, value in measured.items():
            if row is not None and metric in names and isinstance(value, int | float):
                row.setdefault(metric, float(value))
    rows = [{"dataset": name, **values} for name, values in perf.items() if values]
    return task_scores, rows


def _scrubbed(value: Any, scrub: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: _scrubbed(v, scrub) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrubbed(v, scrub) for v in value]
    return value


def receipt_of(events: list[Event], scrub: Any) -> dict[str, Any] | None:
    """The receipt: the payload of the last `receipt` event, without storage keys or paths."""
    for event in reversed(events):
        if event.type == "receipt":
            payload = dict((event.envelope or {}).get("payload") or {})
            payload.pop("mar_key", None)
            payload.pop("hwinfo", None)
            return _scrubbed(payload, scrub)
    return None


def tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


async def read_log_tail(storage: Storage, submission: Submission) -> str | None:
    """The last lines of the failing part's log (or of all logs), if there is any."""
    key = submission.error_log_key
    if key and key.startswith(f"submissions/{submission.id}/") and await storage.exists(key):
        text = (await storage.read_bytes(key)).decode("utf-8", errors="replace")
    else:
        text = await subs.read_logs(storage, submission.id)
    return tail(text) if text.strip() else None


async def read_view(
    services: Services, submission_id: str, viewer: User | None, *, logs: bool = True
) -> dict[str, Any]:
    """Everything the page shows, as `viewer` may see it (404 for another's private one)."""
    async with services.db.session() as session:
        s = await subs.get_submission(session, submission_id, viewer=viewer)
        task = await session.get(Task, s.task_id) if s.task_id else None
        owner = await session.get(User, s.user_id)
        events = await subs.list_events(session, s.id)
        runs = await subs.list_runs(session, s.id)
        scores = await subs.list_scores(session, s.id)
        datasets = [d.name for d in await list_datasets(session, task)] if task else []
    scrub = scrubber(services)
    # Errors and event messages are the service's words about the user's job: no server path.
    hidden = scores_hidden(task, viewer)
    shown_events = [
        {
            "id": e.id,
            "type": e.type,
            "message": scrub(_shown_message(e, hidden)),
            "created_at": e.created_at,
        }
        for e in events
    ]
    own = is_owner(s, viewer)
    may_read_logs = own or (not s.private and logs_public(task))
    task_scores, performance = split_scores(scores, runs)
    view: dict[str, Any] = {
        "s": s,
        "task": task,
        "owner": owner.name if owner else None,
        "events": shown_events,
        "error": scrub(s.error) if s.error else None,
        "runs": run_rows(s, runs, expected_runs(s, datasets)),
        "scores": [] if hidden else task_scores,
        "scores_hidden": hidden,
        "performance": performance,
        "performance_columns": [
            (m, h) for m, h in PERFORMANCE if any(m in row for row in performance)
        ],
        "receipt": receipt_of(events, scrub),
        "terminal": s.status in ENDED,
        "own": own,
        "may_read_logs": may_read_logs,
        "log_tail": None,
        "log_parts": [],
        "can_rerun": can_rerun(s, viewer),
        "attempt": int(s.meta.get("attempt") or 1),
    }
    if logs and may_read_logs:
        if s.status == "failed":
            view["log_tail"] = scrub(await read_log_tail(services.storage, s))
        view["log_parts"] = await log_parts(services.storage, s.id)
    return view


def render_parts(view: dict[str, Any], csrf: str) -> dict[str, str]:
    """The page's live parts as HTML (the same macros the page itself uses)."""
    module: Any = templates.env.get_template("submission_parts.html").make_module({"csrf": csrf})
    return {name: str(getattr(module, name)(view)) for name in PARTS}


@router.get("/submissions/{submission_id}", response_class=HTMLResponse)
async def submission_page(submission_id: str, request: Request) -> HTMLResponse:
    viewer = await viewer_of(request)
    view = await read_view(services_of(request), submission_id, viewer)
    csrf = csrf_token(request) if view["can_rerun"] else ""
    return templates.TemplateResponse(
        request, "submission.html", {**view, "parts": render_parts(view, csrf)}
    )


def _sse(event: str, data: Any, *, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, default=str)}\n\n"


def _fingerprint(view: dict[str, Any]) -> tuple:
    s = view["s"]
    return (
        s.status,
        tuple((r["name"], r["status"], r["attempt"], r["error"]) for r in view["runs"]),
        tuple((x.dataset, x.metric, x.value) for x in view["scores"]),
        tuple(sorted(json.dumps(row, sort_keys=True) for row in view["performance"])),
    )


async def live_changes(
    request: Request, submission_id: str, viewer: User | None, after: int, csrf: str
) -> AsyncIterator[str]:
    """The stream: new events, changed parts, until the submission ends or the page goes."""
    services = services_of(request)
    seen: tuple | None = None
    quiet = 0.0
    deadline = asyncio.get_running_loop().time() + STREAM_SECONDS
    yield "retry: 1000\n\n"  # how soon the browser reconnects when the stream ends
    while not await request.is_disconnected():
        if asyncio.get_running_loop().time() > deadline:
            return
        try:
            # Without the logs (a storage listing) on every tick: read with them on a change.
            view = await read_view(services, submission_id, viewer, logs=False)
        except NotFound:
            yield _sse("end", {"status": "gone"})
            return
        sent = False
        for e in view["events"]:
            if (e["id"] or 0) > after:
                after = e["id"] or after
                sent = True
                yield _sse(
                    "timeline",
                    {
                        "id": e["id"],
                        "type": e["type"],
                        "message": e["message"],
                        "at": e["created_at"].strftime("%H:%M:%S"),
                    },
                    event_id=e["id"],
                )
        mark = _fingerprint(view)
        if mark != seen:
            seen = mark
            sent = True
            try:
                view = await read_view(services, submission_id, viewer)
            except NotFound:
                yield _sse("end", {"status": "gone"})
                return
            yield _sse("parts", {"status": view["s"].status, "parts": render_parts(view, csrf)})
        if view["terminal"]:
            yield _sse("end", {"status": view["s"].status})
            return
        quiet = 0.0 if sent else quiet + POLL_SECONDS
        if quiet >= HEARTBEAT_SECONDS:
            quiet = 0.0
            yield ": still here\n\n"  # a comment keeps proxies from closing an idle stream
        await asyncio.sleep(POLL_SECONDS)


@router.get("/submissions/{submission_id}/live")
async def submission_live(submission_id: str, request: Request, after: int = 0) -> Response:
    viewer = await viewer_of(request)
    async with services_of(request).db.session() as session:
        s = await subs.get_submission(session, submission_id, viewer=viewer)
    # A reconnecting EventSource says where it was.
    resumed = request.headers.get("last-event-id", "")
    if resumed.isdigit():
        after = max(after, int(resumed))
    csrf = csrf_token(request) if is_owner(s, viewer) else ""
    return StreamingResponse(
        live_changes(request, s.id, viewer, max(0, after), csrf),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _readable_log(request: Request, submission_id: str, part: str | None) -> tuple:
    """The submission, its log parts and the key to read, for someone who may read them."""
    services = services_of(request)
    viewer = await viewer_of(request)
    async with services.db.session() as session:
        s = await subs.get_submission(session, submission_id, viewer=viewer)
        task = await session.get(Task, s.task_id) if s.task_id else None
    if not (is_owner(s, viewer) or (not s.private and logs_public(task))):
        # As for a private submission: nothing says that a log exists.
        raise NotFound(f"no log for submission {submission_id}", field="id")
    parts = await log_parts(services.storage, s.id)
    if part is not None and part not in parts:
        raise NotFound(
            f"submission {s.id} has no {part!r} log; parts with a log: "
            + (", ".join(parts) or "none yet"),
            field="part",
        )
    return s, parts, log_key(s.id, part) if part else None


@router.get("/submissions/{submission_id}/log", response_class=HTMLResponse)
async def log_page(submission_id: str, request: Request, part: str | None = None) -> HTMLResponse:
    """The whole log (one part, or all of them), followed live while the submission runs."""
    s, parts, _ = await _readable_log(request, submission_id, part)
    return templates.TemplateResponse(
        request,
        "submission_log.html",
        {"s": s, "parts": parts, "part": part, "terminal": s.status in ENDED},
    )


@router.get("/submissions/{submission_id}/log.txt")
async def log_text(
    submission_id: str, request: Request, part: str | None = None, offset: int = 0
) -> PlainTextResponse:
    """The log's bytes from `offset` (at most LOG_PAGE_BYTES); `X-Next-Offset` says where to
    go on and `X-Complete: 1` that the submission has ended (nothing more will come)."""
    s, _, key = await _readable_log(request, submission_id, part)
    storage = services_of(request).storage
    if key is not None:
        data = await storage.read_bytes(key)
    else:
        data = (await subs.read_logs(storage, s.id)).encode()
    start = max(0, min(offset, len(data)))
    chunk = data[start : start + LOG_PAGE_BYTES]
    if start + len(chunk) < len(data) and b"\n" in chunk:
        # Whole lines only, so that a path is never cut in two (and scrubbed whole).
        chunk = chunk[: chunk.rindex(b"\n") + 1]
    return PlainTextResponse(
        scrubber(services_of(request))(chunk.decode("utf-8", errors="replace")),
        headers={
            "X-Next-Offset": str(start + len(chunk)),
            "X-Complete": "1" if s.status in ENDED and start + len(chunk) >= len(data) else "0",
            "Cache-Control": "no-store",
        },
    )


@router.post("/submissions/{submission_id}/rerun")
async def rerun_form(submission_id: str, request: Request) -> Response:
    """The page's re-run button (a CSRF-checked form): queue it again, back to the page."""
    form = await request.form()
    check_csrf(request, form)
    viewer = await require_viewer(request)
    services = services_of(request)
    async with services.db.session() as session:
        s = await rerun_submission(session, services.outbox, submission_id, user=viewer)
        target = f"/submissions/{s.id}"
    return RedirectResponse(target, status_code=303)
