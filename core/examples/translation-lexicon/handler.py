"""A word-lexicon translator (Velan -> English) with a learned reordering rule, TorchServe-style.

`lexicon.json` (made by `python -m core.examples.train_translation`) holds what training
learned from the parallel corpus: the English phrase of each Velan word (IBM Model 1
alignments) and, by word class (a word's last two letters, which in Velan are mostly its
ending), how often one class comes before another in English, one order of all classes
that agrees with that (for pairs training never saw apart) and whether two words of the same
class keep their order. A sentence is reordered by those preferences, then translated
word by word; an unknown word is copied. Standard library only.

TorchServe (and Weighbridge's local runner) call `handle(None, context)` once, then
`handle(data, context)` with one item per example: `{"body": {"source": "..."}}`; the answer
is `{"translation": "..."}` per item.
"""

from __future__ import annotations

import functools
import json
import os

WEIGHTS = "lexicon.json"

_model: dict | None = None


def word_class(word: str, width: int) -> str:
    """The class a word is reordered by: its last `width` letters."""
    return word[-width:]


def initialize(context) -> None:
    global _model
    model_dir = context.system_properties.get("model_dir") or os.path.dirname(__file__)
    with open(os.path.join(model_dir, WEIGHTS), encoding="utf-8") as fh:
        _model = json.load(fh)


def _order(words: list[str], model: dict) -> list[str]:
    width = model["class_width"]
    before = model["before"]  # "a b" -> P(class a comes before class b in English)
    keep = model["keep"]  # class -> P(two words of that class keep their Velan order)
    rank = model["rank"]  # class -> place in one order agreeing with `before`
    items = [(i, w, word_class(w, width)) for i, w in enumerate(words)]

    def compare(x: tuple[int, str, str], y: tuple[int, str, str]) -> int:
        (i, _, a), (j, _, b) = x, y
        if a == b:
            return (i - j) if keep.get(a, 1.0) >= 0.5 else (j - i)
        p = before.get(f"{a} {b}")
        if p is not None and p != 0.5:
            return -1 if p > 0.5 else 1
        if a in rank and b in rank:  # never seen apart in training: the overall order
            return rank[a] - rank[b]
        return i - j

    return [w for _, w, _ in sorted(items, key=functools.cmp_to_key(compare))]


def translate(source: str, model: dict) -> str:
    phrases = model["phrases"]
    out: list[str] = []
    for word in _order(source.split(), model):
        phrase = phrases.get(word, word)
        if phrase:
            out.append(phrase)
    text = " ".join(out).replace(" .", ".").replace(" ?", "?")
    return text[:1].upper() + text[1:]


def _body(item: dict) -> dict:
    body = item.get("body") if item.get("body") is not None else item.get("data")
    if isinstance(body, (bytes, bytearray)):
        body = body.decode("utf-8")
    if isinstance(body, str):
        body = json.loads(body)
    return body


def handle(data, context):
    if data is None:  # TorchServe initialises function handlers with handle(None, context)
        initialize(context)
        return None
    if _model is None:
        initialize(context)
    return [{"translation": translate(str(_body(item)["source"]), _model)} for item in data]
