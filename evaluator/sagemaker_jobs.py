"""SageMaker jobs (batch transform and training) as the evaluator runs them: names, slots, waits.

What both job kinds share: a valid name per attempt that starts with the fleet's prefix (so a
fleet can count its own jobs), creation retried with backoff while SageMaker throttles or says a
limit is reached (for a bounded time, then a RetryableError: the message comes back later), at
most `WEIGHBRIDGE_SAGEMAKER_MAX_JOBS` jobs in progress per fleet (counted in SageMaker, plus an
in-process semaphore so that one evaluator's evaluations do not race each other for the last
slot), and the wait for a job's end with a capped backoff between describes, a stop on cancel
(best effort: the job is ours to stop, but a failing stop call must not hide the cancel).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import random
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from core.aws import error_code, error_message, sagemaker_name
from core.errors import RetryableError

log = logging.getLogger(__name__)

# Codes SageMaker answers while it is busy or a quota (instances, jobs) is used up: worth waiting.
RETRY_CODES = frozenset(
    {"ThrottlingException", "Throttling", "ThrottledException", "ResourceLimitExceeded"}
)
ENDED = frozenset({"Completed", "Failed", "Stopped"})
FLEET_PART_CHARS = 20
CANCEL_CHECK_SECONDS = 1.0

StopCheck = Callable[[], Awaitable[bool]]

# One semaphore per event loop, fleet and limit in this process (see the module docstring);
# made lazily (a semaphore belongs to the loop it first waited in).
_SLOTS: dict[tuple[int, str, int], asyncio.Semaphore] = {}


@dataclass(frozen=True)
class Backoff:
    """Delays between tries: `first` seconds, doubling to `cap`, each with up to 25 % jitter;
    `within` bounds the whole retrying (creation) in seconds."""

    first: float = 1.0
    cap: float = 30.0
    within: float = 300.0

    def delays(self) -> Any:
        delay = self.first
        while True:
            yield delay * (1 + random.random() / 4)
            delay = min(delay * 2, self.cap)


def fleet_prefix(fleet: str) -> str:
    """The name prefix of every job of `fleet` (`wb-<fleet>-`)."""
    return "wb-" + sagemaker_name(fleet, max_length=FLEET_PART_CHARS) + "-"


def job_name(fleet: str, submission_id: str, what: str, *, token: str | None = None) -> str:
    """A valid SageMaker job name (at most 63 characters), unique per attempt.

    `wb-<fleet>-<12 hex of submission and what>-<what>-<token>`: the fleet prefix and the hash
    come first and always survive shortening, so the fleet counts its jobs and an attempt finds
    the job an earlier delivery of the same work started (`job_family`)."""
    family = job_family(fleet, submission_id, what)
    token = token or f"{int(time.time()):x}{secrets.token_hex(2)}"
    return sagemaker_name(family, what, token)


def job_family(fleet: str, submission_id: str, what: str) -> str:
    """The start every attempt's name of this work shares (see job_name)."""
    digest = hashlib.sha256(f"{submission_id}\0{what}".encode()).hexdigest()[:12]
    return fleet_prefix(fleet) + digest


def is_fleet_job(name: str, fleet: str) -> bool:
    """True for a job named by job_name for `fleet` (not for a fleet whose id extends it)."""
    return re.match(re.escape(fleet_prefix(fleet)) + r"[0-9a-f]{12}(-|$)", name) is not None


async def call_with_retry(
    call: Callable[[], Awaitable[Any]], *, what: str, backoff: Backoff = Backoff()
) -> Any:
    """`call()`, tried again after a backoff while SageMaker throttles or a limit is reached;
    past `backoff.within` seconds a RetryableError saying so (the whole message is retried)."""
    deadline = time.monotonic() + backoff.within
    delays = backoff.delays()
    while True:
        try:
            return await call()
        except Exception as exc:
            code = error_code(exc)
            if code not in RETRY_CODES:
                raise
            delay = next(delays)
            if time.monotonic() + delay > deadline:
                raise RetryableError(
                    f"{what}: SageMaker kept refusing for {backoff.within:g} s "
                    f"({error_message(exc)}); the job is retried later"
                ) from exc
            log.info("%s: %s; trying again in %.1f s", what, code, delay)
            await asyncio.sleep(delay)


