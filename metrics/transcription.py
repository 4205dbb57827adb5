"""Word and character error rates from our own Levenshtein distance (bit-parallel, Hyyrö 2001).

WER = total word edits / total reference words over the corpus (what jiwer computes for a
list of sentences); words are split on whitespace. CER does the same over characters of the
stripped strings (inner spaces count as characters, as in jiwer's default). Both can exceed
1 and are refused when the references hold no word (character) at all.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from metrics.errors import MetricError
from metrics.inputs import check_pair
from metrics.spec import Resampleable, table_resampleable


def levenshtein(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Edit distance (insertions, deletions, substitutions, each costing 1) between sequences.

    Myers/Hyyrö bit-vector algorithm: one column of the DP table is an int of len(a) bits, so
    the work is len(b) big-int steps instead of len(a) * len(b) Python steps.
    """
    if len(a) < len(b):
        a, b = b, a
    m = len(a)
    if m == 0 or len(b) == 0:
        return m
    masks: dict[Hashable, int] = {}
    for i, symbol in enumerate(a):
        masks[symbol] = masks.get(symbol, 0) | (1 << i)
    full = (1 << m) - 1
    top = 1 << (m - 1)
    plus, minus, score = full, 0, m
    for symbol in b:
        eq = masks.get(symbol, 0)
        xv = eq | minus
        xh = ((((eq & plus) + plus) & full) ^ plus) | eq
        hp = minus | (~(xh | plus) & full)
        hm = plus & xh
        if hp & top:
            score += 1
        elif hm & top:
            score -= 1
        hp = ((hp << 1) | 1) & full
        hm = (hm << 1) & full
        plus = hm | (~(xv | hp) & full)
        minus = hp & xv
    return score


def _tokens(text: str, unit: str) -> Sequence[str]:
    return text.split() if unit == "word" else text.strip()


def edit_rows(predictions: Any, references: Any, *, unit: str) -> np.ndarray:
    """(edits, reference length) per example, as an (n, 2) float array."""
    preds, refs = check_pair(predictions, references)
    rows = np.empty((len(preds), 2), dtype=np.float64)
    for i, (pred, ref) in enumerate(zip(preds, refs, strict=True)):
        if not isinstance(pred, str) or not isinstance(ref, str):
            side, value = ("prediction", pred) if not isinstance(pred, str) else ("reference", ref)
            raise MetricError(
                None, f"{side} {i} must be a string (one transcript), got {type(value).__name__}"
            )
        ref_tokens = _tokens(ref, unit)
        rows[i, 0] = levenshtein(_tokens(pred, unit), ref_tokens)
        rows[i, 1] = len(ref_tokens)
    if rows[:, 1].sum() == 0:
        raise MetricError(None, f"the references hold no {unit}s; the error rate is undefined")
    return rows


def _rate(rows: np.ndarray) -> float:
    return float(rows[:, 0].sum() / rows[:, 1].sum())


def wer(predictions: Any, references: Any) -> float:
    """Word error rate over the corpus."""
    return _rate(edit_rows(predictions, references, unit="word"))


def cer(predictions: Any, references: Any) -> float:
    """Character error rate over the corpus."""
    return _rate(edit_rows(predictions, references, unit="character"))


def _details(unit: str, predictions: Any, references: Any) -> tuple[float, dict[str, Any]]:
    rows = edit_rows(predictions, references, unit=unit)
    return _rate(rows), {"edits": int(rows[:, 0].sum()), "reference_length": int(rows[:, 1].sum())}


def wer_details(predictions: Any, references: Any) -> tuple[float, dict[str, Any]]:
    return _details("word", predictions, references)


def cer_details(predictions: Any, references: Any) -> tuple[float, dict[str, Any]]:
    return _details("character", predictions, references)


def error_rate_resampleable(predictions: Any, references: Any, *, unit: str) -> Resampleable:
    """Bootstrap view: total edits over total reference length, per resample."""

    def finish(sums: np.ndarray) -> np.ndarray:
        out = np.zeros(len(sums))
        np.divide(sums[:, 0], sums[:, 1], out=out, where=sums[:, 1] > 0)
        return out

    return table_resampleable(edit_rows(predictions, references, unit=unit), finish)
