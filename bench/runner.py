"""The local runner's throughput against a bare PyTorch loop (same model, data, batch size).

    .venv/bin/python -m bench.runner [--batch-size 64] [--repeats 5] [--cores N]

A small CNN on scikit-learn's 8x8 digits (1,797 examples, bundled, no download). Measured in
one run, each way `--repeats` times (best of), interleaved so that a noisy neighbour hurts
every way alike:

- bare torch: pre-built tensors through the model, argmax; no pre/post-processing at all;
- bare handler: the handler's own `handle(data, context)` called in this process on the same
  `{"body": {"pixels": [...]}}` items, so the handler's JSON-shaped pre/post-processing is
  paid here too (the runner can only add transport to it);
- local runner: `evaluator.runner.run_dataset` end to end as the evaluator runs it (sandboxed
  worker processes, marshal requests and JSON answers over pipes, answer checks);
  examples/second is the number the evaluator stores (examples / inference wall time,
  initialisation excluded).

Each way runs on one core (torch at 1 thread, one handler worker) and on all `--cores` (the
bare loops with torch at N intra-op threads, as torch does by default; the runner with N
handler workers, the task's `eval.max_concurrent_transforms = N`, as SageMaker sends N
requests at once to an instance). The baseline is the fastest bare loop over the same items
(the handler in-process), whatever its thread count; the target is runner >= 0.9 x that.
The ratio to the fastest loop over pre-built tensors is printed beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, bench/ heads sys.path, where sibling benches (bench/queue.py) would shadow
# the standard library: import from the project root instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

HANDLER = '''
"""A small CNN for 8x8 digits, as a TorchServe-style handler."""

import os

import torch
from torch import nn

_model = None


def build_model():
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, 16, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def initialize(context):
    global _model
    model = build_model()
    path = os.path.join(context.system_properties["model_dir"], "model.pt")
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    _model = model.eval()
    with torch.inference_mode():  # warm up (first call sets up kernels), as TorchServe users do
        _model(torch.zeros(context.system_properties["batch_size"], 64))


def handle(data, context):
    if data is None:  # TorchServe's load-time call: it never calls initialize itself
        initialize(context)
        return None
    pixels = torch.tensor([item["body"]["pixels"] for item in data], dtype=torch.float32)
    with torch.inference_mode():
        predicted = _model(pixels / 16.0).argmax(dim=1)
    return [{"label": int(p)} for p in predicted.tolist()]
'''

TASK = {
    "slug": "digits-bench",
    "name": "Digits (bench)",
    "input_fields": ["pixels"],
    "output_fields": {"label": "int"},
    "datasets": [{"name": "digits", "source": "generator:digits"}],
    "metrics": [{"name": "accuracy"}],
}


class Context:
    """The in-process baseline's context (what the handler reads from it)."""

    def __init__(self, model_dir: Path, batch_size: int) -> None:
        self.system_properties = {"model_dir": str(model_dir), "batch_size": batch_size}
        self.manifest: dict[str, Any] = {}


def load_rows(passes: int) -> list[dict[str, Any]]:
    """The digits `passes` times over (more work per measurement, less timer noise)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return [
        {"uid": f"d-{p}-{i:04d}", "pixels": [float(v) for v in x], "label": int(y)}
        for p in range(passes)
        for i, (x, y) in enumerate(zip(digits.data, digits.target, strict=True))
    ]


def make_model_folder(folder: Path) -> None:
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "handler.py").write_text(HANDLER)
    torch.manual_seed(0)
    module = _load_handler(folder)
    torch.save(module.build_model().state_dict(), folder / "model.pt")


def _load_handler(folder: Path) -> Any:
    spec = importlib.util.spec_from_file_location("bench_handler", folder / "handler.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bare_torch(folder: Path, rows: list[dict[str, Any]], batch_size: int) -> float:
    """Examples/second of the model alone on pre-built tensors."""
    import torch

    module = _load_handler(folder)
    module.initialize(Context(folder, batch_size))
    pixels = torch.tensor([r["pixels"] for r in rows], dtype=torch.float32) / 16.0
    batches = list(torch.split(pixels, batch_size))
    started = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            module._model(batch).argmax(dim=1)
    return len(rows) / (time.perf_counter() - started)


def bare_handler(folder: Path, rows: list[dict[str, Any]], batch_size: int) -> float:
    """Examples/second of the handler's handle() called in this process (no transport)."""
    module = _load_handler(folder)
    context = Context(folder, batch_size)
    module.initialize(context)
    items = [{"body": {"pixels": r["pixels"]}} for r in rows]
    started = time.perf_counter()
    for start in range(0, len(items), batch_size):
        module.handle(items[start : start + batch_size], context)
    return len(rows) / (time.perf_counter() - started)


