"""BLEU, chrF, chrF++ and TER give sacrebleu's own values, with its signature recorded."""

from __future__ import annotations

import random

import pytest
import sacrebleu
from sacrebleu.metrics import BLEU, CHRF, TER

import metrics

WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "sat",
    "on",
    "mat",
    "rug",
    "quickly",
    "slowly",
    "ran",
    ",",
    ".",
    "!",
    "big",
    "small",
    "red",
]


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 15)))


def _corpus(seed: int, n_refs: int) -> tuple[list[str], list[list[str]]]:
    rng = random.Random(seed)
    n = rng.randint(1, 40)
    hyps = [_sentence(rng) for _ in range(n)]
    streams = [[_sentence(rng) for _ in range(n)] for _ in range(n_refs)]
    return hyps, streams


CASES = [
    ("bleu", lambda: BLEU(), {}),
    (
        "bleu",
        lambda: BLEU(lowercase=True, tokenize="char"),
        {"lowercase": True, "tokenize": "char"},
    ),
    ("chrf", lambda: CHRF(), {}),
    ("chrf_plus_plus", lambda: CHRF(word_order=2), {}),
    ("ter", lambda: TER(), {}),
    ("ter", lambda: TER(case_sensitive=True), {"case_sensitive": True}),
]


@pytest.mark.parametrize("n_refs", [1, 3])
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("name", "scorer", "options"), CASES)
def test_values_are_identical_to_sacrebleu(name, scorer, options, seed: int, n_refs: int) -> None:
    hyps, streams = _corpus(seed, n_refs)
    per_example = [list(refs) for refs in zip(*streams, strict=True)]
    if n_refs == 1:
        per_example = [refs[0] for refs in per_example]  # plain strings
    expected = scorer().corpus_score(hyps, streams).score
    assert metrics.compute(name, hyps, per_example, **options) == expected


def test_variable_number_of_references_uses_sacrebleus_none_padding() -> None:
    hyps = ["the cat sat on the mat", "a dog ran"]
    refs = [["the cat sat on a mat", "a cat sat on the mat"], "the dog ran"]
    expected = BLEU().corpus_score(hyps, [[refs[0][0], refs[1]], [refs[0][1], None]])
    result = metrics.compute_detailed("bleu", hyps, refs)
    assert result.value == expected.score
    assert result.extras["signature"].startswith("nrefs:var|")


def test_detailed_result_records_the_signature() -> None:
    hyps, refs = ["the cat sat on the mat"], ["the cat sat on a mat"]
    bleu = metrics.compute_detailed("bleu", hyps, refs)
    assert bleu.extras["signature"] == (
        f"nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:{sacrebleu.__version__}"
    )
    assert bleu.value == sacrebleu.corpus_bleu(hyps, [refs]).score
    assert bleu.extras["precisions"][0] == pytest.approx(5 / 6 * 100)
    chrf_pp = metrics.compute_detailed("chrf_plus_plus", hyps, refs)
    assert "nw:2" in chrf_pp.extras["signature"]
    assert "tok:tercom" in metrics.compute_detailed("ter", hyps, refs).extras["signature"]


def test_bad_inputs_and_options_are_refused_by_name() -> None:
    with pytest.raises(metrics.MetricError, match="bleu: prediction 1 must be a string"):
        metrics.compute("bleu", ["a", None], ["a", "b"])
    with pytest.raises(
        metrics.MetricError, match="chrf: reference 0 must be a string or a non-empty"
    ):
        metrics.compute("chrf", ["a"], [[]])
    with pytest.raises(metrics.MetricError, match="bleu: sacrebleu refused the options"):
        metrics.compute("bleu", ["a"], ["a"], tokenize="no-such-tokenizer")
    with pytest.raises(metrics.MetricError, match="chrf_plus_plus: option word_order=0 conflicts"):
        metrics.compute("chrf_plus_plus", ["a"], ["a"], word_order=0)


def test_directions_follow_the_metric() -> None:
    assert metrics.get("bleu").direction == "higher"
    assert metrics.get("ter").direction == "lower"
