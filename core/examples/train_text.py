"""Train the two text examples (sentiment bag-of-words, QA span scorer) on CPU in seconds.

    python -m core.examples.train_text [--out DIR] [--evaluate]

Each model goes to its own folder (`sentiment-bow/`, `qa-span/`; by default the shipped ones
beside this file): the handler.py kept in this folder plus the trained `model.pt`. They train
on the `train` split of the `sentiment` and `qa` generators (core/corpora.py), which are made
from other seeds than the tasks' hidden `heldout` sets. Seeds are fixed; training uses one
thread, so a rerun writes the same weights.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

from core.examples.train_digits import HERE, TrainedModel, load_handler, predict_folder

MODELS = ("sentiment-bow", "qa-span")
TASK_OF = {"sentiment-bow": "sentiment", "qa-span": "qa"}
INPUTS = {"sentiment-bow": ("text",), "qa-span": ("context", "question")}
EPOCHS = {"sentiment-bow": 10, "qa-span": 5}


def _train_sentiment(module: Any, rows: list[dict[str, Any]], generator: Any) -> tuple[Any, float]:
    import torch
    from torch import nn

    model = module.build_model()
    x = module.encode([r["text"] for r in rows])
    y = torch.tensor([module.LABELS.index(r["label"]) for r in rows], dtype=torch.long)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(EPOCHS["sentiment-bow"]):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), 64):
            batch = order[start : start + 64]
            opt.zero_grad()
            loss_fn(model(x[batch]), y[batch]).backward()
            opt.step()
    model.eval()
    with torch.inference_mode():
        accuracy = float((model(x).argmax(dim=1) == y).float().mean())
    return model, accuracy


def _token_index(spans: list[tuple[int, int]], char: int, *, end: bool) -> int:
    for i, (first, last) in enumerate(spans):
        if (last if end else first) == char:
            return i
    raise ValueError(f"no token {'ends' if end else 'starts'} at character {char}")


def _train_qa(module: Any, rows: list[dict[str, Any]], generator: Any) -> tuple[Any, float]:
    import torch
    from torch import nn

    model = module.build_model()
    features = [module.featurize(r["context"], r["question"]) for r in rows]
    tokens, shape, question, mask = module.batch(features)
    gold_start, gold_end = [], []
    for r, f in zip(rows, features, strict=True):
        start = r["answer_starts"][0]
        gold_start.append(_token_index(f["spans"], start, end=False))
        gold_end.append(_token_index(f["spans"], start + len(r["answers"][0]), end=True))
    y_start = torch.tensor(gold_start, dtype=torch.long)
    y_end = torch.tensor(gold_end, dtype=torch.long)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(EPOCHS["qa-span"]):
        order = torch.randperm(len(rows), generator=generator)
        for first in range(0, len(rows), 64):
            b = order[first : first + 64]
            opt.zero_grad()
            start, end = model(tokens[b], shape[b], question[b])
            start = start.masked_fill(~mask[b], -1e9)
            end = end.masked_fill(~mask[b], -1e9)
            (loss_fn(start, y_start[b]) + loss_fn(end, y_end[b])).backward()
            opt.step()
    model.eval()
    with torch.inference_mode():
        start, end = model(tokens, shape, question)
    spans = module.best_spans(start, end, mask)
    exact = [s == (a, b) for s, a, b in zip(spans, gold_start, gold_end, strict=True)]
    return model, sum(exact) / len(exact)


TRAINERS = {"sentiment-bow": _train_sentiment, "qa-span": _train_qa}


def train_one(name: str, folder: Path, *, seed: int = 0) -> float:
    """Train model `name` (architecture from its handler) and save `folder/model.pt`; returns
    its accuracy on the training rows (for QA: the share of exactly right spans)."""
    import torch

    from core.datasets import generate_rows

    module = load_handler(folder)
    rows = generate_rows(TASK_OF[name], {"split": "train"})
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model, accuracy = TRAINERS[name](module, rows, generator)
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

    out = Path(out_dir) if out_dir is not None else HERE
    trained = {}
    threads = torch.get_num_threads()
    # One thread: as fast for models this small, and the order of sums stays fixed.
    torch.set_num_threads(1)
    try:
        for name in models:
            folder = out / name
            folder.mkdir(parents=True, exist_ok=True)
            if folder.resolve() != (HERE / name).resolve():
                shutil.copy2(HERE / name / "handler.py", folder / "handler.py")
            started = time.perf_counter()
            accuracy = train_one(name, folder, seed=seed)
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


def predictions_of(name: str, folder: Path, rows: list[dict[str, Any]]) -> list[Any]:
    """What the model in `folder` answers for `rows` (labels hidden), as the metrics see it."""
    answers = predict_folder(folder, rows, input_fields=INPUTS[name])
    key = "label" if name == "sentiment-bow" else "answer"
    return [a[key] for a in answers]


def scores_of(name: str, folder: Path, rows: list[dict[str, Any]]) -> dict[str, float]:
    """The task's metrics of the model on `rows`, computed by Weighbridge's metrics."""
    import metrics

    predicted = predictions_of(name, folder, rows)
    if name == "sentiment-bow":
        gold = [r["label"] for r in rows]
        return {m: float(metrics.compute(m, predicted, gold)) for m in ("macro_f1", "accuracy")}
    gold = [r["answers"] for r in rows]
    return {m: float(metrics.compute(m, predicted, gold)) for m in ("squad_f1", "exact_match")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder for the model folders")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--evaluate", action="store_true", help="also report the scores on the heldout split"
    )
    args = parser.parse_args(argv)
    trained = train_models(args.out, seed=args.seed, quiet=False)
    if args.evaluate:
        from core.datasets import generate_rows

        for model in trained.values():
            heldout = generate_rows(TASK_OF[model.name], {"split": "heldout"})
            scores = scores_of(model.name, model.folder, heldout)
            shown = ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
            print(f"{model.name}: heldout {shown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
