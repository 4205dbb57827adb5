"""Submissions: streamed upload, list, detail with timeline, events, cancel, results, logs."""

from __future__ import annotations

from fastapi import APIRouter, Request

from api.deps import optional_user, require_user, services_of
from api.params import AfterId, Offset, PageSize
from api.serializers import event_json, run_json, score_json, submission_json, submission_summary
from api.uploads import check_declared_length, receive_upload
from core import submissions as subs
from core.errors import WeighbridgeError
from core.incoming import accept_upload, discard_upload, incoming_key
from core.inspection_results import read_json, results_prefix
from core.leaderboard import scores_hidden
from core.loglinks import create_log_link, get_own_submission, get_submission_for_logs
from core.models import Task, User, new_id
from core.presign import secret_key
from core.reruns import rerun_submission
from core.storage import Storage
from core.tasks import get_task, task_config

router = APIRouter(prefix="/api/v1/submissions", tags=["submissions"])
TRUE = ("1", "true", "yes", "on")
FALSE = ("", "0", "false", "no", "off")


def _flag(fields: dict[str, str], name: str) -> bool:
    value = fields.get(name, "").strip().lower()
    if value not in TRUE + FALSE:
        raise WeighbridgeError(f"{name} must be true or false, not {value!r}", field=name)
    return value in TRUE


@router.post("", status_code=201)
async def create_submission(request: Request) -> dict:
    services = services_of(request)
    limit = services.settings.max_upload_bytes
    check_declared_length(request, limit)
    submission_id = new_id()
    async with services.db.session() as session:
        user = await require_user(session, request)
    checked: list[Task] = []

    async def key_for(fields: dict[str, str], filename: str) -> tuple[str, int]:
        slug = fields.get("task", "").strip()
        if not slug:
            raise WeighbridgeError(
                "the form field 'task' is missing (send it before the file)",
                status=422,
                field="task",
            )
        async with services.db.session() as session:
            task = await get_task(session, slug)
            # Early, so that a user over the limit does not send a GiB first; checked again,
            # under the user's lock, when the submission is created.
            await subs.check_submission_limit(session, user, task)
        checked.append(task)
        task_limit = task_config(task).limits.max_upload_bytes
        return incoming_key(submission_id, filename), min(limit, task_limit or limit)

    try:
        upload = await receive_upload(request, services.storage, key_for=key_for)
        if upload.stored.size == 0:
            raise WeighbridgeError(
                f"the file {upload.filename!r} is empty",
                status=422,
                code="empty_file",
                field="file",
            )
        fields, task = upload.fields, checked[0]
        async with services.db.session() as session:
            submission = await accept_upload(
                session,
                services.storage,
                services.outbox,
                upload=upload.stored,
                submission_id=submission_id,
                user=user,
                task=task,
                kind=fields.get("kind", "model").strip() or "model",
                name=(fields.get("name") or upload.filename).strip()[:255],
                private=_flag(fields, "private"),
                filename=upload.filename,
                client_id=request.headers.get("x-client-id"),
            )
    except BaseException:
        # Nothing half-written: whatever this upload stored goes when it is no submission.
        await discard_upload(services.db, services.storage, submission_id)
        raise
    return submission_summary(submission, task=task.slug, owner=user.name)


@router.get("")
async def read_submissions(
    request: Request,
    task: str | None = None,
    status: str | None = None,
    limit: PageSize = 50,
    offset: Offset = 0,
    all: bool = False,
) -> dict:
    async with services_of(request).db.session() as session:
        user = await require_user(session, request)
        task_row = await get_task(session, task) if task else None
        rows = await subs.list_submissions(
            session,
            viewer=user,
            task=task_row,
            mine=not all,
            status=status,
            limit=limit,
            offset=offset,
        )
        out = []
        for s in rows:
            out.append(await _summary(session, s))
        return {"submissions": out}


async def _summary(session, s) -> dict:
    task = await session.get(Task, s.task_id) if s.task_id else None
    owner = await session.get(User, s.user_id)
    return submission_summary(
        s, task=task.slug if task else None, owner=owner.name if owner else None
    )


@router.get("/{submission_id}")
async def read_submission(submission_id: str, request: Request) -> dict:
    async with services_of(request).db.session() as session:
        viewer = await optional_user(session, request)
        s = await subs.get_submission(session, submission_id, viewer=viewer)
        return await _detail(session, s, viewer)


async def _detail(session, s, viewer: User | None) -> dict:
    task = await session.get(Task, s.task_id) if s.task_id else None
    body = submission_json(
        s,
        task=task.slug if task else None,
        owner=await session.get(User, s.user_id),
        events=await subs.list_events(session, s.id),
        runs=await subs.list_runs(session, s.id),
        scores_hidden=scores_hidden(task, viewer),
    )
    return {**body, **await _family(session, s)}