async def local_runner(
    folder: Path, rows: list[dict[str, Any]], batch_size: int, scratch: Path, *, workers: int = 1
) -> dict[str, Any]:
    """Examples/second as the evaluator measures and stores it (run_dataset end to end)."""
    from core.storage import LocalStorage
    from core.taskconfig import TaskConfig
    from evaluator.runner import DatasetSpec, ModelSpec, run_dataset

    storage = LocalStorage(scratch / "storage")
    data = b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in rows)
    sha = hashlib.sha256(data).hexdigest()
    key = f"datasets/{sha}/digits.jsonl"
    await storage.write_bytes(key, data)
    task = TaskConfig.model_validate(
        {**TASK, "eval": {"batch_size": batch_size, "max_concurrent_transforms": workers}}
    )
    run = await run_dataset(
        storage,
        submission_id="bench",
        task=task,
        dataset=DatasetSpec(name="digits", key=key, sha256=sha),
        model=ModelSpec(model_dir=folder, handler="handler.py", manifest={}),
        scratch=scratch / "scratch",
    )
    correct = sum(a["label"] == r for a, r in zip(run.answers, run.references, strict=True))
    return {**run.performance, "timings": run.timings, "correct": correct}


def main() -> None:
    from core.heap import freeze_startup_heap
    from evaluator.hwinfo import usable_cpus

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--passes", type=int, default=5, help="times over the 1,797 digits per measurement"
    )
    parser.add_argument(
        "--cores",
        type=int,
        default=usable_cpus(),
        help="the 'all cores' rows: torch threads for the bare loops, handler workers for the "
        "runner (default: the cores this process may use)",
    )
    args = parser.parse_args()
    # Each handler worker runs torch at one thread (read by torch at import; the sandbox passes
    # OMP_NUM_THREADS on), so N workers use N cores; the bare loops set their own count below.
    os.environ["OMP_NUM_THREADS"] = "1"

    import torch

    cores = max(1, args.cores)
    settings = [1] if cores == 1 else [1, cores]
    rows = load_rows(args.passes)
    rates: dict[str, list[float]] = {}
    runs: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="weighbridge-bench-") as tmp:
        scratch = Path(tmp)
        folder = scratch / "model"
        make_model_folder(folder)
        # As `weighbridge up` / `serve` do once started (every way below runs in this process).
        freeze_startup_heap()
        for i in range(args.repeats):
            for n in settings:
                torch.set_num_threads(n)
                rates.setdefault(f"bare torch (tensors only), {n} thread(s)", []).append(
                    bare_torch(folder, rows, args.batch_size)
                )
                rates.setdefault(f"bare handler in-process, {n} thread(s)", []).append(
                    bare_handler(folder, rows, args.batch_size)
                )
            torch.set_num_threads(1)
            for n in settings:
                run = asyncio.run(
                    local_runner(folder, rows, args.batch_size, scratch / f"r{i}-{n}", workers=n)
                )
                name = f"local runner, {n} handler worker(s)"
                rates.setdefault(name, []).append(run["examples_per_second"])
                runs.setdefault(name, []).append(run)

    def best(prefix: str) -> tuple[str, float]:
        name = max((n for n in rates if n.startswith(prefix)), key=lambda n: max(rates[n]))
        return name, max(rates[name])

    baseline_name, baseline = best("bare handler")
    tensors_name, tensors = best("bare torch")
    print(
        f"local runner vs bare PyTorch: {len(rows)} digits (8x8; 1,797 x {args.passes}), "
        f"batch {args.batch_size}, small CNN, torch {torch.__version__}, {cores} core(s), "
        f"best of {args.repeats}"
    )
    print(
        f"{'way':<46}{'examples/s':>12}{'median':>10}{'ratio':>8}{'/tensors':>10}"
        f"{'/same cores':>13}"
    )
    for name, values in rates.items():
        n = int(name.rsplit(", ", 1)[1].split()[0])
        same = max(rates[f"bare handler in-process, {n} thread(s)"])
        print(
            f"{name:<46}{max(values):>12,.0f}{statistics.median(values):>10,.0f}"
            f"{max(values) / baseline:>8.2f}{max(values) / tensors:>10.2f}"
            f"{max(values) / same:>13.2f}"
        )
    print(
        f"ratio: to the fastest bare loop over the same items, {baseline_name} "
        f"({baseline:,.0f} examples/s); /tensors: to the fastest loop over pre-built tensors, "
        f"{tensors_name} ({tensors:,.0f} examples/s), which skips the handler's own "
        "list-to-tensor work; /same cores: to the bare handler loop on as many cores"
    )
    for name, values in rates.items():
        if not name.startswith("local"):
            continue
        run = runs[name][values.index(max(values))]
        print(
            f"{name}: {max(values) / baseline:.2f} x baseline (target >= 0.90); handler "
            f"init {run['timings']['init_seconds']:.2f} s (excluded), inference "
            f"{run['timings']['inference_seconds']:.3f} s, latency p50 "
            f"{run['latency_p50_ms']:.2f} / p99 {run['latency_p99_ms']:.2f} ms per batch, "
            f"peak memory {run['peak_memory_mb']:.0f} MiB per worker"
        )


if __name__ == "__main__":
    main()
