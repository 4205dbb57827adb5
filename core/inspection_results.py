"""An inspection read back in Amun's shapes: its status, its build log, each run's log and
result.

Amun numbered an inspection's runs from 0 (`results/0`, `/job/0/result`); Weighbridge's runs
are `run-1`..`run-<batch_size>` stored under `results/1`..: the item `i` of the Amun API is
run `i + 1`, and each result says which run it is (`weighbridge.run`).

A result has every field of Amun's (hwinfo, stdout parsed as JSON when it is JSON, stderr,
exit_code, script_sha256, usage with every `ru_*` field, start and end datetimes, os_release,
runtime_environment, hostname), built from the run's `result.json`, `hwinfo.json`, `stdout` and
`stderr`; and what Amun's lacked, from the same hwinfo: `memory`, `gpu` and `cgroup` (the CPU
and memory limits the run really had, where Amun reported the host's 64 CPUs).
"""

from __future__ import annotations

import json
import re
from typing import Any

from core.errors import NotFound, WeighbridgeError
from core.models import Event, Run, Submission
from core.scrub import scrub_text, storage_paths
from core.states import TERMINAL, Status
from core.storage import Storage

RUSAGE_FIELDS = (
    "ru_utime",
    "ru_stime",
    "ru_maxrss",
    "ru_ixrss",
    "ru_idrss",
    "ru_isrss",
    "ru_minflt",
    "ru_majflt",
    "ru_nswap",
    "ru_inblock",
    "ru_oublock",
    "ru_msgsnd",
    "ru_msgrcv",
    "ru_nsignals",
    "ru_nvcsw",
    "ru_nivcsw",
)
AMUN_FIELDS = (
    "hwinfo",
    "stdout",
    "stderr",
    "exit_code",
    "script_sha256",
    "usage",
    "start_datetime",
    "end_datetime",
    "os_release",
    "runtime_environment",
    "hostname",
)
BUILD_STAGE = "build"
# "Debian GNU/Linux 12 (bookworm)" -> name, version ("12 (bookworm)"), version_id ("12").
PRETTY_NAME = re.compile(r"^(?P<name>.*?)\s+(?P<version>(?P<id>[0-9][0-9A-Za-z._-]*).*)$")


class NotReady(WeighbridgeError):
    """A run that exists but has not stored what was asked for yet."""

    status = 409
    code = "not_ready"


def batch_size_of(submission: Submission) -> int:
    return int((submission.meta.get("inspection") or {}).get("batch_size") or 1)


def run_of_item(submission: Submission, item: int) -> int:
    """Amun's item (from 0) -> Weighbridge's run number (from 1); 404 outside the batch."""
    size = batch_size_of(submission)
    if not 0 <= item < size:
        raise NotFound(
            f"inspection {submission.id} has items 0 to {size - 1} (batch_size {size}); "
            f"there is no item {item}",
            field="item",
        )
    return item + 1


def results_prefix(submission_id: str, run: int) -> str:
    return f"submissions/{submission_id}/results/{run}"


async def read_text(storage: Storage, key: str) -> str | None:
    try:
        text = (await storage.read_bytes(key)).decode("utf-8", errors="replace")
    except FileNotFoundError:
        return None
    # A log read back for a user shows no server paths (core.scrub); JSON results are as stored.
    return scrub_text(text, paths=storage_paths(storage)) if key.endswith("/log") else text


async def read_json(storage: Storage, key: str) -> dict[str, Any] | None:
    text = await read_text(storage, key)
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# Status.


def _at(event: Event | None) -> str | None:
    return event.created_at.isoformat() if event is not None else None


def _first(events: list[Event], status: str) -> Event | None:
    return next((e for e in events if e.status == status), None)


def _last(events: list[Event], status: str) -> Event | None:
    return next((e for e in reversed(events) if e.status == status), None)


