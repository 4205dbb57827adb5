"""Benchmark of the metric library against scikit-learn and sacrebleu, measured in one run.

Run: .venv/bin/python bench/metrics.py [--quick]

Prints one table: confusion-matrix metrics on 1,000,000 labels of 10 classes (ours vs
scikit-learn, with the values' difference), 1,000 bootstrap resamples of accuracy on 100,000
examples, and corpus BLEU on 50,000 synthetic segments (our call vs sacrebleu directly).
Each time is the best of a few repeats. Targets: >= 5x faster than scikit-learn, bootstrap
<= 1 s, BLEU overhead <= 5 %.
"""

from __future__ import annotations

import argparse
import functools
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import metrics

_WORD_TEXT = """
the a of to and in is was for on that with as by at from it this be are an or model data
value test result system method time number table paper figure first new large small high
low good better best more most each other many some all two
"""
WORDS = tuple(_WORD_TEXT.split())


def best_of(repeats: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    """(fastest wall time in seconds, the value of the last call)."""
    best = float("inf")
    value = None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    return best, value


def labels(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    refs = rng.integers(0, classes, size=n)
    noisy = rng.random(n) < 0.3
    preds = np.where(noisy, rng.integers(0, classes, size=n), refs)
    return preds, refs


def segments(n: int, seed: int) -> tuple[list[str], list[str]]:
    """Hypotheses and references of about 19 words, the reference a perturbed hypothesis."""
    rng = np.random.default_rng(seed)
    vocab = np.array(WORDS)
    hyps, refs = [], []
    for _ in range(n):
        length = int(rng.integers(14, 25))
        hyp = vocab[rng.integers(0, len(vocab), size=length)]
        ref = hyp.copy()
        swap = rng.random(length) < 0.25
        ref[swap] = vocab[rng.integers(0, len(vocab), size=int(swap.sum()))]
        hyps.append(" ".join(hyp))
        refs.append(" ".join(ref))
    return hyps, refs


def classification_rows(n: int, repeats: int) -> list[list[str]]:
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    preds, refs = labels(n, 10, seed=1)
    cases = [
        ("macro_f1", lambda p, r: f1_score(r, p, average="macro"), preds, refs),
        ("accuracy", lambda p, r: accuracy_score(r, p), preds, refs),
        ("mcc", lambda p, r: matthews_corrcoef(r, p), preds, refs),
        ("macro_f1", lambda p, r: f1_score(r, p, average="macro"), preds.tolist(), refs.tolist()),
    ]
    rows = []
    for name, sklearn_fn, p, r in cases:
        ours_s, ours = best_of(repeats, functools.partial(metrics.compute, name, p, r))
        theirs_s, theirs = best_of(repeats, functools.partial(sklearn_fn, p, r))
        form = "numpy int arrays" if isinstance(p, np.ndarray) else "Python lists"
        rows.append(
            [
                f"{name}, {n:,} labels, 10 classes ({form})",
                f"{ours_s * 1000:.1f} ms",
                f"{theirs_s * 1000:.1f} ms (scikit-learn)",
                f"{theirs_s / ours_s:.1f}x faster",
                f"|Δ| = {abs(ours - theirs):.1e}",
                ">= 5x",
            ]
        )
    return rows


def bootstrap_rows(n: int, resamples: int, repeats: int) -> list[list[str]]:
    preds, refs = labels(n, 10, seed=2)
    rows = []
    for method in ("auto", "indices"):
        seconds, (low, high) = best_of(
            repeats,
            functools.partial(
                metrics.confidence_interval,
                "accuracy",
                preds,
                refs,
                resamples=resamples,
                seed=0,
                method=method,
            ),
        )
        drawn = "multinomial counts" if method == "auto" else "index resampling"
        rows.append(
            [
                f"bootstrap CI of accuracy, {resamples:,} resamples x {n:,} examples ({drawn})",
                f"{seconds * 1000:.1f} ms",
                "",
                "",
                f"95% CI [{low:.4f}, {high:.4f}]",
                "<= 1 s",
            ]
        )
    macro_s, (low, high) = best_of(
        repeats,
        lambda: metrics.confidence_interval("macro_f1", preds, refs, resamples=resamples, seed=0),
    )
    rows.append(
        [
            f"bootstrap CI of macro_f1, {resamples:,} resamples x {n:,} examples",
            f"{macro_s * 1000:.1f} ms",
            "",
            "",
            f"95% CI [{low:.4f}, {high:.4f}]",
            "",
        ]
    )
    return rows


def bleu_rows(n: int, repeats: int) -> list[list[str]]:
    import sacrebleu

    hyps, refs = segments(n, seed=3)
    words = sum(len(h.split()) for h in hyps) / n
    ours_times, theirs_times = [], []
    ours = theirs = 0.0
    for _ in range(repeats):  # interleaved so that drift hits both sides alike
        gc.collect()
        start = time.perf_counter()
        ours = metrics.compute("bleu", hyps, refs)
        ours_times.append(time.perf_counter() - start)
        gc.collect()
        start = time.perf_counter()
        theirs = sacrebleu.corpus_bleu(hyps, [refs]).score
        theirs_times.append(time.perf_counter() - start)
    ours_s, theirs_s = min(ours_times), min(theirs_times)
    return [
        [
            f"corpus BLEU, {n:,} segments (~{words:.0f} words)",
            f"{ours_s * 1000:.0f} ms",
            f"{theirs_s * 1000:.0f} ms (sacrebleu.corpus_bleu)",
            f"overhead {100 * (ours_s / theirs_s - 1):+.1f} %",
            f"|Δ| = {abs(ours - theirs):.1e}",
            "<= 5 %",
        ]
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller inputs, one repeat")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    repeats = 1 if args.quick else 3

    metrics.names()  # load the registry before timing anything
    table = Table(title=f"Weighbridge metrics benchmark (best of {repeats})")
    for column in ("case", "ours", "reference", "ratio", "values", "target"):
        table.add_column(column)
    for row in [
        *classification_rows(1_000_000 // scale, repeats),
        *bootstrap_rows(100_000 // scale, 1000, repeats),
        *bleu_rows(50_000 // scale, repeats),
    ]:
        table.add_row(*row)
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
