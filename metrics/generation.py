"""Corpus-level generation metrics through sacrebleu: BLEU, chrF, chrF++ and TER.

A reference per example is one string or a list of strings (several references, their number
may vary between examples: missing ones are passed to sacrebleu as None, its convention).
Values are sacrebleu's own (0-100 scale). `metrics.compute_detailed` returns, in `extras`,
sacrebleu's signature string (``nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0``),
the score line sacrebleu prints, and for BLEU its precisions, brevity penalty and lengths.
sacrebleu is imported on first use, not when this module is imported.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from metrics.errors import MetricError
from metrics.inputs import check_pair
from metrics.spec import Resampleable, table_resampleable

BLEU_OPTIONS = {
    "tokenize": None,
    "lowercase": False,
    "smooth_method": "exp",
    "smooth_value": None,
    "effective_order": False,
}
CHRF_OPTIONS = {
    "char_order": 6,
    "word_order": 0,
    "beta": 2,
    "lowercase": False,
    "whitespace": False,
    "eps_smoothing": False,
}
TER_OPTIONS = {
    "normalized": False,
    "no_punct": False,
    "asian_support": False,
    "case_sensitive": False,
}


def reference_streams(references: Any) -> list[list[str | None]]:
    """Per-example references (a string or a list of strings) as sacrebleu's reference streams."""
    if all(isinstance(r, str) for r in references):
        return [list(references)]
    per_example: list[list[str]] = []
    for i, ref in enumerate(references):
        refs = [ref] if isinstance(ref, str) else ref
        if not isinstance(refs, list | tuple) or not refs:
            raise MetricError(
                None, f"reference {i} must be a string or a non-empty list of strings"
            )
        if not all(isinstance(r, str) for r in refs):
            raise MetricError(None, f"reference {i} must hold only strings")
        per_example.append(list(refs))
    width = max(len(refs) for refs in per_example)
    return [[refs[j] if j < len(refs) else None for refs in per_example] for j in range(width)]


def _inputs(predictions: Any, references: Any) -> tuple[list[str], list[list[str | None]]]:
    preds, refs = check_pair(predictions, references)
    hypotheses = list(preds)
    if not all(isinstance(h, str) for h in hypotheses):
        bad = next(i for i, h in enumerate(hypotheses) if not isinstance(h, str))
        raise MetricError(
            None, f"prediction {bad} must be a string, got {type(hypotheses[bad]).__name__}"
        )
    return hypotheses, reference_streams(refs)


def _scorer(kind: str, options: dict[str, Any]) -> Any:
    from sacrebleu.metrics import BLEU, CHRF, TER

    cls = {"bleu": BLEU, "chrf": CHRF, "ter": TER}[kind]
    try:
        return cls(**options)
    except (TypeError, ValueError, KeyError, AssertionError) as exc:
        raise MetricError(None, f"sacrebleu refused the options {options}: {exc}") from None


def _score(kind: str, predictions: Any, references: Any, options: dict[str, Any]) -> Any:
    hypotheses, streams = _inputs(predictions, references)
    scorer = _scorer(kind, options)
    return scorer, scorer.corpus_score(hypotheses, streams)


def _details(kind: str, predictions: Any, references: Any, options: dict[str, Any]) -> Any:
    scorer, score = _score(kind, predictions, references, options)
    extras: dict[str, Any] = {
        "signature": str(scorer.get_signature()),
        "score_string": str(score),
    }
    if kind == "bleu":
        extras.update(
            precisions=list(score.precisions),
            brevity_penalty=score.bp,
            hypothesis_length=score.sys_len,
            reference_length=score.ref_len,
        )
    return float(score.score), extras


def bleu(predictions: Any, references: Any, **options: Any) -> float:
    """Corpus BLEU (sacrebleu defaults: 13a tokenizer, exponential smoothing)."""
    return float(_score("bleu", predictions, references, options)[1].score)


def bleu_details(predictions: Any, references: Any, **options: Any) -> Any:
    return _details("bleu", predictions, references, options)


def chrf(predictions: Any, references: Any, **options: Any) -> float:
    """Corpus chrF (character n-grams up to 6, beta 2); word_order=2 gives chrF++."""
    return float(_score("chrf", predictions, references, options)[1].score)


def chrf_details(predictions: Any, references: Any, **options: Any) -> Any:
    return _details("chrf", predictions, references, options)


def ter(predictions: Any, references: Any, **options: Any) -> float:
    """Corpus translation edit rate (lower is better)."""
    return float(_score("ter", predictions, references, options)[1].score)


def ter_details(predictions: Any, references: Any, **options: Any) -> Any:
    return _details("ter", predictions, references, options)


def sacrebleu_resampleable(
    kind: str, predictions: Any, references: Any, **options: Any
) -> Resampleable:
    """Bootstrap view: sacrebleu's per-segment statistics, summed per resample, then scored.

    This is how sacrebleu's own paired bootstrap works (statistics extracted once).
    """
    hypotheses, streams = _inputs(predictions, references)
    scorer = _scorer(kind, options)
    stats = np.asarray(scorer._extract_corpus_statistics(hypotheses, streams), dtype=np.float64)

    def finish(sums: np.ndarray) -> np.ndarray:
        return np.array([scorer._compute_score_from_stats(row.tolist()).score for row in sums])

    return table_resampleable(stats, finish)
