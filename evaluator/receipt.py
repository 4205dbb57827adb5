"""The receipt: the full record of what ran, where and with which versions."""

from __future__ import annotations

import os
import socket
from typing import Any

from core.version import __version__
from evaluator import hwinfo as hwinfo_module


def hardware(info: dict[str, Any] | None = None, gpu_name: str | None = None) -> dict[str, Any]:
    """The machine the handler ran on (this evaluator's machine for the local runner): the
    headline figures of hwinfo.json, plus the GPU the handler's worker reported using."""
    summary = hwinfo_module.summary(info or hwinfo_module.machine_info())
    summary["gpu"] = gpu_name
    return summary


def evaluator_identity(fleet: str) -> dict[str, Any]:
    """Which evaluator did the work: the fleet whose queue it received the message from, and
    the process (host and pid), so two fleets side by side can be told apart."""
    return {"fleet": fleet, "host": socket.gethostname(), "pid": os.getpid()}


def build_receipt(
    *,
    submission: dict[str, Any],
    build: dict[str, Any],
    mar_sha256: str,
    datasets: list[dict[str, Any]],
    summaries: dict[str, dict[str, Any]],
    runner: str,
    hwinfo: dict[str, Any] | None = None,
    deltas: list[dict[str, Any]] | None = None,
    evaluator: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What a person needs to trust (or reproduce) the scores.

    `hwinfo` maps each dataset to its run's hwinfo.json key (the full machine record);
    `deltas` lists the robustness/fairness scores of perturbed datasets.
    """
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
                **({"perturbation_of": d["perturbation_of"]} if d.get("perturbation_of") else {}),
            }
            for d in datasets
        ],
        "packages": versions,
        "hardware": hardware(hwinfo, worker.get("gpu_name")),
        "hwinfo": {
            name: (s.get("files") or {}).get("hwinfo")
            for name, s in summaries.items()
            if (s.get("files") or {}).get("hwinfo")
        },
        "runner": runner,
        "evaluator": evaluator,
        "sandbox": {
            **(worker.get("sandbox") or {}),
            "network": worker.get("network"),
            "limits": worker.get("limits"),
        },
        "timings": {
            name: {**(s.get("timings") or {}), **(s.get("performance") or {})}
            for name, s in summaries.items()
        },
        "deltas": list(deltas or []),
    }
