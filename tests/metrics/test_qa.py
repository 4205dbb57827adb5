"""SQuAD v1.1 exact match and F1 against an independent reimplementation of the official script."""

from __future__ import annotations

import random
import string
from collections import Counter

import pytest

import metrics


# --- independent reimplementation of the official SQuAD v1.1 evaluate-v1.1.py --------------
def _normalize(s: str) -> str:
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    words = [w for w in s.split() if w not in ("a", "an", "the")]
    return " ".join(words)


def _f1(prediction: str, ground_truth: str) -> float:
    pred, truth = _normalize(prediction).split(), _normalize(ground_truth).split()
    common = Counter(pred) & Counter(truth)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision, recall = num_same / len(pred), num_same / len(truth)
    return (2 * precision * recall) / (precision + recall)


def _em(prediction: str, ground_truth: str) -> float:
    return float(_normalize(prediction) == _normalize(ground_truth))


def _reference_scores(preds, refs) -> tuple[float, float]:
    em = f1 = 0.0
    for pred, answers in zip(preds, refs, strict=True):
        answers = [answers] if isinstance(answers, str) else (answers or [""])
        em += max(_em(pred, a) for a in answers)
        f1 += max(_f1(pred, a) for a in answers)
    return em / len(preds), f1 / len(preds)


# ---------------------------------------------------------------------------------------------
VOCAB = [
    "The",
    "a",
    "An",
    "cat",
    "Cat",
    "dog",
    "theory",
    "another",
    "1,000",
    "U.S.",
    "rock-n-roll",
    "Paris",
    "paris!",
    "(France)",
    "an",
    "the",
    "of",
    "\tand",
    "  ",
    "über",
    "Straße",
]


def _answer(rng: random.Random) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(rng.randint(0, 6)))


@pytest.mark.parametrize("seed", range(25))
def test_exact_match_and_f1_match_the_official_v1_1_definition(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(1, 30)
    refs = [
        _answer(rng) if rng.random() < 0.4 else [_answer(rng) for _ in range(rng.randint(0, 3))]
        for _ in range(n)
    ]
    preds = [_answer(rng) for _ in range(n)]
    expected_em, expected_f1 = _reference_scores(preds, refs)
    assert abs(metrics.compute("exact_match", preds, refs) - expected_em) <= 1e-9
    assert abs(metrics.compute("squad_f1", preds, refs) - expected_f1) <= 1e-9


def test_normalisation_drops_case_punctuation_articles_and_extra_spaces() -> None:
    preds = ["The  Eiffel Tower!", "an apple", "Theory"]
    refs = [["eiffel tower"], "apple", "theory"]
    assert metrics.compute("exact_match", preds, refs) == 1.0
    # "the" inside "theory" is not an article; v1.1 gives F1 0 to two empty answers
    assert metrics.compute("squad_f1", ["the"], ["a"]) == 0.0
    assert metrics.compute("exact_match", ["the"], ["a"]) == 1.0


def test_f1_takes_the_best_reference_answer() -> None:
    got = metrics.compute("squad_f1", ["big red dog"], [["cat", "red dog", "big red dog barks"]])
    assert got == pytest.approx(
        max(_f1("big red dog", a) for a in ["red dog", "big red dog barks"])
    )


def test_non_string_answers_are_refused_by_name() -> None:
    with pytest.raises(metrics.MetricError, match="squad_f1: prediction 1 must be a string"):
        metrics.compute("squad_f1", ["a", 3], ["a", "b"])
    with pytest.raises(metrics.MetricError, match="exact_match: reference 0 must be an answer"):
        metrics.compute("exact_match", ["a"], [{"text": "a"}])
