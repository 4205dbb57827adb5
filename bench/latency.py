"""Submit -> score latency in `up` mode: a tiny model on 100 examples, end to end.

Run: .venv/bin/python bench/latency.py [--runs 10]
Starts `weighbridge up` (SQLite, local storage, in-process workers) on a bench task with one
hidden dataset of 100 examples, uploads a tiny PyTorch model N times, and for each measures
the time from the start of the upload to the moment its scores can be read from the API.
Prints the median and p90 against the 3 s target, the time spent in each stage, and inside
them the builder's step timings and the dataset run's (from the events' payloads).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, bench/ heads sys.path, and bench/queue.py would shadow the standard
# library's `queue` (which torch imports).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
TARGET_SECONDS = 3.0

TASK = """
name = "Parity (bench)"
input_fields = ["x"]
output_fields = { label = "int" }
metrics = [{ name = "accuracy" }, { name = "macro_f1" }]

[[datasets]]
name = "examples"
access = "public"
source = "generator:toy"
options = { n = 10, seed = 0 }

[[datasets]]
name = "test"
source = "generator:toy"
options = { n = 100, seed = 1 }

[limits]
submissions_per_window = 1000

[eval]
batch_size = 32
"""

HANDLER = """
import os
import torch

model = None


def initialize(context):
    global model
    model = torch.nn.Linear(1, 2)
    model_dir = context.system_properties["model_dir"]
    model.load_state_dict(torch.load(os.path.join(model_dir, "model.pt")))
    model.eval()


def handle(data, context):
    if data is None:  # TorchServe's load-time call: it never calls initialize itself
        initialize(context)
        return None
    xs = torch.tensor([[float(item["body"]["x"] % 2)] for item in data])
    with torch.no_grad():
        labels = model(xs).argmax(dim=1).tolist()
    return [{"label": int(label)} for label in labels]
"""


def tiny_model() -> bytes:
    import torch

    model = torch.nn.Linear(1, 2)
    with torch.no_grad():
        model.weight[:] = torch.tensor([[-1.0], [1.0]])
        model.bias[:] = torch.tensor([0.5, -0.5])
    weights = io.BytesIO()
    torch.save(model.state_dict(), weights)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in (("handler.py", HANDLER.encode()), ("model.pt", weights.getvalue())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="wb-bench-latency-"))
    (home / "tasks").mkdir()
    (home / "tasks" / "parity.toml").write_text(TASK)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "WEIGHBRIDGE_HOME": str(home),
        "WEIGHBRIDGE_TASK_CONFIGS": str(home / "tasks"),
    }
    token = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli.main",
            "admin",
            "create-user",
            "bench",
            "--email",
            "bench@example.org",
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    import json

    token = json.loads(token)["token"]
    bundle = tiny_model()  # before `up` starts: nothing may fail between it and the try
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "up", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {token}"}
    latencies, stages, details = [], [], []
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
            for _ in range(600):
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            # Datasets are prepared at start; wait until the task's hidden set is ready.
            for _ in range(600):
                sets = client.get("/api/v1/tasks/parity").json()["datasets"]
                if all(d["sha256"] for d in sets):
                    break
                time.sleep(0.1)
            for i in range(args.runs + 1):
                started = time.perf_counter()
                response = client.post(
                    "/api/v1/submissions",
                    data={"task": "parity", "name": f"tiny-{i}"},
                    files={"file": ("tiny.tar.gz", bundle)},
                )
                response.raise_for_status()
                sub_id = response.json()["id"]
                while True:
                    results = client.get(f"/api/v1/submissions/{sub_id}/results").json()
                    if results["status"] in ("done", "failed", "cancelled"):
                        break
                    time.sleep(0.01)
                elapsed = time.perf_counter() - started
                if results["status"] != "done":
                    detail = client.get(f"/api/v1/submissions/{sub_id}").json()
                    raise SystemExit(
                        f"submission {sub_id} ended {results['status']}: {detail['error']}"
                    )
                assert results["scores"], "done without scores"
                if i == 0:
                    continue  # the first run warms the per-requirements env and caches
                latencies.append(elapsed)
                events = client.get(f"/api/v1/submissions/{sub_id}/events").json()["events"]
                stages.append(_stage_times(events))
                details.append(_details(events))
    finally:
        proc.terminate()
        proc.wait(30)
    table = Table(title=f"Submit -> score latency, tiny model, 100 examples, {args.runs} runs")
    for col in ("median s", "p90 s", "min s", "max s", "target s", "median / target"):
        table.add_column(col, justify="right")
    median = statistics.median(latencies)
    p90 = sorted(latencies)[max(0, round(0.9 * len(latencies)) - 1)]
    table.add_row(
        f"{median:.2f}",
        f"{p90:.2f}",
        f"{min(latencies):.2f}",
        f"{max(latencies):.2f}",
        f"{TARGET_SECONDS:.1f}",
        f"{median / TARGET_SECONDS:.2f}x",
    )
    Console().print(table)
    breakdown = Table(title="Median time from upload to each status (s)")
    names = sorted(
        {k for s in stages for k in s},
        key=lambda k: statistics.median([s[k] for s in stages if k in s]),
    )
    for name in names:
        breakdown.add_column(name, justify="right")
    breakdown.add_row(
        *(f"{statistics.median([s[k] for s in stages if k in s]):.2f}" for k in names)
    )
    Console().print(breakdown)
    inside = Table(title="Inside the stages: build step timings, dataset run timings (median s)")
    inside.add_column("what")
    inside.add_column("median s", justify="right")
    keys = [k for k in details[0] if all(k in d for d in details)] if details else []
    for name in keys:
        inside.add_row(name, f"{statistics.median([d[name] for d in details]):.2f}")
    Console().print(inside)


def _details(events: list[dict]) -> dict[str, float]:
    """The builder's step timings and the evaluator's per-dataset timings, from the events."""
    start = datetime.fromisoformat(events[0]["created_at"])
    out: dict[str, float] = {}
    for e in events:
        payload = e.get("payload") or {}
        if e["status"] == "built":
            for name, value in (payload.get("timings") or {}).items():
                out[f"build.{name}"] = float(value)
        elif e["type"] in ("dataset.started", "dataset.finished"):
            at = (datetime.fromisoformat(e["created_at"]) - start).total_seconds()
            out[e["type"]] = at
            for name in ("init_seconds", "inference_seconds", "wall_seconds"):
                if name in (payload.get("timings") or {}):
                    out[f"run.{name}"] = float(payload["timings"][name])
    return out


def _stage_times(events: list[dict]) -> dict[str, float]:
    start = datetime.fromisoformat(events[0]["created_at"])
    out = {}
    for e in events:
        if e["status"]:
            out[e["status"]] = (datetime.fromisoformat(e["created_at"]) - start).total_seconds()
    return out


if __name__ == "__main__":
    main()