def fleet_semaphore(fleet: str, limit: int) -> asyncio.Semaphore:
    slot = (id(asyncio.get_running_loop()), fleet, limit)
    if slot not in _SLOTS:
        _SLOTS[slot] = asyncio.Semaphore(limit)
    return _SLOTS[slot]


async def count_in_progress(
    list_page: Callable[..., Awaitable[dict[str, Any]]], *, fleet: str, jobs_key: str
) -> int:
    """The fleet's jobs SageMaker reports InProgress (`list_page` is list_transform_jobs or
    list_training_jobs; `jobs_key` the summaries' key in its answer)."""
    count = 0
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {
            "StatusEquals": "InProgress",
            "NameContains": fleet_prefix(fleet),
            "MaxResults": 100,
        }
        if token:
            kwargs["NextToken"] = token
        page = await call_with_retry(
            functools.partial(list_page, **kwargs), what="listing the fleet's jobs"
        )
        names = [
            s.get("TransformJobName") or s.get("TrainingJobName") or "" for s in page[jobs_key]
        ]
        count += sum(1 for name in names if is_fleet_job(name, fleet))
        token = page.get("NextToken")
        if not token:
            return count


async def wait_for_slot(
    count: Callable[[], Awaitable[int]],
    *,
    limit: int,
    should_stop: StopCheck | None,
    backoff: Backoff,
    cancelled: Callable[[], BaseException],
) -> None:
    """Return once the fleet has fewer than `limit` jobs in progress (checked with `count`),
    waiting with a capped backoff; `cancelled()` is raised when `should_stop` says so."""
    delays = backoff.delays()
    while await count() >= limit:
        await sleep_unless_stopped(next(delays), should_stop, cancelled)


async def sleep_unless_stopped(
    seconds: float, should_stop: StopCheck | None, cancelled: Callable[[], BaseException]
) -> None:
    """Sleep `seconds`, asking `should_stop` every second; raise `cancelled()` when it says so."""
    end = time.monotonic() + seconds
    while True:
        if should_stop is not None and await should_stop():
            raise cancelled()
        left = end - time.monotonic()
        if left <= 0:
            return
        await asyncio.sleep(min(left, CANCEL_CHECK_SECONDS))


async def wait_for_end(
    describe: Callable[[], Awaitable[dict[str, Any]]],
    *,
    status_key: str,
    should_stop: StopCheck | None,
    stop: Callable[[], Awaitable[Any]],
    backoff: Backoff,
    cancelled: Callable[[], BaseException],
    what: str,
) -> dict[str, Any]:
    """Describe the job until it is Completed, Failed or Stopped, with a capped backoff between
    describes (throttled describes are tried again); on cancel the job is stopped (best effort,
    an error of the stop call is logged) and `cancelled()` raised."""
    delays = backoff.delays()
    patient = Backoff(first=backoff.first, cap=backoff.cap, within=max(backoff.within, 600.0))
    try:
        while True:
            described = await call_with_retry(describe, what=f"describing {what}", backoff=patient)
            if described.get(status_key) in ENDED:
                return described
            await sleep_unless_stopped(next(delays), should_stop, cancelled)
    except BaseException as exc:
        # Cancelled (by the user, or this task by a timeout): the instances cost money.
        if not isinstance(exc, RetryableError):
            await asyncio.shield(stop_quietly(stop, what=what))
        raise


async def stop_quietly(stop: Callable[[], Awaitable[Any]], *, what: str) -> None:
    """Ask SageMaker to stop the job; a failure is logged, never raised (best effort)."""
    try:
        await stop()
        log.info("asked SageMaker to stop %s", what)
    except Exception as exc:  # the stop is a courtesy to the bill; the cancel stands anyway
        log.warning("could not stop %s: %s", what, error_message(exc))
