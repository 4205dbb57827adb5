"""Train the two example digits models (linear and CNN) on CPU in seconds.

    python -m core.examples.train_digits [--out DIR] [--evaluate]

Each model goes to its own folder (`digits-linear/`, `digits-cnn/`; by default the shipped
ones beside this file): the handler.py kept in this folder plus the trained `model.pt`. Both
train on the `train` split of the `digits` generator, which is disjoint from the task's hidden
`heldout` sets. Seeds are fixed.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

HERE = Path(__file__).resolve().parent

MODELS = ("digits-linear", "digits-cnn")


@dataclass(frozen=True)
class Recipe:
    """How one example is trained; the linear model gets a short, plain-SGD schedule."""

    optimizer: str
    lr: float
    epochs: int
    batch_size: int
    weight_decay: float = 0.0


RECIPES = {
    "digits-linear": Recipe(optimizer="sgd", lr=0.2, epochs=5, batch_size=64),
    "digits-cnn": Recipe(optimizer="adam", lr=3e-3, epochs=15, batch_size=64, weight_decay=1e-4),
}


@dataclass(frozen=True)
class TrainedModel:
    name: str
    folder: Path
    train_accuracy: float
    seconds: float


def load_handler(folder: Path) -> ModuleType:
    """Import `folder/handler.py` under a name of its own (several may be loaded at once)."""
    path = folder / "handler.py"
    name = f"weighbridge_example_{folder.name.replace('-', '_')}_{abs(hash(str(folder)))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def handler_context(folder: Path, batch_size: int = 64) -> SimpleNamespace:
    """The TorchServe-like context a handler receives."""
    return SimpleNamespace(
        system_properties={
            "model_dir": str(folder),
            "gpu_id": None,
            "batch_size": batch_size,
            "server_name": "weighbridge-local",
        },
        manifest={"model": {"modelName": folder.name, "serializedFile": "model.pt"}},
        get_request_header=lambda idx, key: None,
    )


def _tensors(rows: list[dict[str, Any]]):
    import torch

    x = torch.tensor([r["pixels"] for r in rows], dtype=torch.float32) / 16.0
    y = torch.tensor([r["label"] for r in rows], dtype=torch.long)
    return x, y


def train_one(name: str, folder: Path, rows: list[dict[str, Any]], *, seed: int = 0) -> float:
    """Train model `name` (architecture from its handler) and save `folder/model.pt`."""
    import torch
    from torch import nn

    recipe = RECIPES[name]
    module = load_handler(folder)
    torch.manual_seed(seed)
    model = module.build_model()
    x, y = _tensors(rows)
    if recipe.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay
        )
    else:
        opt = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(recipe.epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), recipe.batch_size):
            batch = order[start : start + recipe.batch_size]
            opt.zero_grad()
            loss = loss_fn(model(x[batch]), y[batch])
            loss.backward()
            opt.step()
    model.eval()
    with torch.inference_mode():
        accuracy = float((model(x).argmax(dim=1) == y).float().mean())
    torch.save(model.state_dict(), folder / module.WEIGHTS)
    return accuracy


def train_models(
    out_dir: Path | None = None,
    *,
    seed: int = 0,
    quiet: bool = True,
    models: tuple[str, ...] = MODELS,
) -> dict[str, TrainedModel]:
    """Train the examples into `out_dir/<name>/` (default: this folder); returns what was made."""
    import torch

    from core.datasets import generate_rows

    out = Path(out_dir) if out_dir is not None else HERE
    rows = generate_rows("digits", {"split": "train"})
    trained = {}
    threads = torch.get_num_threads()
    # Tiny models: one thread is as fast, does not fight other processes for cores, and
    # keeps the order of floating-point sums fixed, so a rerun gives the same weights.
    torch.set_num_threads(1)
    try:
        for name in models:
            folder = out / name
            folder.mkdir(parents=True, exist_ok=True)
            if folder.resolve() != (HERE / name).resolve():
                shutil.copy2(HERE / name / "handler.py", folder / "handler.py")
            started = time.perf_counter()
            accuracy = train_one(name, folder, rows, seed=seed)
            trained[name] = TrainedModel(
                name=name,
                folder=folder,
                train_accuracy=accuracy,
                seconds=time.perf_counter() - started,
            )
            if not quiet:
                print(
                    f"{name}: train accuracy {accuracy:.3f} in "
                    f"{trained[name].seconds:.1f} s -> {folder}"
                )
    finally:
        torch.set_num_threads(threads)
    return trained


def predict_folder(
    folder: Path, rows: list[dict[str, Any]], *, input_fields: tuple[str, ...] = ("pixels",)
) -> list[dict[str, Any]]:
    """Run a model folder's handler in this process, TorchServe-style, on `rows` (labels hidden)."""
    module = load_handler(folder)
    context = handler_context(folder)
    module.handle(None, context)
    answers: list[dict[str, Any]] = []
    for start in range(0, len(rows), 64):
        batch = [{"body": {f: r[f] for f in input_fields}} for r in rows[start : start + 64]]
        answers.extend(module.handle(batch, context))
    return answers


def accuracy_of(folder: Path, rows: list[dict[str, Any]]) -> float:
    answers = predict_folder(folder, rows)
    return sum(a["label"] == r["label"] for a, r in zip(answers, rows, strict=True)) / len(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder for the model folders")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--evaluate", action="store_true", help="also report accuracy on the heldout split"
    )
    args = parser.parse_args(argv)
    trained = train_models(args.out, seed=args.seed, quiet=False)
    if args.evaluate:
        from core.datasets import generate_rows

        heldout = generate_rows("digits", {"split": "heldout"})
        for model in trained.values():
            print(f"{model.name}: heldout accuracy {accuracy_of(model.folder, heldout):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