def build_status(submission: Submission, events: list[Event]) -> dict[str, Any]:
    """Amun's `build`: a container state (waiting, running, terminated) with its times, exit
    code and reason, from the submission's timeline."""
    started, built = _first(events, Status.BUILDING), _first(events, Status.BUILT)
    failed, cancelled = _last(events, Status.FAILED), _last(events, Status.CANCELLED)
    out: dict[str, Any] = {
        "container": None,  # no image is built locally; the environment is a virtualenv
        "state": "waiting",
        "started_at": _at(started),
        "finished_at": None,
        "exit_code": None,
        "reason": None,
    }
    if built is not None:
        out.update(state="terminated", finished_at=_at(built), exit_code=0, reason="Completed")
    elif failed is not None and submission.failed_stage == BUILD_STAGE:
        out.update(
            state="terminated", finished_at=_at(failed), exit_code=1, reason=submission.error
        )
    elif cancelled is not None:
        out.update(
            state="terminated", finished_at=_at(cancelled), reason=f"cancelled: {cancelled.message}"
        )
    elif failed is not None:
        out.update(state="terminated", finished_at=_at(failed), reason=submission.error)
    elif started is not None:
        out["state"] = "running"
    return out


PHASES = {
    Status.UPLOADED: "Pending",
    Status.BUILDING: "Running",
    Status.BUILT: "Running",
    Status.EVALUATING: "Running",
    Status.DONE: "Succeeded",
    Status.FAILED: "Failed",
    Status.CANCELLED: "Failed",
}


def workflow_status(submission: Submission, events: list[Event], runs: list[Run]) -> dict[str, Any]:
    """Amun's `workflow` (an Argo workflow's status: phase, startedAt, finishedAt, message)
    plus the status of each run, by Amun item."""
    status = Status(submission.status)
    ended = _last(events, status.value) if status in (Status.DONE, Status.FAILED) else None
    if status is Status.CANCELLED:
        ended = _last(events, Status.CANCELLED)
    message = None
    if status is Status.FAILED:
        message = submission.error
    elif status is Status.CANCELLED and ended is not None:
        message = f"cancelled: {ended.message}"
    by_name = {r.name: r for r in runs}
    items = []
    for item in range(batch_size_of(submission)):
        run = by_name.get(f"run-{item + 1}")
        items.append(
            {
                "item": item,
                "run": f"run-{item + 1}",
                # A run never started is queued while the inspection goes on, and cancelled
                # once it has ended (it will never run), as a cancel leaves started ones.
                "status": run.status if run else ("cancelled" if status in TERMINAL else "queued"),
                "started_at": run.started_at.isoformat() if run and run.started_at else None,
                "finished_at": run.finished_at.isoformat() if run and run.finished_at else None,
                "exit_code": (run.summary or {}).get("exit_code") if run else None,
                "error": run.error if run else None,
            }
        )
    return {
        "phase": PHASES[status],
        "status": status.value,
        "startedAt": _at(events[0]) if events else None,
        "finishedAt": _at(ended),
        "message": message,
        "runs": items,
    }


async def data_stored(storage: Storage, submission: Submission) -> bool:
    """Amun's `data_stored`: every run's result is in storage."""
    keys = set(await storage.list(f"submissions/{submission.id}/results/"))
    return all(
        f"{results_prefix(submission.id, item + 1)}/result.json" in keys
        for item in range(batch_size_of(submission))
    )


async def inspection_status(
    storage: Storage, submission: Submission, events: list[Event], runs: list[Run]
) -> dict[str, Any]:
    return {
        "build": build_status(submission, events),
        "workflow": workflow_status(submission, events, runs),
        "data_stored": await data_stored(storage, submission),
    }


# Results.


def os_release(os_info: dict[str, Any] | None) -> dict[str, Any] | None:
    """/etc/os-release's fields as Amun reported them, from hwinfo's `os`."""
    if not os_info:
        return None
    pretty = os_info.get("distribution")
    out: dict[str, Any] = {"pretty_name": pretty, "name": pretty, "id": None}
    match = PRETTY_NAME.match(pretty or "")
    if match:
        out.update(
            name=match.group("name"), version=match.group("version"), version_id=match.group("id")
        )
    if out["name"]:
        out["id"] = str(out["name"]).split()[0].lower()
    for key in ("system", "kernel", "machine"):
        if key in os_info:
            out[key] = os_info[key]
    return out


def _python_version(hwinfo: dict[str, Any]) -> str | None:
    version = (hwinfo.get("python") or {}).get("version")
    return ".".join(str(version).split(".")[:2]) if version else None


