"""An extractive QA model (a learned start/end scorer over context tokens) as a handler.

Each context token is described by hashed embeddings of itself and its neighbours, its shape
(capitalised, a number, punctuation) and how much its sentence shares with the question; a
small network mixes that with a bag-of-words embedding of the question and scores the token as
the answer's start and end. The answer is the best-scoring span of at most MAX_SPAN tokens.

TorchServe-style: `handle(None, context)` once, then one item per example
`{"body": {"context": "...", "question": "..."}}`; it answers `{"answer": "<span>"}`.
"""

from __future__ import annotations

import json
import os
import re
import zlib

import torch
from torch import nn

WEIGHTS = "model.pt"
BUCKETS = 2048  # hashed word ids; 0 is padding
DIM = 16
HIDDEN = 64
MAX_SPAN = 4
N_SHAPE = 9
TOKEN = re.compile(r"\w+|[^\w\s]")

_model: nn.Module | None = None


class SpanScorer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.words = nn.Embedding(BUCKETS, DIM, padding_idx=0)
        self.question = nn.Embedding(BUCKETS, DIM, padding_idx=0)
        self.mix = nn.Linear(5 * DIM + N_SHAPE, HIDDEN)
        self.ask = nn.Linear(DIM, HIDDEN)
        self.hidden = nn.Linear(HIDDEN, HIDDEN)
        self.score = nn.Linear(HIDDEN, 2)

    def forward(
        self, tokens: torch.Tensor, shape: torch.Tensor, question: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens [B, L, 5] (word, two before, two after), shape [B, L, N_SHAPE],
        question [B, Q] -> start and end logits [B, L] (padding not masked here)."""
        b, length, _ = tokens.shape
        words = self.words(tokens).reshape(b, length, 5 * DIM)
        mask = (question > 0).float().unsqueeze(-1)
        asked = (self.question(question) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        h = torch.relu(self.mix(torch.cat([words, shape], dim=-1)) + self.ask(asked).unsqueeze(1))
        h = torch.relu(self.hidden(h))
        logits = self.score(h)
        return logits[..., 0], logits[..., 1]


def build_model() -> nn.Module:
    """The architecture; `core/examples/train_text.py` trains this same module."""
    return SpanScorer()


def _hash(word: str) -> int:
    return 1 + zlib.crc32(word.lower().encode()) % (BUCKETS - 1)


def featurize(context: str, question: str) -> dict:
    """Tokens with their character spans and the model's inputs for one example."""
    found = list(TOKEN.finditer(context)) or [re.match(r"", context)]
    words = [m.group(0) for m in found]
    spans = [(m.start(), m.end()) for m in found]
    asked = [w.lower() for w in TOKEN.findall(question)]
    asked_set = set(asked)
    # Names and numbers in the question (capitalised words after the first, digits).
    named = {w.lower() for i, w in enumerate(TOKEN.findall(question)) if (i and w[:1].isupper())}
    named |= {w for w in asked if w.isdigit()}
    stems = {w[:4] for w in asked if len(w) > 3}
    sentence_of: list[int] = []
    in_sentence: list[set[str]] = [set()]
    for w in words:
        sentence_of.append(len(in_sentence) - 1)
        in_sentence[-1].add(w.lower())
        if w == ".":
            in_sentence.append(set())
    shares = []
    for lower in in_sentence:
        names = len(named & lower) / max(len(named), 1)
        overlap = len(stems & {w[:4] for w in lower if len(w) > 3}) / max(len(stems), 1)
        shares.append((names, overlap))
    most = max(v[0] for v in shares)
    padded = ["<s>", "<s>", *words, "</s>", "</s>"]
    tokens, shape = [], []
    for i, w in enumerate(words):
        tokens.append([_hash(padded[i + k]) for k in (2, 0, 1, 3, 4)])
        names, overlap = shares[sentence_of[i]]
        first = i == 0 or words[i - 1] == "."
        shape.append(
            [
                float(w[:1].isupper()),
                float(w[:1].isupper() and not first),
                float(w.isdigit()),
                float(not w[:1].isalnum()),
                float(w.lower() in asked_set),
                names,
                overlap,
                float(names == most),
                min(len(w), 12) / 12.0,
            ]
        )
    return {
        "spans": spans,
        "tokens": tokens,
        "shape": shape,
        "question": [_hash(w) for w in asked] or [0],
    }


def batch(features: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Padded tensors: tokens, shape, question ids, and the mask of real tokens."""
    length = max(len(f["tokens"]) for f in features)
    width = max(len(f["question"]) for f in features)
    tokens = torch.zeros(len(features), length, 5, dtype=torch.long)
    shape = torch.zeros(len(features), length, N_SHAPE)
    question = torch.zeros(len(features), width, dtype=torch.long)
    mask = torch.zeros(len(features), length, dtype=torch.bool)
    for i, f in enumerate(features):
        n = len(f["tokens"])
        tokens[i, :n] = torch.tensor(f["tokens"], dtype=torch.long)
        shape[i, :n] = torch.tensor(f["shape"])
        question[i, : len(f["question"])] = torch.tensor(f["question"], dtype=torch.long)
        mask[i, :n] = True
    return tokens, shape, question, mask


def best_spans(start: torch.Tensor, end: torch.Tensor, mask: torch.Tensor) -> list[tuple[int, int]]:
    """(first, last) token of the best span of at most MAX_SPAN tokens, per example."""
    start = start.masked_fill(~mask, -1e9)
    end = end.masked_fill(~mask, -1e9)
    length = start.shape[1]
    # pair[:, i, k]: a span from token i to token i + k (past the end: never chosen).
    pair = torch.full((start.shape[0], length, MAX_SPAN), -1e18)
    for k in range(min(MAX_SPAN, length)):
        pair[:, : length - k, k] = start[:, : length - k] + end[:, k:]
    flat = pair.reshape(pair.shape[0], -1).argmax(dim=1)
    return [(int(f) // MAX_SPAN, int(f) // MAX_SPAN + int(f) % MAX_SPAN) for f in flat]


def answer_texts(model: nn.Module, contexts: list[str], questions: list[str]) -> list[str]:
    features = [featurize(c, q) for c, q in zip(contexts, questions, strict=True)]
    tokens, shape, question, mask = batch(features)
    with torch.inference_mode():
        start, end = model(tokens, shape, question)
    out = []
    for (first, last), f, context in zip(
        best_spans(start, end, mask), features, contexts, strict=True
    ):
        out.append(context[f["spans"][first][0] : f["spans"][last][1]])
    return out


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
    bodies = [_body(item) for item in data]
    answers = answer_texts(
        _model, [str(b["context"]) for b in bodies], [str(b["question"]) for b in bodies]
    )
    return [{"answer": a} for a in answers]