async def _family(session, s) -> dict:
    """A benchmark's place in its family: its parent, its range values, its children."""
    if s.kind == "model":
        return {}
    return {
        "parent_id": s.parent_id,
        "role": s.meta.get("role"),
        "values": s.meta.get("values", {}),
        "children": await subs.family_rows(session, s),
    }


@router.get("/{submission_id}/events")
async def read_events(submission_id: str, request: Request, after: AfterId = 0) -> dict:
    async with services_of(request).db.session() as session:
        viewer = await optional_user(session, request)
        s = await subs.get_submission(session, submission_id, viewer=viewer)
        events = [e for e in await subs.list_events(session, s.id) if (e.id or 0) > after]
        task = await session.get(Task, s.task_id) if s.task_id else None
        hidden = scores_hidden(task, viewer)
        return {
            "status": s.status,
            "events": [event_json(e, scores_hidden=hidden) for e in events],
        }


@router.post("/{submission_id}/cancel")
async def cancel(submission_id: str, request: Request) -> dict:
    async with services_of(request).db.session() as session:
        user = await require_user(session, request)
        s = await subs.cancel_submission(session, submission_id, user=user)
        await session.flush()
        return await _detail(session, s, user)


@router.get("/{submission_id}/results")
async def read_results(submission_id: str, request: Request) -> dict:
    async with services_of(request).db.session() as session:
        viewer = await optional_user(session, request)
        s = await subs.get_submission(session, submission_id, viewer=viewer)
        runs = [run_json(r) for r in await subs.list_runs(session, s.id)]
        if s.kind != "model":
            storage = services_of(request).storage
            for run in runs:
                run.update(await _run_files(storage, s.id, run["name"]))
        # A rank-only task's scores are not shown here either (admins excepted).
        hidden = scores_hidden(await session.get(Task, s.task_id) if s.task_id else None, viewer)
        if hidden:
            for run in runs:
                run["summary"] = {k: v for k, v in run["summary"].items() if k != "scores"}
        return {
            "id": s.id,
            "status": s.status,
            "scores": []
            if hidden
            else [score_json(x) for x in await subs.list_scores(session, s.id)],
            **({"scores_hidden": "the task shows ranks only (a blind phase)"} if hidden else {}),
            "runs": runs,
            **await _family(session, s),
        }


async def _run_files(storage: Storage, submission_id: str, name: str) -> dict:
    """A benchmark run's own record: its result.json (exit code, times, the full rusage,
    metrics) and the hwinfo.json of the machine it ran on."""
    number = name.removeprefix("run-")
    if not number.isdigit():
        return {}
    prefix = results_prefix(submission_id, int(number))
    return {
        "result": await read_json(storage, f"{prefix}/result.json"),
        "hwinfo": await read_json(storage, f"{prefix}/hwinfo.json"),
    }


@router.get("/{submission_id}/logs")
async def read_logs(submission_id: str, request: Request, offset: Offset = 0) -> dict:
    services = services_of(request)
    async with services.db.session() as session:
        viewer = await optional_user(session, request)
        s = await get_submission_for_logs(session, submission_id, viewer=viewer)
    text = await subs.read_logs(services.storage, s.id)
    data = text.encode()
    return {
        "text": data[offset:].decode("utf-8", errors="replace"),
        "next_offset": len(data),
        "complete": s.status in ("done", "failed", "cancelled"),
    }


@router.get("/{submission_id}/logs/link")
async def read_log_link(submission_id: str, request: Request, part: str = "build") -> dict:
    """A 15-minute link to the whole log of the build or of one dataset or run; the owner's
    (or an admin's) only: anyone else gets the 404 of a submission they cannot see."""
    services = services_of(request)
    async with services.db.session() as session:
        viewer = await optional_user(session, request)
        s = await get_own_submission(session, submission_id, viewer=viewer)
    return await create_log_link(
        services.storage,
        s.id,
        part,
        public_url=services.settings.public_url,
        secret=secret_key(services.settings),
    )


@router.post("/{submission_id}/rerun")
async def rerun(submission_id: str, request: Request) -> dict:
    """Run a finished model submission's evaluation again (its owner or an admin)."""
    services = services_of(request)
    async with services.db.session() as session:
        user = await require_user(session, request)
        s = await rerun_submission(session, services.outbox, submission_id, user=user)
        await session.flush()
        return await _detail(session, s, user)


@router.delete("/{submission_id}")
async def purge(submission_id: str, request: Request) -> dict:
    services = services_of(request)
    async with services.db.session() as session:
        user = await require_user(session, request)
        return await subs.purge_submission(session, services.storage, submission_id, user=user)
