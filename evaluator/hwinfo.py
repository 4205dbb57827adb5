"""hwinfo.json: the machine a dataset ran on, as far as the process can see it.

Amun's hwinfo recorded CPU type and flags but no memory, no GPU and no container limits (it
reported 64 host CPUs to a job limited to 2). This one records, once per worker process:

- `cpu`: model, vendor, family/model/stepping, architecture, flags, caches (sysfs: level,
  type, size), logical, physical, usable (affinity) and effective (affinity and cgroup
  quota) cores;
- `cgroup`: version (2, 1 or null), CPU quota/period and the CPUs they allow, memory limit;
  each null when unlimited or unreadable (cgroup v2 `cpu.max`/`memory.max`, v1
  `cpu.cfs_quota_us`/`cpu.cfs_period_us`/`memory.limit_in_bytes`; the strictest of the
  process's cgroup and its ancestors);
- `memory`: total, available (refreshed at every write), swap, and the effective limit;
- `gpu`: CUDA devices as torch sees them (name, memory, compute capability), probed in a
  short-lived subprocess so that this process never holds a CUDA context, and only when an
  NVIDIA/AMD device node exists; `nvidia-smi` is not needed;
- `os`, `python` and `packages` (read from metadata, nothing imported).

The document is cached per process (`machine_info`) and written per dataset run
(`write_hwinfo`) next to the run's predictions, log and result.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import glob
import json
import logging
import os
import platform
import socket
import subprocess
import sys
import threading
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from core.storage import Storage
from core.version import __version__

log = logging.getLogger(__name__)

SCHEMA = 1
KEYS = (
    "schema",
    "collected_at",
    "hostname",
    "cpu",
    "cgroup",
    "memory",
    "gpu",
    "os",
    "python",
    "packages",
)
PACKAGES = (
    "torch",
    "numpy",
    "scipy",
    "scikit-learn",
    "sacrebleu",
    "torch-model-archiver",
    "psutil",
)
# cgroup v1 writes "no limit" as the largest page-aligned signed 64-bit number.
V1_UNLIMITED = 1 << 62
GPU_PROBE_SECONDS = 60.0

_lock = threading.Lock()
_cached: dict[str, Any] | None = None
_prefetching = False


# -- CPU ------------------------------------------------------------------------------------


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """Model, vendor, family, flags... of the first processor (all are alike on one host)."""
    fields: dict[str, str] = {}
    try:
        with cpuinfo.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    if fields:
                        break  # the first processor's block is enough
                    continue
                key, sep, value = line.partition(":")
                if sep:
                    fields.setdefault(key.strip().lower(), value.strip())
    except OSError:
        pass
    flags = fields.get("flags") or fields.get("features") or ""  # "Features" on arm64
    model = (
        fields.get("model name")
        or fields.get("cpu model")
        or fields.get("hardware")
        or platform.processor()
        or platform.machine()
    )
    return {
        "model": model or None,
        "vendor": fields.get("vendor_id") or fields.get("cpu implementer"),
        "family": _int(fields.get("cpu family")),
        "model_number": _int(fields.get("model")),
        "stepping": _int(fields.get("stepping")),
        "architecture": platform.machine() or None,
        "mhz": _float(fields.get("cpu mhz")),
        "cache": fields.get("cache size"),
        "flags": sorted(flags.split()),
    }


def cpu_caches(root: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> list[dict[str, Any]]:
    """The first CPU's caches (level, type, size, and how many CPUs share each), from sysfs;
    /proc/cpuinfo's `cache size` names only one of them. Empty where sysfs has none."""
    caches = []
    for index in sorted(root.glob("index[0-9]*"), key=lambda p: _int(p.name[5:]) or 0):
        level = _int(_read(index / "level"))
        if level is None:
            continue
        shared = _read(index / "shared_cpu_list")
        caches.append(
            {
                "level": level,
                "type": _read(index / "type"),
                "size": _read(index / "size"),
                "line_bytes": _int(_read(index / "coherency_line_size")),
                "shared_cpu_list": shared,
            }
        )
    return caches


def _int(text: str | None) -> int | None:
    """Decimal ("08" too), or hex with 0x (arm64's "CPU implementer: 0x41")."""
    if text is None:
        return None
    for base in (10, 0):
        try:
            return int(text, base)
        except ValueError:
            continue
    return None


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def core_counts(cpu_limit: float | None) -> dict[str, Any]:
    logical = os.cpu_count() or 1
    try:
        physical = psutil.cpu_count(logical=False)
    except Exception:
        physical = None
    usable = usable_cpus()
    effective = float(usable) if cpu_limit is None else min(float(usable), cpu_limit)
    return {
        "logical_cores": logical,
        "physical_cores": physical,
        "usable_cores": usable,
        "effective_cores": round(effective, 3),
    }


