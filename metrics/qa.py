"""Extractive QA metrics as the official SQuAD v1.1 script computes them: exact match and F1.

Answers are normalised (lower case, punctuation removed, the articles a/an/the removed,
whitespace collapsed); each prediction scores the maximum over its reference answers. A
reference is one answer string or a list of them; an empty list counts as [""] (as Dynabench
does). Following v1.1 exactly, F1 is 0 when the normalised prediction and answer share no
token, even when both are empty (exact match is then 1). Values are fractions in [0, 1]
(the SQuAD script prints them multiplied by 100).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Any

import numpy as np

from metrics.errors import MetricError
from metrics.inputs import check_pair

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation: lower, drop punctuation, drop articles, collapse whitespace."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _answers(reference: Any, index: int) -> list[str]:
    answers = [reference] if isinstance(reference, str) else reference
    if not isinstance(answers, list | tuple) or not all(isinstance(a, str) for a in answers):
        raise MetricError(
            None,
            f"reference {index} must be an answer string or a list of them, "
            f"got {type(reference).__name__}",
        )
    return list(answers) or [""]


def _pairs(predictions: Any, references: Any) -> list[tuple[str, list[str]]]:
    preds, refs = check_pair(predictions, references)
    out = []
    for i, (pred, ref) in enumerate(zip(preds, refs, strict=True)):
        if not isinstance(pred, str):
            raise MetricError(None, f"prediction {i} must be a string, got {type(pred).__name__}")
        out.append((pred, _answers(ref, i)))
    return out


def _token_f1(prediction_tokens: list[str], answer_tokens: list[str]) -> float:
    common = Counter(prediction_tokens) & Counter(answer_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(prediction_tokens)
    recall = same / len(answer_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match_per_example(predictions: Any, references: Any) -> np.ndarray:
    """1.0 where the normalised prediction equals a normalised reference answer."""
    values = [
        float(any(normalize_answer(pred) == normalize_answer(a) for a in answers))
        for pred, answers in _pairs(predictions, references)
    ]
    return np.asarray(values, dtype=np.float64)


def squad_f1_per_example(predictions: Any, references: Any) -> np.ndarray:
    """Token-overlap F1 of each prediction, maximum over its reference answers."""
    values = []
    for pred, answers in _pairs(predictions, references):
        tokens = normalize_answer(pred).split()
        values.append(max(_token_f1(tokens, normalize_answer(a).split()) for a in answers))
    return np.asarray(values, dtype=np.float64)


def exact_match(predictions: Any, references: Any) -> float:
    """Share of predictions that match a reference answer after SQuAD normalisation."""
    return float(np.mean(exact_match_per_example(predictions, references)))


def squad_f1(predictions: Any, references: Any) -> float:
    """Mean SQuAD v1.1 token F1 (maximum over the reference answers of each example)."""
    return float(np.mean(squad_f1_per_example(predictions, references)))
