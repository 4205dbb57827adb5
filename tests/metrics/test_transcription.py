"""WER and CER agree with jiwer; our bit-parallel edit distance agrees with a plain DP."""

from __future__ import annotations

import random

import jiwer
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import metrics
from metrics.transcription import levenshtein


def _dp_distance(a, b) -> int:
    """Textbook Wagner-Fischer dynamic programme, written independently of the library."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="abcd ", max_size=90), st.text(alphabet="abcd ", max_size=90))
def test_levenshtein_matches_dynamic_programming(a: str, b: str) -> None:
    assert levenshtein(a, b) == _dp_distance(a, b)
    assert levenshtein(a.split(), b.split()) == _dp_distance(a.split(), b.split())


def test_levenshtein_on_long_sequences_crosses_machine_word_sizes() -> None:
    rng = random.Random(3)
    for length in (63, 64, 65, 200, 700):
        a = [rng.choice("xyz") for _ in range(length)]
        b = [rng.choice("xyz") for _ in range(rng.randint(0, length + 10))]
        assert levenshtein(a, b) == _dp_distance(a, b)


def _sentences(seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    words = ["yes", "no", "hello", "world", "a", "the", "speech", "test", "ok"]
    refs, hyps = [], []
    for _ in range(rng.randint(1, 25)):
        ref = [rng.choice(words) for _ in range(rng.randint(1, 12))]
        hyp = [w for w in ref if rng.random() > 0.2]
        hyp = [rng.choice(words) if rng.random() < 0.2 else w for w in hyp]
        if rng.random() < 0.3:
            hyp.insert(rng.randint(0, len(hyp)), rng.choice(words))
        refs.append(" ".join(ref))
        hyps.append("  ".join(hyp) if rng.random() < 0.2 else " ".join(hyp))
    return hyps, refs


@pytest.mark.parametrize("seed", range(40))
def test_wer_and_cer_match_jiwer(seed: int) -> None:
    hyps, refs = _sentences(seed)
    assert abs(metrics.compute("wer", hyps, refs) - jiwer.wer(refs, hyps)) <= 1e-9
    assert abs(metrics.compute("cer", hyps, refs) - jiwer.cer(refs, hyps)) <= 1e-9


def test_detailed_result_gives_edit_and_length_totals() -> None:
    result = metrics.compute_detailed("wer", ["a b x", "c"], ["a b c", "c d"])
    assert result.value == pytest.approx(2 / 5)
    assert result.extras == {"edits": 2, "reference_length": 5}


def test_references_without_words_are_refused() -> None:
    with pytest.raises(metrics.MetricError, match="wer: the references hold no words"):
        metrics.compute("wer", ["a"], ["   "])
    with pytest.raises(metrics.MetricError, match="cer: reference 0 must be a string"):
        metrics.compute("cer", ["a"], [["a"]])
