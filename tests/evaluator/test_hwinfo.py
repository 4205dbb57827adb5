"""hwinfo.json: CPU, cores, cgroup limits, memory, GPU, OS and versions, cached per process."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from core.storage import storage_from_url
from evaluator import hwinfo

V1_UNLIMITED = "9223372036854771712"


def assert_hwinfo_document(doc: dict[str, Any]) -> None:
    """The documented keys, with sane values (also used by the end-to-end evaluator tests)."""
    assert set(hwinfo.KEYS) <= set(doc)
    assert doc["schema"] == hwinfo.SCHEMA
    cpu = doc["cpu"]
    assert {
        "model",
        "vendor",
        "family",
        "model_number",
        "stepping",
        "architecture",
        "flags",
    } <= set(cpu)
    assert isinstance(cpu["flags"], list) and isinstance(cpu["caches"], list)
    assert cpu["logical_cores"] >= 1 and cpu["usable_cores"] >= 1
    assert cpu["physical_cores"] is None or 1 <= cpu["physical_cores"] <= cpu["logical_cores"]
    assert 0 < cpu["effective_cores"] <= cpu["usable_cores"] <= cpu["logical_cores"]
    cgroup = doc["cgroup"]
    assert cgroup["version"] in (1, 2, None)
    assert cgroup["cpu_limit"] is None or cgroup["cpu_limit"] > 0
    assert cgroup["memory_limit_bytes"] is None or cgroup["memory_limit_bytes"] > 0
    memory = doc["memory"]
    assert memory["total_bytes"] > 0 and 0 <= memory["available_bytes"] <= memory["total_bytes"]
    assert 0 < memory["limit_bytes"] <= memory["total_bytes"]
    gpu = doc["gpu"]
    assert gpu["count"] == len(gpu["devices"]) >= 0
    for device in gpu["devices"]:
        assert device["name"] and device["memory_bytes"] > 0 and device["capability"]
    assert doc["os"]["system"] and doc["os"]["kernel"]
    assert doc["python"]["version"].count(".") == 2
    assert doc["packages"]["weighbridge"] and "numpy" in doc["packages"]
    json.dumps(doc)  # plain JSON


def test_this_machine_is_described() -> None:
    hwinfo.clear_cache()
    doc = hwinfo.machine_info()
    assert_hwinfo_document(doc)
    assert doc["cpu"]["logical_cores"] == os.cpu_count()
    if Path("/proc/cpuinfo").exists():
        assert doc["cpu"]["model"] and doc["cpu"]["flags"]


def test_collected_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    hwinfo.clear_cache()
    calls = []
    real = hwinfo.collect

    def counting() -> dict[str, Any]:
        calls.append(1)
        return real()

    monkeypatch.setattr(hwinfo, "collect", counting)
    hwinfo.prefetch()  # in the background, racing the first use: still collected once
    first = hwinfo.machine_info()
    first["cpu"]["model"] = "changed by a caller"
    hwinfo.prefetch()
    second = hwinfo.machine_info()
    assert len(calls) == 1
    assert second["cpu"]["model"] != "changed by a caller"  # callers get copies
    assert second["collected_at"] == first["collected_at"]
    hwinfo.clear_cache()


async def test_written_per_run_with_what_it_describes(tmp_path: Path) -> None:
    storage = storage_from_url(f"file://{tmp_path}")
    key = "submissions/s1/results/heldout/hwinfo.json"
    await hwinfo.write_hwinfo(storage, key, submission_id="s1", dataset="heldout", runner="local")
    doc = json.loads(await storage.read_bytes(key))
    assert_hwinfo_document(doc)
    assert doc["run"]["dataset"] == "heldout" and doc["run"]["runner"] == "local"
    assert doc["run"]["written_at"]


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return root


def proc(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "proc-self-cgroup"
    path.write_text(text)
    return path


def test_cgroup_v2_limits_are_the_strictest_along_the_path(tmp_path: Path) -> None:
    root = tree(
        tmp_path / "cg",
        {
            "cgroup.controllers": "cpu memory",
            "job/cpu.max": "200000 100000",
            "job/memory.max": "1073741824",
            "job/task/cpu.max": "50000 100000",
            "job/task/memory.max": "max",
        },
    )
    limits = hwinfo.cgroup_limits(root, proc(tmp_path, "0::/job/task\n"))
    assert limits == {
        "version": 2,
        "cpu_quota_us": 50000,
        "cpu_period_us": 100000,
        "cpu_limit": 0.5,
        "memory_limit_bytes": 1 << 30,
    }


def test_cgroup_v2_in_a_container_reads_the_mount_root(tmp_path: Path) -> None:
    # The container sees its own cgroup as the root; /proc/self/cgroup names the host's path.
    root = tree(
        tmp_path / "cg",
        {"cgroup.controllers": "cpu memory", "cpu.max": "150000 100000", "memory.max": "max"},
    )
    limits = hwinfo.cgroup_limits(root, proc(tmp_path, "0::/kubepods/pod42/abc\n"))
    assert limits["version"] == 2
    assert limits["cpu_limit"] == 1.5 and limits["memory_limit_bytes"] is None


def test_cgroup_v2_unlimited_is_null(tmp_path: Path) -> None:
    root = tree(tmp_path / "cg", {"cgroup.controllers": "", "cpu.max": "max 100000"})
    limits = hwinfo.cgroup_limits(root, proc(tmp_path, "0::/\n"))
    assert limits["version"] == 2
    assert limits["cpu_limit"] is None and limits["cpu_quota_us"] is None
    assert limits["memory_limit_bytes"] is None


def test_cgroup_v1_limits(tmp_path: Path) -> None:
    root = tree(
        tmp_path / "cg",
        {
            "cpu,cpuacct/cpu.cfs_quota_us": "-1",
            "cpu,cpuacct/cpu.cfs_period_us": "100000",
            "cpu,cpuacct/docker/c1/cpu.cfs_quota_us": "250000",
            "cpu,cpuacct/docker/c1/cpu.cfs_period_us": "100000",
            "memory/memory.limit_in_bytes": V1_UNLIMITED,
            "memory/docker/c1/memory.limit_in_bytes": "536870912",
        },
    )
    text = "12:memory:/docker/c1\n4:cpu,cpuacct:/docker/c1\n0::/\n"
    limits = hwinfo.cgroup_limits(root, proc(tmp_path, text))
    assert limits == {
        "version": 1,
        "cpu_quota_us": 250000,
        "cpu_period_us": 100000,
        "cpu_limit": 2.5,
        "memory_limit_bytes": 512 << 20,
    }


def test_cgroup_v1_unlimited_and_missing(tmp_path: Path) -> None:
    root = tree(
        tmp_path / "cg",
        {
            "cpu/cpu.cfs_quota_us": "-1",
            "cpu/cpu.cfs_period_us": "100000",
            "memory/memory.limit_in_bytes": V1_UNLIMITED,
        },
    )
    limits = hwinfo.cgroup_limits(root, proc(tmp_path, "2:cpu:/\n1:memory:/\n"))
    assert limits["version"] == 1
    assert limits["cpu_limit"] is None and limits["memory_limit_bytes"] is None
    nothing = hwinfo.cgroup_limits(tmp_path / "absent", proc(tmp_path, ""))
    assert nothing["version"] is None and nothing["cpu_limit"] is None


def test_cores_honour_the_cpu_quota() -> None:
    counts = hwinfo.core_counts(0.5)
    assert counts["effective_cores"] == 0.5 and counts["usable_cores"] >= 1
    assert hwinfo.core_counts(None)["effective_cores"] == counts["usable_cores"]


def test_memory_limit_is_the_smaller_of_ram_and_cgroup() -> None:
    assert hwinfo.memory_info(256 << 20)["limit_bytes"] == 256 << 20
    unlimited = hwinfo.memory_info(None)
    assert unlimited["limit_bytes"] == unlimited["total_bytes"]


def test_cpuinfo_is_parsed(tmp_path: Path) -> None:
    text = (
        "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 85\n"
        "model name\t: Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz\nstepping\t: 07\n"
        "cpu MHz\t\t: 2499.998\nflags\t\t: sse avx2 fpu\n\nprocessor\t: 1\nmodel name\t: other\n"
    )
    info = hwinfo.cpu_info(tree(tmp_path, {"cpuinfo": text}) / "cpuinfo")
    assert info["model"] == "Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz"
    assert (info["vendor"], info["family"], info["model_number"], info["stepping"]) == (
        "GenuineIntel",
        6,
        85,
        7,
    )
    assert info["flags"] == ["avx2", "fpu", "sse"] and info["mhz"] == 2499.998


def fake_python(tmp_path: Path, body: str) -> str:
    script = tmp_path / "python"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_gpus_are_probed_in_a_subprocess(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hwinfo, "_device_nodes", lambda: ["/dev/nvidia0"])
    probe = {
        "torch": "2.5.0",
        "cuda": "12.4",
        "devices": [
            {
                "index": 0,
                "name": "NVIDIA H100 80GB HBM3",
                "memory_bytes": 85_000_000_000,
                "capability": "9.0",
                "multiprocessors": 132,
            }
        ],
    }
    python = fake_python(tmp_path, f"echo '{json.dumps(probe)}'")
    info = hwinfo.gpu_info(python)
    assert info["count"] == 1 and info["cuda"] == "12.4" and info["source"] == "torch"
    assert info["devices"][0]["name"] == "NVIDIA H100 80GB HBM3"

    failed = hwinfo.gpu_info(fake_python(tmp_path, "echo 'ImportError: no torch' >&2; exit 1"))
    assert failed["count"] == 0 and "no torch" in failed["error"]


def test_no_device_node_means_no_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hwinfo, "_device_nodes", lambda: [])
    info = hwinfo.gpu_info("/nonexistent/python")
    assert info["count"] == 0 and "no GPU device node" in info["source"]


@pytest.mark.skipif(not hwinfo._device_nodes(), reason="no GPU device node on this machine")
def test_a_real_gpu_is_described() -> None:
    info = hwinfo.gpu_info()
    if info.get("error") or not info["count"]:
        pytest.skip(f"torch here sees no GPU: {info.get('error') or info}")
    for device in info["devices"]:
        assert device["memory_bytes"] > 1 << 30 and device["capability"][0].isdigit()


def test_cpu_caches_come_from_sysfs_in_index_order(tmp_path: Path) -> None:
    for index, (level, kind, size) in enumerate(
        [(1, "Data", "32K"), (1, "Instruction", "32K"), (2, "Unified", "1024K")]
        + [(3, "Unified", "32768K")] * 9  # index10 sorts after index2 by number, not by name
    ):
        folder = tmp_path / f"index{index}"
        folder.mkdir()
        (folder / "level").write_text(f"{level}\n")
        (folder / "type").write_text(f"{kind}\n")
        (folder / "size").write_text(f"{size}\n")
        (folder / "coherency_line_size").write_text("64\n")
    (tmp_path / "uevent").write_text("")
    caches = hwinfo.cpu_caches(tmp_path)
    assert [(c["level"], c["type"], c["size"]) for c in caches[:3]] == [
        (1, "Data", "32K"),
        (1, "Instruction", "32K"),
        (2, "Unified", "1024K"),
    ]
    assert len(caches) == 12 and caches[0]["line_bytes"] == 64
    assert hwinfo.cpu_caches(tmp_path / "missing") == []
