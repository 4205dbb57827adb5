"""The built-in metrics: one MetricSpec per registered name, with display metadata."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, TypedDict

import numpy as np

from metrics import classification as cls
from metrics import generation as gen
from metrics import qa, regression, scores, transcription
from metrics.spec import MetricSpec, Resampleable, mean_resampleable


class _Display(TypedDict):
    unit: str
    scale: float
    range: tuple[float | None, float | None]


_FRACTION: _Display = {"unit": "%", "scale": 100.0, "range": (0.0, 1.0)}
_PRF: dict[str, Any] = {"average": "macro", "pos_label": 1}
_AVERAGE_WORDS = {
    "macro": "unweighted mean over classes",
    "micro": "from global counts",
    "weighted": "mean over classes weighted by support",
}


def _per_example_mean(per_example: Callable[..., np.ndarray]) -> Callable[..., Resampleable]:
    """A `resampleable` for metrics that are the mean of per-example values."""
    return lambda p, r, **o: mean_resampleable(per_example(p, r, **o))


def _prf_specs() -> list[MetricSpec]:
    functions = {"precision": cls.precision, "recall": cls.recall, "f1": cls.f1}
    pretty = {"precision": "Precision", "recall": "Recall", "f1": "F1"}
    specs = []
    for metric, function in functions.items():
        resample = partial(cls.confusion_resampleable, metric=metric)
        specs.append(
            MetricSpec(
                name=metric,
                pretty_name=pretty[metric],
                direction="higher",
                family="classification",
                description=f"{pretty[metric]}; average= macro, micro, weighted or binary "
                "(pos_label); zero_division=0 as scikit-learn",
                options=_PRF,
                function=function,
                resampleable=resample,
                **_FRACTION,
            )
        )
        for average, words in _AVERAGE_WORDS.items():
            specs.append(
                MetricSpec(
                    name=f"{average}_{metric}",
                    pretty_name=f"{average.capitalize()} {pretty[metric]}",
                    direction="higher",
                    family="classification",
                    description=f"{pretty[metric]}, {words}",
                    options={"pos_label": 1},
                    fixed={"average": average},
                    function=function,
                    resampleable=resample,
                    **_FRACTION,
                )
            )
    return specs


def _classification_specs() -> list[MetricSpec]:
    return [
        MetricSpec(
            name="accuracy",
            pretty_name="Accuracy",
            direction="higher",
            family="classification",
            description="Share of exact label matches; a reference may list acceptable labels",
            function=cls.accuracy,
            per_example=cls.accuracy_per_example,
            resampleable=partial(cls.confusion_resampleable, metric="accuracy"),
            **_FRACTION,
        ),
        MetricSpec(
            name="top_k_accuracy",
            pretty_name="Top-k Accuracy",
            direction="higher",
            family="classification",
            description="Share of examples whose label is among the k best (ranked or scored)",
            options={"k": 5, "labels": None},
            function=scores.top_k_accuracy,
            per_example=scores.top_k_hits,
            resampleable=_per_example_mean(scores.top_k_hits),
            **_FRACTION,
        ),
        *_prf_specs(),
        MetricSpec(
            name="mcc",
            pretty_name="MCC",
            unit="",
            direction="higher",
            range=(-1.0, 1.0),
            family="classification",
            description="Matthews correlation coefficient (multiclass); 0 when undefined",
            function=cls.matthews_corrcoef,
            resampleable=partial(cls.confusion_resampleable, metric="mcc"),
        ),
        MetricSpec(
            name="confusion_matrix",
            pretty_name="Confusion Matrix",
            unit="examples",
            direction="higher",
            range=(0.0, None),
            family="classification",
            value_type="dict",
            description="{labels, matrix[reference][prediction]} counts",
            function=cls.confusion_matrix,
        ),
        MetricSpec(
            name="roc_auc",
            pretty_name="ROC AUC",
            unit="",
            direction="higher",
            range=(0.0, 1.0),
            family="classification",
            description="Area under the ROC curve; binary, or one-vs-rest macro on probability "
            "rows",
            options={"labels": None},
            function=scores.roc_auc,
        ),
        MetricSpec(
            name="log_loss",
            pretty_name="Log Loss",
            unit="nats",
            direction="lower",
            range=(0.0, None),
            family="classification",
            description="Mean cross-entropy of the reference class (probabilities clipped to eps)",
            options={"labels": None},
            function=scores.log_loss,
            per_example=scores.log_loss_per_example,
            resampleable=_per_example_mean(scores.log_loss_per_example),
        ),
    ]


def _regression_specs() -> list[MetricSpec]:
    common: dict[str, Any] = {"unit": "", "family": "regression"}
    return [
        MetricSpec(
            name="mse",
            pretty_name="MSE",
            direction="lower",
            range=(0.0, None),
            description="Mean squared error",
            function=regression.mse,
            per_example=regression.squared_errors,
            resampleable=_per_example_mean(regression.squared_errors),
            **common,
        ),
        MetricSpec(
            name="rmse",
            pretty_name="RMSE",
            direction="lower",
            range=(0.0, None),
            description="Root mean squared error",
            function=regression.rmse,
            resampleable=regression.rmse_resampleable,
            **common,
        ),
        MetricSpec(
            name="mae",
            pretty_name="MAE",
            direction="lower",
            range=(0.0, None),
            description="Mean absolute error",
            function=regression.mae,
            per_example=regression.absolute_errors,
            resampleable=_per_example_mean(regression.absolute_errors),
            **common,
        ),
        MetricSpec(
            name="r2",
            pretty_name="R²",
            direction="higher",
            range=(None, 1.0),
            description="Coefficient of determination (scikit-learn, force_finite)",
            function=regression.r2,
            resampleable=regression.r2_resampleable,
            **common,
        ),
        MetricSpec(
            name="pearson",
            pretty_name="Pearson r",
            direction="higher",
            range=(-1.0, 1.0),
            description="Pearson correlation; 0 when a side is constant",
            function=regression.pearson,
            resampleable=regression.pearson_resampleable,
            **common,
        ),
        MetricSpec(
            name="spearman",
            pretty_name="Spearman rho",
            direction="higher",
            range=(-1.0, 1.0),
            description="Spearman rank correlation; 0 when a side is constant",
            function=regression.spearman,
            **common,
        ),
    ]


def _text_specs() -> list[MetricSpec]:
    bleu_range: dict[str, Any] = {"unit": "", "range": (0.0, 100.0), "family": "generation"}
    return [
        MetricSpec(
            name="exact_match",
            pretty_name="Exact Match",
            direction="higher",
            family="qa",
            description="SQuAD v1.1 exact match after answer normalisation, max over answers",
            function=qa.exact_match,
            per_example=qa.exact_match_per_example,
            resampleable=_per_example_mean(qa.exact_match_per_example),
            **_FRACTION,
        ),
        MetricSpec(
            name="squad_f1",
            pretty_name="QA F1",
            direction="higher",
            family="qa",
            description="SQuAD v1.1 token F1 after answer normalisation, max over answers",
            function=qa.squad_f1,
            per_example=qa.squad_f1_per_example,
            resampleable=_per_example_mean(qa.squad_f1_per_example),
            **_FRACTION,
        ),
        MetricSpec(
            name="bleu",
            pretty_name="BLEU",
            direction="higher",
            description="sacrebleu corpus BLEU; signature in compute_detailed(...).extras",
            options=gen.BLEU_OPTIONS,
            function=gen.bleu,
            detail=gen.bleu_details,
            resampleable=partial(gen.sacrebleu_resampleable, "bleu"),
            **bleu_range,
        ),
        MetricSpec(
            name="chrf",
            pretty_name="chrF",
            direction="higher",
            description="sacrebleu corpus chrF (nc 6, nw 0, beta 2)",
            options=gen.CHRF_OPTIONS,
            function=gen.chrf,
            detail=gen.chrf_details,
            resampleable=partial(gen.sacrebleu_resampleable, "chrf"),
            **bleu_range,
        ),
        MetricSpec(
            name="chrf_plus_plus",
            pretty_name="chrF++",
            direction="higher",
            description="sacrebleu corpus chrF++ (chrF with word n-grams up to 2)",
            options={k: v for k, v in gen.CHRF_OPTIONS.items() if k != "word_order"},
            fixed={"word_order": 2},
            function=gen.chrf,
            detail=gen.chrf_details,
            resampleable=partial(gen.sacrebleu_resampleable, "chrf"),
            **bleu_range,
        ),
        MetricSpec(
            name="ter",
            pretty_name="TER",
            unit="",
            direction="lower",
            range=(0.0, None),
            family="generation",
            description="sacrebleu corpus translation edit rate",
            options=gen.TER_OPTIONS,
            function=gen.ter,
            detail=gen.ter_details,
            resampleable=partial(gen.sacrebleu_resampleable, "ter"),
        ),
        MetricSpec(
            name="wer",
            pretty_name="WER",
            unit="%",
            scale=100.0,
            direction="lower",
            range=(0.0, None),
            family="transcription",
            description="Word error rate: word edits / reference words over the corpus",
            function=transcription.wer,
            detail=transcription.wer_details,
            resampleable=partial(transcription.error_rate_resampleable, unit="word"),
        ),
        MetricSpec(
            name="cer",
            pretty_name="CER",
            unit="%",
            scale=100.0,
            direction="lower",
            range=(0.0, None),
            family="transcription",
            description="Character error rate: character edits / reference characters",
            function=transcription.cer,
            detail=transcription.cer_details,
            resampleable=partial(transcription.error_rate_resampleable, unit="character"),
        ),
    ]


def _measured_specs() -> list[MetricSpec]:
    """Metrics the evaluator measures (performance) or derives from perturbed runs (delta)."""
    perf: dict[str, Any] = {"family": "performance", "range": (0.0, None)}
    latency = "latency of the batch an example was in, over examples"
    return [
        MetricSpec(
            name="examples_per_second",
            pretty_name="Throughput",
            unit="examples/second",
            direction="higher",
            description="Examples scored per second of wall time",
            **perf,
        ),
        *[
            MetricSpec(
                name=f"latency_p{q}_ms",
                pretty_name=f"Latency p{q}",
                unit="ms",
                direction="lower",
                description=f"{q}th percentile {latency}",
                **perf,
            )
            for q in (50, 90, 99)
        ],
        MetricSpec(
            name="peak_memory_mb",
            pretty_name="Memory",
            unit="MiB",
            direction="lower",
            description="Peak resident memory of the model process",
            **perf,
        ),
        MetricSpec(
            name="robustness",
            pretty_name="Robustness",
            direction="higher",
            family="delta",
            description="Primary metric of predictions on perturbed examples against the "
            "model's own predictions on the originals (Dynaboard)",
            **_FRACTION,
        ),
        MetricSpec(
            name="fairness",
            pretty_name="Fairness",
            direction="higher",
            family="delta",
            description="Like robustness, with demographic perturbations (Dynaboard)",
            **_FRACTION,
        ),
    ]


def builtin_specs() -> list[MetricSpec]:
    """Every built-in metric, in display order."""
    return [
        *_classification_specs(),
        *_regression_specs(),
        *_text_specs(),
        *_measured_specs(),
    ]
