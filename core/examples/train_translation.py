"""Train the example translation model (`translation-lexicon/`) on CPU in a few seconds.

    python -m core.examples.train_translation [--out DIR] [--evaluate]

It learns from the `train` split of the `translation` generator (8,000 Velan -> English pairs,
none of them in the task's hidden `heldout` set):

1. IBM Model 1 (EM in numpy, a NULL word on the Velan side): t(english word | velan word);
2. each English word aligned to its most likely Velan word (or NULL); a Velan word's phrase is
   the English words aligned to it, in order, and the lexicon keeps its most frequent phrase;
3. the reordering rule, by word class (a word's last two letters): how often a class's words
   come before another class's in English, one order of all classes agreeing with that (for
   pairs never seen apart), and whether two words of one class keep their order. The handler
   sorts a sentence by these, then translates word by word.

Deterministic (no random start), so a rerun writes the same `lexicon.json`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
NAME = "translation-lexicon"
WEIGHTS = "lexicon.json"
EM_ITERATIONS = 8
CLASS_WIDTH = 2
# A class pair's order is learned when seen at least MIN_PAIRS times, one way at least
# 0.5 + CLEAR_MARGIN of them.
MIN_PAIRS = 5
CLEAR_MARGIN = 0.3
NULL = 0  # index of the NULL word in the Velan vocabulary


@dataclass(frozen=True)
class TrainedLexicon:
    folder: Path
    seconds: float
    n_pairs: int
    n_phrases: int


def _tokens(rows: list[dict[str, Any]]) -> tuple[list[list[str]], list[list[str]]]:
    sources = [r["source"].split() for r in rows]
    # The English side is learned lower-cased with its final stop or question mark split off;
    # the handler capitalises the sentence and writes the mark against the word before it.
    targets = [r["translation"].lower().replace(".", " .").replace("?", " ?").split() for r in rows]
    return sources, targets


def ibm_model_1(
    sources: list[list[str]], targets: list[list[str]], *, iterations: int = EM_ITERATIONS
) -> tuple[Any, dict[str, int], dict[str, int]]:
    """t[e, f] = P(english e | velan f) by EM; index 0 of the Velan vocabulary is NULL."""
    import numpy as np

    f_vocab: dict[str, int] = {"<null>": NULL}
    e_vocab: dict[str, int] = {}
    for words in sources:
        for w in words:
            f_vocab.setdefault(w, len(f_vocab))
    for words in targets:
        for w in words:
            e_vocab.setdefault(w, len(e_vocab))
    f_ids = [np.array([NULL, *(f_vocab[w] for w in s)]) for s in sources]
    e_ids = [np.array([e_vocab[w] for w in t]) for t in targets]
    t = np.full((len(e_vocab), len(f_vocab)), 1.0 / len(e_vocab))
    for _ in range(iterations):
        counts = np.zeros_like(t)
        for fs, es in zip(f_ids, e_ids, strict=True):
            probs = t[np.ix_(es, fs)]
            probs /= probs.sum(axis=1, keepdims=True)
            np.add.at(counts, (es[:, None], fs[None, :]), probs)
        t = counts / np.maximum(counts.sum(axis=0, keepdims=True), 1e-300)
    return t, f_vocab, e_vocab


def align(
    t: Any, fs: list[int], es: list[int], *, source: list[str], target: list[str]
) -> list[int]:
    """Each English word's Velan position (-1: NULL), most likely links first; a Velan word
    takes at most one copy of an English word (two "the" go to two determiners). Between
    links as likely as each other, a word written the same on both sides wins (a "?" that
    always comes with `li` is the Velan "?")."""
    probs = t[es][:, fs]  # English position x (Velan positions..., NULL)
    null = len(fs) - 1
    links = [-1] * len(es)
    taken: set[tuple[int, int]] = set()
    for j in sorted(range(len(es)), key=lambda j: -float(probs[j].max())):
        ranked = sorted(
            range(len(fs)),
            key=lambda i: (
                -round(float(probs[j, i]), 9),
                i == null or source[i] != target[j],
                i,
            ),
        )
        for i in ranked:
            if i == null:
                break
            if (i, es[j]) not in taken:
                taken.add((i, es[j]))
                links[j] = i
                break
    return links


def learn_lexicon(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The handler's model (what `lexicon.json` holds) learned from parallel `rows`."""
    sources, targets = _tokens(rows)
    t, f_vocab, e_vocab = ibm_model_1(sources, targets)
    phrase_counts: dict[str, Counter[str]] = defaultdict(Counter)
    precedes: Counter[tuple[str, str]] = Counter()
    kept: Counter[str] = Counter()
    same: Counter[str] = Counter()
    for source, target in zip(sources, targets, strict=True):
        fs = [*(f_vocab[w] for w in source), NULL]
        es = [e_vocab[w] for w in target]
        aligned: dict[int, list[int]] = defaultdict(list)
        for j, i in enumerate(align(t, fs, es, source=source, target=target)):
            if i >= 0:
                aligned[i].append(j)
        for i, word in enumerate(source):
            phrase_counts[word][" ".join(target[j] for j in aligned.get(i, []))] += 1
        # Where each Velan word lands in English (the mean of its words' positions), for the
        # words whose English is unambiguous here (no other copy of it in the sentence).
        copies = Counter(target)
        placed = sorted(
            (sum(js) / len(js), i)
            for i, js in aligned.items()
            if all(copies[target[j]] == 1 for j in js)
        )
        for x, (_, i) in enumerate(placed):
            for _, k in placed[x + 1 :]:
                a, b = source[i][-CLASS_WIDTH:], source[k][-CLASS_WIDTH:]
                if a == b:
                    same[a] += 1
                    kept[a] += i < k
                else:
                    precedes[(a, b)] += 1
    # Only clear preferences are kept: a pair seen both ways about as often was misaligned
    # (e.g. "a" and "an" of two determiners) or is free; the overall order decides it.
    clear: Counter[tuple[str, str]] = Counter()
    before = {}
    for (a, b), n in precedes.items():
        seen = n + precedes.get((b, a), 0)
        if seen >= MIN_PAIRS and abs(n / seen - 0.5) >= CLEAR_MARGIN:
            clear[(a, b)] = n
            before[f"{a} {b}"] = round(n / seen, 4)
    return {
        "format": 1,
        "class_width": CLASS_WIDTH,
        "phrases": {w: c.most_common(1)[0][0] for w, c in sorted(phrase_counts.items())},
        "before": dict(sorted(before.items())),
        "keep": {c: round(kept[c] / n, 4) for c, n in sorted(same.items())},
        "rank": class_ranks(clear),
    }