def amun_hwinfo(hwinfo: dict[str, Any] | None) -> dict[str, Any] | None:
    """Our hwinfo document with Amun's `cpu_info` and `platform` sections added."""
    if hwinfo is None:
        return None
    cpu, os_info = hwinfo.get("cpu") or {}, hwinfo.get("os") or {}
    return {
        **hwinfo,
        "cpu_info": {
            "arch": cpu.get("architecture"),
            "brand_raw": cpu.get("model"),
            "vendor_id_raw": cpu.get("vendor"),
            "count": cpu.get("logical_cores"),
            "family": cpu.get("family"),
            "model": cpu.get("model_number"),
            "stepping": cpu.get("stepping"),
            "flags": cpu.get("flags"),
        },
        "platform": {
            "system": os_info.get("system"),
            "release": os_info.get("kernel"),
            "version": os_info.get("version"),
            "machine": os_info.get("machine"),
            "python_version": (hwinfo.get("python") or {}).get("version"),
        },
    }


def parsed_stdout(text: str | None) -> Any:
    """Amun's stdout: the JSON document the script printed, else its text."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def amun_result(
    result: dict[str, Any],
    *,
    hwinfo: dict[str, Any] | None,
    stdout: str | None,
    stderr: str | None,
    run: int,
    script_sha256: str | None = None,
) -> dict[str, Any]:
    """One run's result in Amun's shape plus memory, GPU and cgroup limits. `script_sha256`:
    the digest of the request's script (Amun's), when there was one."""
    hw = hwinfo or {}
    cpu, gpu = hw.get("cpu") or {}, hw.get("gpu") or {}
    release = os_release(hw.get("os") or result.get("os_release"))
    usage = result.get("usage") or {}
    return {
        "hwinfo": amun_hwinfo(hwinfo),
        "stdout": parsed_stdout(stdout),
        "stderr": stderr,
        "exit_code": result.get("exit_code"),
        "script_sha256": script_sha256 or result.get("script_sha256"),
        "usage": {name: usage.get(name) for name in RUSAGE_FIELDS},
        "start_datetime": result.get("start_datetime"),
        "end_datetime": result.get("end_datetime"),
        "os_release": release,
        "runtime_environment": {
            "hardware": {"cpu_family": cpu.get("family"), "cpu_model": cpu.get("model_number")},
            "operating_system": {
                "name": (release or {}).get("id"),
                "version": (release or {}).get("version_id"),
            },
            "python_version": _python_version(hw),
            "cuda_version": gpu.get("cuda"),
        },
        "hostname": result.get("hostname") or hw.get("hostname"),
        # What Amun did not record.
        "memory": hw.get("memory"),
        "gpu": hwinfo.get("gpu") if hwinfo else None,
        "cgroup": hw.get("cgroup"),
        "weighbridge": {
            "run": f"run-{run}",
            "timed_out": result.get("timed_out"),
            "oom": result.get("oom"),
            "failure": result.get("failure"),
            "seconds": result.get("seconds"),
            "metrics": result.get("metrics") or {},
            "peak": result.get("peak"),
            "scripts_sha256": result.get("script_sha256"),
            # The run's own sandbox limits (hwinfo's cgroup is the evaluator's).
            "limits": result.get("limits"),
            "sandbox": result.get("sandbox"),
        },
    }


async def read_result(storage: Storage, submission: Submission, item: int) -> dict[str, Any]:
    """Item `item`'s result in Amun's shape; NotReady while its run has not stored one."""
    run = run_of_item(submission, item)
    prefix = results_prefix(submission.id, run)
    result = await read_json(storage, f"{prefix}/result.json")
    if result is None:
        raise NotReady(
            f"item {item} (run-{run}) of inspection {submission.id} has no result yet (the "
            f"inspection is {submission.status}); ask again when it has run",
            field="item",
        )
    return amun_result(
        result,
        hwinfo=await read_json(storage, f"{prefix}/hwinfo.json"),
        stdout=await read_text(storage, f"{prefix}/stdout"),
        stderr=await read_text(storage, f"{prefix}/stderr"),
        run=run,
        script_sha256=(submission.meta.get("inspection") or {}).get("script_sha256"),
    )


async def read_run_log(storage: Storage, submission: Submission, item: int) -> str:
    run = run_of_item(submission, item)
    text = await read_text(storage, f"{results_prefix(submission.id, run)}/log")
    if text is None:
        raise NotReady(
            f"item {item} (run-{run}) of inspection {submission.id} has no log yet (the "
            f"inspection is {submission.status})",
            field="item",
        )
    return text


async def read_build_log(storage: Storage, submission: Submission) -> str | None:
    """The build log (None until the builder stored it; Amun's log is nullable too)."""
    return await read_text(storage, f"submissions/{submission.id}/build/log")