# -- cgroups --------------------------------------------------------------------------------


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _own_paths(proc_cgroup: Path) -> dict[str, str]:
    """controller -> this process's cgroup path; "" is the v2 unified hierarchy."""
    paths: dict[str, str] = {}
    for line in (_read(proc_cgroup) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _id, controllers, path = parts
        for controller in controllers.split(",") if controllers else [""]:
            paths.setdefault(controller, path)
    return paths


def _chain(root: Path, own: str | None) -> list[Path]:
    """The process's cgroup folder (when visible) and its ancestors up to `root`, deepest first.

    In a container the path in /proc/self/cgroup is often the host's while the container sees
    its own cgroup as the mount's root: then only the root is read.
    """
    chain: list[Path] = []
    if own and own != "/" and ".." not in own.split("/"):
        folder = root / own.lstrip("/")
        if folder.is_dir():
            while folder != root and root in folder.parents:
                chain.append(folder)
                folder = folder.parent
    chain.append(root)
    return chain


def _strictest(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


def _set_cpu(result: dict[str, Any], quotas: list[tuple[int, int]]) -> None:
    """The strictest (quota, period) along the path, as fractions of a CPU compare."""
    if quotas:
        quota, period = min(quotas, key=lambda qp: qp[0] / qp[1])
        result.update(cpu_quota_us=quota, cpu_period_us=period)


def cgroup_limits(
    root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")
) -> dict[str, Any]:
    """CPU quota and memory limit of this process's cgroup (v2, else v1); null = unlimited."""
    result: dict[str, Any] = {
        "version": None,
        "cpu_quota_us": None,
        "cpu_period_us": None,
        "cpu_limit": None,
        "memory_limit_bytes": None,
    }
    own = _own_paths(proc_cgroup)
    if (root / "cgroup.controllers").is_file():
        result["version"] = 2
        cpu: list[tuple[int, int]] = []
        memory: list[float | None] = []
        for folder in _chain(root, own.get("")):
            text = _read(folder / "cpu.max")
            if text:
                quota_text, _, period_text = text.partition(" ")
                if quota_text.isdigit() and period_text.isdigit() and int(period_text) > 0:
                    cpu.append((int(quota_text), int(period_text)))  # "max ..." = no quota
            text = _read(folder / "memory.max")
            if text and text != "max" and text.isdigit():
                memory.append(float(text))
        _set_cpu(result, cpu)
        limit = _strictest(memory)
        result["memory_limit_bytes"] = int(limit) if limit is not None else None
    else:
        cpu_root = next(
            (
                root / name
                for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu")
                if (root / name).is_dir()
            ),
            None,
        )
        memory_root = root / "memory" if (root / "memory").is_dir() else None
        if cpu_root is None and memory_root is None:
            return result
        result["version"] = 1
        if cpu_root is not None:
            cpu = []
            for folder in _chain(cpu_root, own.get("cpu") or own.get("cpuacct")):
                quota = _int(_read(folder / "cpu.cfs_quota_us"))  # -1: no quota
                period = _int(_read(folder / "cpu.cfs_period_us"))
                if quota is not None and period and quota > 0:
                    cpu.append((quota, period))
            _set_cpu(result, cpu)
        if memory_root is not None:
            memory = []
            for folder in _chain(memory_root, own.get("memory")):
                value = _int(_read(folder / "memory.limit_in_bytes"))
                if value is not None and 0 < value < V1_UNLIMITED:
                    memory.append(float(value))
            limit = _strictest(memory)
            result["memory_limit_bytes"] = int(limit) if limit is not None else None
    if result["cpu_quota_us"] is not None:
        result["cpu_limit"] = round(result["cpu_quota_us"] / result["cpu_period_us"], 3)
    return result


# -- memory, GPU, OS, packages --------------------------------------------------------------


def memory_info(limit_bytes: int | None) -> dict[str, Any]:
    vm = psutil.virtual_memory()
    try:
        swap = int(psutil.swap_memory().total)
    except Exception:
        swap = None
    total = int(vm.total)
    return {
        "total_bytes": total,
        "available_bytes": int(vm.available),
        "swap_total_bytes": swap,
        "limit_bytes": min(total, limit_bytes) if limit_bytes else total,
    }


_GPU_PROBE = r"""
import json
import torch
out = {"torch": torch.__version__, "cuda": torch.version.cuda,
       "hip": getattr(torch.version, "hip", None), "devices": []}
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        out["devices"].append({
            "index": i,
            "name": p.name,
            "memory_bytes": int(p.total_memory),
            "capability": f"{p.major}.{p.minor}",
            "multiprocessors": int(p.multi_processor_count),
        })
    try:
        out["cudnn"] = torch.backends.cudnn.version()
    except Exception:
        pass
print(json.dumps(out))
"""


def _device_nodes() -> list[str]:
    return sorted(glob.glob("/dev/nvidia[0-9]*")) + (
        ["/dev/kfd"] if os.path.exists("/dev/kfd") else []
    )


def _nvidia_driver() -> str | None:
    text = _read(Path("/proc/driver/nvidia/version"))
    if not text:
        return None
    for word in text.split():  # "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15 ..."
        if word[:1].isdigit() and word.count(".") >= 1:
            return word
    return None


def gpu_info(python: str | None = None, *, timeout: float = GPU_PROBE_SECONDS) -> dict[str, Any]:
    """GPUs as torch in `python` (default: this interpreter) sees them, from a subprocess."""
    info: dict[str, Any] = {
        "count": 0,
        "devices": [],
        "driver": _nvidia_driver(),
        "cuda": None,
        "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "source": None,
    }
    nodes = _device_nodes()
    if not nodes:
        info["source"] = "no GPU device node (/dev/nvidia*, /dev/kfd)"
        return info
    python = python or sys.executable
    try:
        done = subprocess.run(
            [python, "-c", _GPU_PROBE], capture_output=True, text=True, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        info["source"] = "torch"
        info["error"] = f"the GPU probe did not finish: {exc}"
        return info
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        info["source"] = "torch"
        info["error"] = f"the GPU probe failed: {last[:300]}"
        return info
    try:
        probe = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        info["source"] = "torch"
        info["error"] = "the GPU probe printed no JSON"
        return info
    info.update(
        source="torch",
        count=len(probe["devices"]),
        devices=probe["devices"],
        cuda=probe.get("cuda") or probe.get("hip"),
        cudnn=probe.get("cudnn"),
    )
    return info


def os_info() -> dict[str, Any]:
    distribution = None
    for line in (_read(Path("/etc/os-release")) or "").splitlines():
        if line.startswith("PRETTY_NAME="):
            distribution = line.split("=", 1)[1].strip().strip('"')
    return {
        "system": platform.system(),
        "kernel": platform.release(),
        "version": platform.version(),
        "distribution": distribution,
        "machine": platform.machine(),
    }


def python_info() -> dict[str, Any]:
    return {
        "version": platform.python_version(),
        "implementation": platform.python_implementation(),
        "executable": sys.executable,
    }


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    versions: dict[str, str | None] = {"weighbridge": __version__}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


# -- the document ---------------------------------------------------------------------------


def collect() -> dict[str, Any]:
    """Everything above, freshly (a few ms; seconds with a GPU, for the probe)."""
    limits = cgroup_limits()
    cpu = cpu_info()
    cpu.update(core_counts(limits["cpu_limit"]))
    cpu["caches"] = cpu_caches()
    return {
        "schema": SCHEMA,
        "collected_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "cpu": cpu,
        "cgroup": limits,
        "memory": memory_info(limits["memory_limit_bytes"]),
        "gpu": gpu_info(),
        "os": os_info(),
        "python": python_info(),
        "packages": package_versions(),
    }


def machine_info() -> dict[str, Any]:
    """The cached document (collected on first use in this process), memory refreshed."""
    global _cached
    with _lock:
        if _cached is None:
            _cached = collect()
        info = json.loads(json.dumps(_cached))  # a copy the caller may change
    with contextlib.suppress(Exception):
        info["memory"]["available_bytes"] = int(psutil.virtual_memory().available)
    return info


def prefetch() -> None:
    """Start collecting in a background thread (once), so that the first run need not wait
    for it (the GPU probe takes seconds where there is a GPU)."""
    global _prefetching
    with _lock:
        if _cached is not None or _prefetching:
            return
        _prefetching = True
    threading.Thread(target=machine_info, name="hwinfo", daemon=True).start()


def clear_cache() -> None:
    global _cached, _prefetching
    with _lock:
        _cached = None
        _prefetching = False


async def write_hwinfo(storage: Storage, key: str, **context: Any) -> dict[str, Any]:
    """Write hwinfo.json at `key`: the machine document plus `run` (what it describes)."""
    info = await asyncio.to_thread(machine_info)
    info["run"] = {**context, "written_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    await storage.write_bytes(key, json.dumps(info, indent=2, sort_keys=True).encode())
    return info


def summary(info: dict[str, Any]) -> dict[str, Any]:
    """The receipt's `hardware`: the few figures a reader checks first."""
    cpu, cgroup, memory, gpu = info["cpu"], info["cgroup"], info["memory"], info["gpu"]
    return {
        "node": info["hostname"],
        "platform": f"{info['os']['system']} {info['os']['kernel']} {info['os']['machine']}",
        "cpu_model": cpu["model"],
        "cores": cpu["logical_cores"],
        "physical_cores": cpu["physical_cores"],
        "effective_cores": cpu["effective_cores"],
        "cpu_limit": cgroup["cpu_limit"],
        "memory_mb": round(memory["total_bytes"] / 2**20),
        "memory_limit_mb": (
            round(cgroup["memory_limit_bytes"] / 2**20)
            if cgroup["memory_limit_bytes"] is not None
            else None
        ),
        "gpus": [d["name"] for d in gpu["devices"]],
    }
