"""Following a submission's timeline: poll its events until it reaches a terminal state."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

from cli import render
from cli.client import ApiError, Client
from cli.errors import CliError, UsageError

# Consecutive failed polls (server restarting, network blip) tolerated before giving up.
MAX_POLL_FAILURES = 10


def submission_path(submission_id: str, suffix: str = "") -> str:
    return f"/submissions/{quote(submission_id, safe='')}{suffix}"


# Where a command takes a submission's id, `last` stands for your most recent submission.
LAST = "last"


def resolve_id(client: Client, submission_id: str) -> str:
    """The id itself, or for `last` the id of your most recent submission."""
    if submission_id != LAST:
        return submission_id
    answer = client.get("/submissions", params={"limit": 1})
    rows = answer.get("submissions") or []
    if not rows:
        raise UsageError(
            "`last` stands for your most recent submission, and you have none yet",
            hint="upload one with `weighbridge upload PATH --task TASK`",
        )
    return str(rows[0]["id"])


def last_event_id(events: list[dict[str, Any]], default: int = 0) -> int:
    ids = [e["id"] for e in events if isinstance(e.get("id"), int)]
    return max(ids, default=default)


def follow(
    client: Client,
    submission: dict[str, Any],
    *,
    show: bool,
    interval: float = 1.0,
) -> dict[str, Any]:
    """Print each new event (when `show`) until the submission is done, failed or cancelled.

    Returns the final submission (GET /submissions/{id}). The events already in
    `submission` are taken as printed.
    """
    submission_id = submission["id"]
    after = last_event_id(submission.get("events") or [])
    status = submission.get("status", "")
    console = render.stdout()
    failures = 0
    spinner = console.status(render.plain(f"{status}…"), spinner="dots") if show else None
    try:
        if spinner is not None:
            spinner.start()
        while status not in render.TERMINAL:
            time.sleep(interval)
            try:
                answer = client.get(
                    submission_path(submission_id, "/events"), params={"after": after}
                )
            except ApiError as exc:
                if exc.status < 500:
                    raise
                failures = _count_failure(failures, exc)
                continue
            except CliError as exc:
                failures = _count_failure(failures, exc)
                continue
            failures = 0
            for event in answer.get("events") or []:
                after = max(after, event.get("id") or after)
                if show:
                    console.print(render.event_line(event))
            status = answer.get("status", status)
            if spinner is not None:
                spinner.update(render.plain(f"{status}…"))
    except KeyboardInterrupt:
        raise CliError(
            f"stopped watching; submission {submission_id} goes on ({status})",
            exit_code=130,
            hint=f"watch it again with `weighbridge status {submission_id} --watch`",
        ) from None
    finally:
        if spinner is not None:
            spinner.stop()
    return client.get(submission_path(submission_id))


def _count_failure(failures: int, exc: CliError) -> int:
    failures += 1
    if failures >= MAX_POLL_FAILURES:
        raise exc
    render.note(f"{exc.message}; retrying ({failures}/{MAX_POLL_FAILURES})")
    return failures
