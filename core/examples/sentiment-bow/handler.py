"""A bag-of-words sentiment classifier (hashed words, mean embedding, linear) as a handler.

TorchServe (and Weighbridge's local runner) import this module, call `handle(None, context)`
once, then `handle(data, context)` with one item per example: `{"body": {"text": "..."}}`.
It answers `{"label": "negative" | "neutral" | "positive"}` per item. Word order is ignored,
so negation and contrast ("not great", "X is bad, but overall it is good") are its weak spots.
"""

from __future__ import annotations

import json
import os
import re
import zlib

import torch
from torch import nn

WEIGHTS = "model.pt"
LABELS = ("negative", "neutral", "positive")
BUCKETS = 4096  # hashed word ids; 0 is padding
DIM = 16
WORD = re.compile(r"[a-z']+")

_model: nn.Module | None = None


class BagOfWords(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.EmbeddingBag(BUCKETS, DIM, mode="mean", padding_idx=0)
        self.out = nn.Linear(DIM, len(LABELS))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.embed(ids))


def build_model() -> nn.Module:
    """The architecture; `core/examples/train_text.py` trains this same module."""
    return BagOfWords()


def word_ids(text: str) -> list[int]:
    """Lower-cased words hashed into 1..BUCKETS-1 (crc32: the same in every process)."""
    words = WORD.findall(text.lower()) or [""]
    return [1 + zlib.crc32(w.encode()) % (BUCKETS - 1) for w in words]


def encode(texts: list[str]) -> torch.Tensor:
    ids = [word_ids(t) for t in texts]
    width = max(len(i) for i in ids)
    return torch.tensor([i + [0] * (width - len(i)) for i in ids], dtype=torch.long)


def initialize(context) -> None:
    global _model
    model_dir = context.system_properties.get("model_dir") or os.path.dirname(__file__)
    model = build_model()
    state = torch.load(os.path.join(model_dir, WEIGHTS), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    _model = model


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
    texts = [str(_body(item)["text"]) for item in data]
    with torch.inference_mode():
        predicted = _model(encode(texts)).argmax(dim=1)
    return [{"label": LABELS[int(p)]} for p in predicted]