def class_ranks(precedes: Counter[tuple[str, str]]) -> dict[str, int]:
    """One order of all classes that agrees with the pairs seen (a topological sort of "a
    mostly comes before b"): it orders the pairs never placed apart in training, such as two
    determiners that are both "the" (the object's and the place's)."""
    import heapq

    classes = sorted({c for pair in precedes for c in pair})
    after: dict[str, set[str]] = {c: set() for c in classes}
    for (a, b), n in precedes.items():
        if n > precedes.get((b, a), 0):
            after[a].add(b)
    waiting = {c: 0 for c in classes}
    for followers in after.values():
        for b in followers:
            waiting[b] += 1
    ready = [c for c in classes if waiting[c] == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while len(order) < len(classes):
        if not ready:  # a cycle (noise): free the class that waits on the fewest
            c = min((n, c) for c, n in waiting.items() if c not in order)[1]
            waiting[c] = 0
            heapq.heappush(ready, c)
        c = heapq.heappop(ready)
        if c in order:
            continue
        order.append(c)
        for b in sorted(after[c]):
            waiting[b] -= 1
            if waiting[b] == 0 and b not in order:
                heapq.heappush(ready, b)
    return {c: i for i, c in enumerate(order)}


def train_lexicon(out_dir: Path | None = None, *, quiet: bool = True) -> TrainedLexicon:
    """Train into `out_dir/translation-lexicon/` (default: the shipped folder beside this file)."""
    from core.datasets import generate_rows

    out = Path(out_dir) if out_dir is not None else HERE
    folder = out / NAME
    folder.mkdir(parents=True, exist_ok=True)
    if folder.resolve() != (HERE / NAME).resolve():
        shutil.copy2(HERE / NAME / "handler.py", folder / "handler.py")
    started = time.perf_counter()
    rows = generate_rows("translation", {"split": "train"})
    model = learn_lexicon(rows)
    (folder / WEIGHTS).write_text(
        json.dumps(model, ensure_ascii=False, indent=0, sort_keys=True) + "\n", encoding="utf-8"
    )
    trained = TrainedLexicon(
        folder=folder,
        seconds=time.perf_counter() - started,
        n_pairs=len(rows),
        n_phrases=len(model["phrases"]),
    )
    if not quiet:
        print(
            f"{NAME}: {trained.n_phrases} Velan words from {trained.n_pairs} pairs in "
            f"{trained.seconds:.1f} s -> {folder}"
        )
    return trained


def translate_rows(folder: Path, rows: list[dict[str, Any]]) -> list[str]:
    """The folder's handler run in this process, TorchServe-style, on `rows` (sources only)."""
    from core.examples.train_digits import handler_context, load_handler

    module = load_handler(folder)
    context = handler_context(folder)
    module.handle(None, context)
    answers = module.handle([{"body": {"source": r["source"]}} for r in rows], context)
    return [a["translation"] for a in answers]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder for the model folder")
    parser.add_argument(
        "--evaluate", action="store_true", help="also report BLEU and chrF on the heldout split"
    )
    args = parser.parse_args(argv)
    trained = train_lexicon(args.out, quiet=False)
    if args.evaluate:
        import sacrebleu

        from core.datasets import generate_rows

        heldout = generate_rows("translation", {"split": "heldout"})
        hypotheses = translate_rows(trained.folder, heldout)
        references = [[r["translation"] for r in heldout]]
        bleu = sacrebleu.corpus_bleu(hypotheses, references).score
        chrf = sacrebleu.corpus_chrf(hypotheses, references).score
        print(f"{NAME}: heldout BLEU {bleu:.2f}, chrF {chrf:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
