"""The receipt: the full record of what ran, where and with which versions."""

from __future__ import annotations

import os
import platform
import socket
from typing import Any

import psutil

from core.version import __version__


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(gpu_name: str | None = None) -> dict[str, Any]:
    """The machine the handler ran on (this evaluator's machine for the local runner)."""
    return {
        "node": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "memory_mb": round(psutil.virtual_memory().total / 2**20),
        "gpu": gpu_name,
    }


def build_receipt(
    *,
    submission: dict[str, Any],
    build: dict[str, Any],
    mar_sha256: str,
    datasets: list[dict[str, Any]],
    summaries: dict[str, dict[str, Any]],
    runner: str,
) -> dict[str, Any]:
    """What a person needs to trust (or reproduce) the scores."""
    worker: dict[str, Any] = {}
    for summary in summaries.values():
        worker = summary.get("worker") or worker
    versions = dict(worker.get("versions") or {})
    versions["weighbridge"] = __version__
    return {
        "submission_id": submission.get("id"),
        "bundle_sha256": build.get("bundle_sha256") or submission.get("upload_sha256"),
        "mar_sha256": mar_sha256,
        "mar_key": build.get("mar_key"),
        "requirements_sha256": build.get("requirements_sha256"),
        "datasets": [
            {
                "name": d["name"],
                "sha256": d["sha256"],
                "n_examples": (summaries.get(d["name"]) or {}).get("n_examples"),
            }
            for d in datasets
        ],
        "packages": versions,
        "hardware": hardware(worker.get("gpu_name")),
        "runner": runner,
        "sandbox": {
            "network": worker.get("network"),
            "limits": worker.get("limits"),
        },
        "timings": {
            name: {**(s.get("timings") or {}), **(s.get("performance") or {})}
            for name, s in summaries.items()
        },
    }
