"""The metric registry: look metrics up by name and compute them.

`compute` returns the value; `compute_detailed` also returns what produced it (for sacrebleu
metrics the signature string, for WER/CER the edit and length totals). Every input problem is
a MetricError whose message starts with the metric's name.
"""

from __future__ import annotations

import difflib
from typing import Any

from metrics.errors import MetricError
from metrics.spec import MetricResult, MetricSpec

_SPECS: dict[str, MetricSpec] = {}


def _table() -> dict[str, MetricSpec]:
    if not _SPECS:
        from metrics.catalog import builtin_specs

        for spec in builtin_specs():
            _SPECS.setdefault(spec.name, spec)
    return _SPECS


def register(spec: MetricSpec, *, replace: bool = False) -> MetricSpec:
    """Add a metric (e.g. a task's own); refuses to shadow an existing name unless `replace`."""
    table = _table()
    if spec.name in table and not replace:
        raise MetricError(spec.name, "a metric with this name is already registered")
    table[spec.name] = spec
    return spec


def names() -> list[str]:
    """Registered metric names, in display order."""
    return list(_table())


def is_registered(name: str) -> bool:
    return name in _table()


def get(name: str) -> MetricSpec:
    """The spec of `name`; an unknown name is refused with the closest names and the full list."""
    table = _table()
    spec = table.get(name)
    if spec is not None:
        return spec
    close = difflib.get_close_matches(str(name), list(table), n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    raise MetricError(name, f"unknown metric; {hint}known metrics: {', '.join(table)}")


def computable(name: str) -> MetricSpec:
    """The spec of a metric computed from predictions and references."""
    spec = get(name)
    if spec.function is None:
        if spec.family == "performance":
            how = "it is measured by the evaluator; use metrics.summarize_performance(...)"
        else:
            how = "it compares two runs; use metrics.delta_metric(primary, perturbed, original)"
        raise MetricError(name, f"cannot be computed from predictions and references: {how}")
    return spec


def compute(name: str, predictions: Any, references: Any, **options: Any) -> Any:
    """The value of metric `name` (a float, or a dict for confusion_matrix)."""
    spec = computable(name)
    resolved = spec.resolve_options(options)
    try:
        return spec.apply(predictions, references, **resolved)
    except MetricError as exc:
        raise exc.named(name) from None


def compute_detailed(name: str, predictions: Any, references: Any, **options: Any) -> MetricResult:
    """The value plus what produced it: resolved options and metric-specific `extras`.

    For bleu, chrf, chrf_plus_plus and ter, `extras["signature"]` is sacrebleu's signature
    (e.g. ``nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0``), which belongs
    next to every reported score; `extras["score_string"]` is sacrebleu's score line.
    """
    spec = computable(name)
    resolved = spec.resolve_options(options)
    try:
        if spec.detail is not None:
            value, extras = spec.detail(predictions, references, **resolved)
        else:
            value, extras = spec.apply(predictions, references, **resolved), {}
    except MetricError as exc:
        raise exc.named(name) from None
    return MetricResult(name=name, value=value, options=resolved, extras=extras)
