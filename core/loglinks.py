"""Owners' links to a whole log: the build's (`submissions/<id>/build/log`) or one dataset's or
run's (`submissions/<id>/results/<part>/log`), as a presigned link that lasts 15 minutes."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import Forbidden, NotFound, WeighbridgeError
from core.models import Submission, Task, User, utcnow
from core.presign import presigned_url
from core.scrub import scrub_text, storage_paths
from core.storage import Storage
from core.submissions import get_submission
from core.tasks import task_config

LINK_SECONDS = 15 * 60


def log_key(submission_id: str, part: str) -> str:
    """The storage key of a part's log: `build`, or a dataset or run name."""
    if not part or "/" in part or part in (".", ".."):
        raise WeighbridgeError(
            f"part must be 'build' or a dataset or run name, not {part!r}", field="part"
        )
    if part == "build":
        return f"submissions/{submission_id}/build/log"
    return f"submissions/{submission_id}/results/{part}/log"


async def log_parts(storage: Storage, submission_id: str) -> list[str]:
    """The parts of a submission that have a log, the build first."""
    prefix = f"submissions/{submission_id}/"
    parts = []
    for key in await storage.list(prefix.rstrip("/")):
        middle = key[len(prefix) : -len("/log")] if key.endswith("/log") else ""
        if middle == "build":
            parts.append("build")
        elif middle.startswith("results/") and middle.count("/") == 1:
            parts.append(middle.removeprefix("results/"))
    return sorted(parts, key=lambda p: (p != "build", p))


async def get_own_submission(
    session: AsyncSession, submission_id: str, *, viewer: User | None
) -> Submission:
    """The viewer's own submission (any, for an admin); 404 for everyone else's, public ones
    included, as for a private submission (nothing says that it exists)."""
    submission = await get_submission(session, submission_id, viewer=viewer)
    if viewer is None or not (viewer.is_admin or viewer.id == submission.user_id):
        raise NotFound(f"no submission {submission_id}", field="id")
    return submission


def logs_public(task: Task | None) -> bool:
    """Whether the task lets anyone read its public submissions' logs (`[logs] public`,
    off by default)."""
    return task is not None and task_config(task).logs.public


async def get_submission_for_logs(
    session: AsyncSession, submission_id: str, *, viewer: User | None
) -> Submission:
    """The submission whose logs the viewer may read: their own (any, for an admin), or a
    public one of a task with public logs; 403 for a visible one whose logs are not public."""
    submission = await get_submission(session, submission_id, viewer=viewer)
    if viewer is not None and (viewer.is_admin or viewer.id == submission.user_id):
        return submission
    task = await session.get(Task, submission.task_id) if submission.task_id else None
    if not logs_public(task):
        raise Forbidden(
            f"the logs of submission {submission_id} are its owner's only (its task does not "
            "make logs public)",
            field="id",
        )
    return submission


async def create_log_link(
    storage: Storage,
    submission_id: str,
    part: str,
    *,
    public_url: str,
    secret: str,
    seconds: int = LINK_SECONDS,
) -> dict[str, str]:
    """`{"part", "url", "expires_at"}`: a link that downloads the part's whole log."""
    key = log_key(submission_id, part)
    if not await storage.exists(key):
        known = await log_parts(storage, submission_id)
        raise NotFound(
            f"submission {submission_id} has no {part!r} log; parts with a log: "
            + (", ".join(known) or "none yet"),
            field="part",
        )
    # The link gives a copy without server paths (core.scrub), as every log shown to a user;
    # logs are bounded by the runners (head and tail of a long one), so this copy is small.
    text = (await storage.read_bytes(key)).decode("utf-8", errors="replace")
    shown = f"{key}.shown"
    await storage.write_bytes(shown, scrub_text(text, paths=storage_paths(storage)).encode())
    expires_at = utcnow() + timedelta(seconds=seconds)
    url = await presigned_url(
        storage, shown, method="GET", seconds=seconds, public_url=public_url, secret=secret
    )
    return {"part": part, "url": url, "expires_at": expires_at.isoformat()}
