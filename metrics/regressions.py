"""Regression alerts on a benchmark history: one event when a metric gets worse, one when back.

A series is the ordered ``(run_id, value)`` list of one metric on one hardware; after each run
``evaluate_alerts`` compares the newest run with the history under an ``AlertRule`` (a
descriptor's ``[[output.alerts]]`` table) and returns the new ``AlertState`` and the events.

Two tests, as the field's tools use them:

* the lookback z-score (Conbench's default): the newest value against the mean and standard
  deviation of the previous ``lookback`` values; a regression when it is at least ``z``
  standard deviations worse AND at least ``min_change`` (relative) worse. The second guard
  keeps a series with almost no noise (sd near 0) from alerting on a 0.1 % wobble; with sd
  exactly 0 only ``min_change`` decides (any worse value is infinitely many sd away).
* E-divisive means over the history (``metrics.changepoints``), as MongoDB's and Apache
  Otava's tooling use: is there a significant change point, and is the level after it worse.

The alert policy (what users feel):

* ``"zscore"`` fires on the first run the z-score flags. Fast, but one outlier pages.
* ``"both"`` (the default) treats a z-score flag as a candidate. It fires once
  ``CONFIRM_RUNS`` (3) finite runs exist from the flagged run on, if (a) their median and
  the newest run are still worse than the baseline (not "back", below) and (b) the
  change-point test finds a change within ``LOCATION_TOLERANCE`` runs of the flagged one. A
  median back means a transient (one outlier, a blip): the candidate is dropped and nothing
  fires. Only the newest run back, or (b) failing, waits for the next run (more evidence,
  more power), until ``lookback`` runs have passed, after which the new level is accepted
  silently. Detection delay: ``CONFIRM_RUNS - 1`` runs after the change at
  the earliest (the event names the first run at the new level).
* ``"changepoint"`` fires when the latest change point of the history lies within the last
  ``lookback`` runs, at least ``CONFIRM_RUNS`` runs back, after the current level began, and
  the median after it is ``min_change`` worse than the median of the segment before it,
  and neither the run at the change point nor the newest run is back (``z`` is not used:
  the permutation test gives the significance).

Once fired, an alert stays open: later runs at the new level, even worse ones, fire nothing.
It clears when the median of the last runs (1 for ``"zscore"``, ``CONFIRM_RUNS`` otherwise)
and the newest run are back: worse than the baseline by less than half the firing
threshold, where the threshold is ``max(z * sd, min_change * |baseline|)`` (hysteresis, so a
value hovering at the threshold does not fire and clear in turn). After a clear the z-score
only looks at runs from the first run back, so it needs ``MIN_BASELINE`` runs at the
restored level before it judges again; then a new change fires again.

Measured on 50 noisy series (sd 1 % of the level, 60 runs each, defaults): no method fires.
Without the ``min_change`` guard (0) the statistics alone decide: ``"both"`` still fires on
none, ``"zscore"`` fires 17 times (0.6 % of the runs judged: the t-distribution's tail beyond
3 sd), ``"changepoint"`` on 6 series (every run is a new look at the data). A step of 8 sd
at run 30 fires once, at run 30 (zscore) or run 32 naming run 30 (both, changepoint).

A run whose value is missing (None or NaN) is skipped, with a note in the state; missing
values are left out of every window and test. Evaluation is idempotent: runs up to the
state's ``last_run`` are not looked at again, and several new runs are judged in order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from metrics.changepoints import ChangePoint, find_change_points
from metrics.errors import MetricError

RunId = str | int
Worse = Literal["higher", "lower"]
AlertMethod = Literal["both", "zscore", "changepoint"]

MIN_BASELINE = 5  # fewest earlier values a z-score verdict needs: an sd of 2 points means little
CONFIRM_RUNS = 3  # runs at a new level before "both" or "changepoint" decide (min segment size)
LOCATION_TOLERANCE = 2  # how far (in runs) the change point may lie from the flagged run
CHANGEPOINT_HISTORY = 500  # newest values the change-point test reads: it costs O(n^2)
CHANGEPOINT_SIGNIFICANCE = 0.01  # every run is a new look at the data: a stricter level
CHANGEPOINT_PERMUTATIONS = 199


class AlertRule(BaseModel):
    """One ``[[output.alerts]]`` table: which metric, which way is worse, how to test."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str = Field(min_length=1)
    worse: Worse = Field(description="the direction that is a regression: higher or lower")
    method: AlertMethod = "both"
    lookback: int = Field(default=20, ge=MIN_BASELINE, description="runs in the z-score window")
    z: float = Field(default=3.0, gt=0, allow_inf_nan=False)
    min_change: float = Field(
        default=0.05, ge=0, allow_inf_nan=False, description="relative: 0.05 is 5 %"
    )


class AlertState(BaseModel):
    """What ``evaluate_alerts`` remembers between runs for one rule on one series (JSON-safe)."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["ok", "pending", "alerting"] = "ok"
    last_run: RunId | None = None  # the newest run judged
    segment_start: RunId | None = None  # first run of the current level; windows start here
    since_run: RunId | None = None  # pending: the flagged run; alerting: first run of the change
    baseline: float | None = None
    baseline_sd: float | None = None
    z: float | None = None
    note: str = ""  # why the last run gave no event (skipped, too few runs, waiting, ...)


class AlertEvent(BaseModel):
    """An alert ``fired`` (the metric got worse) or ``cleared`` (it came back to the baseline).

    ``run_id`` is the first run at the new level (fired) or the first run back (cleared);
    ``detected_at`` the run whose evaluation raised the event. ``baseline`` is the mean of
    the z-score window (zscore, both) or the median of the segment before the change point
    (changepoint); ``value`` the flagged run's value (zscore) or the median of the runs
    since the change (both, changepoint, cleared).
    """

    kind: Literal["fired", "cleared"]
    metric: str
    method: AlertMethod
    run_id: RunId
    detected_at: RunId
    baseline: float
    value: float
    change: float
    relative_change: float | None  # change / |baseline|; None when the baseline is 0
    z: float | None = None
    change_point_index: int | None = None  # position in the series given
    pvalue: float | None = None


@dataclass(frozen=True)
class ZScoreVerdict:
    """The lookback z-score of the newest value; ``regression`` is None when there is no verdict."""

    regression: bool | None
    reason: str
    value: float
    baseline: float | None = None
    sd: float | None = None
    z: float | None = None
    change: float | None = None
    relative_change: float | None = None
    window: int = 0


def _worse_by(worse: Worse, value: float, baseline: float) -> float:
    return value - baseline if worse == "higher" else baseline - value


def _threshold(rule: AlertRule, baseline: float, sd: float | None) -> float:
    """How much worse than the baseline a value must be to count as a regression."""
    return max(rule.z * (sd or 0.0), rule.min_change * abs(baseline))


def _regressed(rule: AlertRule, value: float, baseline: float, sd: float | None) -> bool:
    by = _worse_by(rule.worse, value, baseline)
    return by > 0 and by >= _threshold(rule, baseline, sd)


def _back(rule: AlertRule, value: float, baseline: float, sd: float | None) -> bool:
    by = _worse_by(rule.worse, value, baseline)
    threshold = _threshold(rule, baseline, sd)
    return by <= 0 if threshold == 0 else by < threshold / 2


def _relative(change: float, baseline: float) -> float | None:
    return change / abs(baseline) if baseline != 0 else None


def _floats(values: Sequence[Any], what: str) -> np.ndarray:
    out = np.empty(len(values))
    for i, value in enumerate(values):
        if value is None:
            out[i] = math.nan
        elif isinstance(value, bool) or not isinstance(
            value, int | float | np.integer | np.floating
        ):
            raise MetricError(
                what, f"value at index {i} is {value!r}; a series holds numbers (None if missing)"
            )
        else:
            out[i] = float(value)
    return out


def lookback_zscore(
    values: Sequence[float | None],
    *,
    worse: Worse,
    lookback: int = 20,
    z: float = 3.0,
    min_change: float = 0.05,
) -> ZScoreVerdict:
    """Is the last of ``values`` a regression against the ``lookback`` values before it?

    Missing values (None, NaN) are left out of the window; a missing newest value, or fewer
    than ``MIN_BASELINE`` earlier values, gives no verdict (``regression`` None) and a reason.
    The sd is the sample sd (ddof 1). Improvements are never regressions.
    """
    rule = AlertRule(metric="z-score", worse=worse, lookback=lookback, z=z, min_change=min_change)
    arr = _floats(values, "z-score")
    if len(arr) == 0:
        raise MetricError("z-score", "the series is empty; need at least the newest value")
    value = float(arr[-1])
    if not math.isfinite(value):
        return ZScoreVerdict(None, f"the newest value is {value}: skipped", value)
    earlier = arr[:-1][np.isfinite(arr[:-1])][-rule.lookback :]
    if len(earlier) < MIN_BASELINE:
        return ZScoreVerdict(
            None,
            f"too few earlier values: {len(earlier)}, a verdict needs {MIN_BASELINE}",
            value,
            window=len(earlier),
        )
    baseline = float(earlier.mean())
    sd = float(earlier.std(ddof=1))
    change = value - baseline
    relative = _relative(change, baseline)
    score = change / sd if sd > 0 else None
    regression = _regressed(rule, value, baseline, sd)
    if regression:
        reason = "regression"
    elif _worse_by(worse, value, baseline) <= 0:
        reason = "not worse than the baseline"
    elif sd > 0 and abs(change) < rule.z * sd:
        reason = f"within noise: |z| {abs(change) / sd:.2f} < {rule.z}"
    else:
        reason = f"change under min_change {rule.min_change:.1%}"
    return ZScoreVerdict(
        regression,
        f"{reason} (value {value:g}, mean {baseline:g}, sd {sd:g} of {len(earlier)} runs)",
        value,
        baseline=baseline,
        sd=sd,
        z=score,
        change=change,
        relative_change=relative,
        window=len(earlier),
    )


@dataclass(frozen=True)
class _History:
    """One series under one rule; ``end`` (set per step) is the position of the newest run."""

    ids: list[RunId]
    values: np.ndarray
    rule: AlertRule
    min_size: int
    significance: float
    permutations: int
    seed: int | None
    where: dict[RunId, int]

    def position(self, run_id: RunId | None, default: int = 0) -> int:
        return default if run_id is None else self.where.get(run_id, default)

    def finite(self, start: int, end: int) -> np.ndarray:
        """Positions in [start, end] with a value."""
        span = np.arange(start, end + 1)
        return span[np.isfinite(self.values[start : end + 1])]

    def tested(self, end: int) -> np.ndarray:
        """Positions the change-point test reads: the newest ``CHANGEPOINT_HISTORY`` values."""
        return self.finite(0, end)[-CHANGEPOINT_HISTORY:]

    def change_points(self, end: int) -> list[tuple[int, ChangePoint]]:
        """Change points of the history up to ``end``, each with its position in the series."""
        positions = self.tested(end)
        found = find_change_points(
            self.values[positions],
            significance=self.significance,
            permutations=self.permutations,
            min_size=self.min_size,
            seed=self.seed,
        )
        return [(int(positions[point.index]), point) for point in found]


def _parse_series(series: Sequence[Any], metric: str) -> tuple[list[RunId], np.ndarray]:
    ids: list[RunId] = []
    values: list[Any] = []
    for i, item in enumerate(series):
        if not isinstance(item, Sequence) or isinstance(item, str) or len(item) != 2:
            raise MetricError(metric, f"series item {i} is {item!r}; expected (run_id, value)")
        run_id, value = item
        if isinstance(run_id, bool) or not isinstance(run_id, str | int):
            raise MetricError(
                metric, f"series item {i} has run id {run_id!r}; run ids are str or int"
            )
        ids.append(run_id)
        values.append(value)
    seen: set[RunId] = set()
    for run_id in ids:
        if run_id in seen:
            raise MetricError(
                metric, f"run {run_id!r} appears twice in the series; one value per run"
            )
        seen.add(run_id)
    return ids, _floats(values, metric)


def _fired(
    h: _History,
    state: AlertState,
    *,
    start: int,
    end: int,
    baseline: float,
    value: float,
    **extra: Any,
) -> tuple[AlertState, list[AlertEvent]]:
    change = value - baseline
    event = AlertEvent(
        kind="fired",
        metric=h.rule.metric,
        method=h.rule.method,
        run_id=h.ids[start],
        detected_at=h.ids[end],
        baseline=baseline,
        value=value,
        change=change,
        relative_change=_relative(change, baseline),
        z=state.z,
        **extra,
    )
    update = {
        "status": "alerting",
        "since_run": h.ids[start],
        "segment_start": h.ids[start],
        "baseline": baseline,
    }
    note = f"alert fired at run {h.ids[end]!r}"
    return state.model_copy(update={**update, "note": note}), [event]


def _reset(state: AlertState, note: str, **update: Any) -> AlertState:
    cleared = {"status": "ok", "since_run": None, "baseline": None, "baseline_sd": None, "z": None}
    return state.model_copy(update={**cleared, **update, "note": note})


def _check_zscore(h: _History, state: AlertState, end: int) -> tuple[AlertState, list[AlertEvent]]:
    start = h.position(state.segment_start)
    rule = h.rule
    verdict = lookback_zscore(
        list(h.values[start : end + 1]),
        worse=rule.worse,
        lookback=rule.lookback,
        z=rule.z,
        min_change=rule.min_change,
    )
    if not verdict.regression or verdict.baseline is None:
        return state.model_copy(update={"note": verdict.reason}), []
    flagged = state.model_copy(
        update={"baseline": verdict.baseline, "baseline_sd": verdict.sd, "z": verdict.z}
    )
    if rule.method == "zscore":
        return _fired(
            h, flagged, start=end, end=end, baseline=verdict.baseline, value=verdict.value
        )
    pending = flagged.model_copy(update={"status": "pending", "since_run": h.ids[end]})
    return _check_pending(h, pending, end)


def _check_pending(h: _History, state: AlertState, end: int) -> tuple[AlertState, list[AlertEvent]]:
    if state.since_run not in h.where or state.baseline is None or h.rule.method != "both":
        return _reset(state, "a pending candidate no longer applies: dropped"), []
    flagged = h.where[state.since_run]
    after = h.finite(flagged, end)
    if len(after) < h.min_size:
        note = f"candidate at run {state.since_run!r}: {len(after)} of {h.min_size} runs so far"
        return state.model_copy(update={"note": note}), []
    level = float(np.median(h.values[after]))
    if _back(h.rule, level, state.baseline, state.baseline_sd):
        note = f"candidate at run {state.since_run!r} was transient (median {level:g}): dropped"
        return _reset(state, note), []
    if _back(h.rule, float(h.values[end]), state.baseline, state.baseline_sd):
        # two runs up and one back is not yet a new level: the next run decides
        note = f"candidate at run {state.since_run!r}: the newest run is back; waiting"
        return state.model_copy(update={"note": note}), []
    for position, point in h.change_points(end):
        if abs(position - flagged) <= LOCATION_TOLERANCE:
            return _fired(
                h,
                state,
                start=flagged,
                end=end,
                baseline=state.baseline,
                value=level,
                change_point_index=position,
                pvalue=point.pvalue,
            )
    if len(after) >= h.rule.lookback:
        note = f"candidate at run {state.since_run!r} never confirmed by a change point: dropped"
        return _reset(state, note), []
    note = f"candidate at run {state.since_run!r}: no change point yet over {len(after)} runs"
    return state.model_copy(update={"note": note}), []


def _check_changepoint(
    h: _History, state: AlertState, end: int
) -> tuple[AlertState, list[AlertEvent]]:
    found = h.change_points(end)
    if not found:
        return state.model_copy(update={"note": "no change point"}), []
    position, point = found[-1]
    after = h.finite(position, end)
    if position <= h.position(state.segment_start, default=-1) or len(after) > h.rule.lookback:
        return state.model_copy(update={"note": "no new change point"}), []
    previous = found[-2][0] if len(found) > 1 else int(h.tested(end)[0])
    before = h.values[h.finite(previous, position - 1)]
    baseline = float(np.median(before))
    level = float(np.median(h.values[after]))
    # no z here: the permutation test stands for significance, min_change for relevance.
    # The run at the change point must itself be worse: with a change only two runs old,
    # min_size puts the split one run early, on a run still at the old level. The newest
    # run must be worse too: two runs up and one back is not yet a new level.
    if (
        not _regressed(h.rule, level, baseline, None)
        or _back(h.rule, float(h.values[position]), baseline, None)
        or _back(h.rule, float(h.values[end]), baseline, None)
    ):
        note = f"change point at position {position} is not (yet) a regression"
        return state.model_copy(update={"note": note}), []
    sd = float(before.std(ddof=1)) if len(before) > 1 else None
    with_sd = state.model_copy(update={"baseline_sd": sd, "z": None})
    return _fired(
        h,
        with_sd,
        start=position,
        end=end,
        baseline=baseline,
        value=level,
        change_point_index=position,
        pvalue=point.pvalue,
    )


def _check_clear(h: _History, state: AlertState, end: int) -> tuple[AlertState, list[AlertEvent]]:
    if state.since_run not in h.where or state.baseline is None:
        return _reset(state, "the alert's runs are no longer in the series: closed"), []
    needed = 1 if h.rule.method == "zscore" else h.min_size
    recent = h.finite(h.where[state.since_run] + 1, end)[-needed:]
    if len(recent) < needed:
        return state.model_copy(update={"note": "alert open"}), []
    level = float(np.median(h.values[recent]))
    sd = None if h.rule.method == "changepoint" else state.baseline_sd
    newest = float(h.values[end])
    if not (_back(h.rule, level, state.baseline, sd) and _back(h.rule, newest, state.baseline, sd)):
        return state.model_copy(update={"note": "alert open"}), []
    # the median is back, so at least one of these runs is: the first of them starts the level
    first = next(p for p in recent if _back(h.rule, float(h.values[p]), state.baseline, sd))
    change = level - state.baseline
    event = AlertEvent(
        kind="cleared",
        metric=h.rule.metric,
        method=h.rule.method,
        run_id=h.ids[first],
        detected_at=h.ids[end],
        baseline=state.baseline,
        value=level,
        change=change,
        relative_change=_relative(change, state.baseline),
    )
    note = f"alert cleared at run {h.ids[end]!r}"
    return _reset(state, note, segment_start=h.ids[first]), [event]


def _step(h: _History, state: AlertState, end: int) -> tuple[AlertState, list[AlertEvent]]:
    state = state.model_copy(update={"last_run": h.ids[end]})
    value = h.values[end]
    if not math.isfinite(value):
        note = f"run {h.ids[end]!r} has no finite value ({value}): skipped"
        return state.model_copy(update={"note": note}), []
    if state.status == "alerting":
        return _check_clear(h, state, end)
    if state.status == "pending":
        return _check_pending(h, state, end)
    if h.rule.method == "changepoint":
        return _check_changepoint(h, state, end)
    return _check_zscore(h, state, end)


def evaluate_alerts(
    series: Sequence[tuple[RunId, float | None]],
    rule: AlertRule | Mapping[str, Any],
    previous_state: AlertState | Mapping[str, Any] | None = None,
    *,
    min_size: int = CONFIRM_RUNS,
    significance: float = CHANGEPOINT_SIGNIFICANCE,
    permutations: int = CHANGEPOINT_PERMUTATIONS,
    seed: int | None = 0,
) -> tuple[AlertState, list[AlertEvent]]:
    """Judge the runs of ``series`` after ``previous_state.last_run``; return the state and events.

    ``series`` is the whole ordered history of one metric on one hardware, oldest first, as
    ``(run_id, value)`` with None for a missing value. A fresh state judges only the newest
    run (the history before it is taken as it is: no alerts for old changes). A state whose
    ``last_run`` is not in the series is refused: it belongs to another series.
    """
    rule = rule if isinstance(rule, AlertRule) else AlertRule.model_validate(rule)
    state = (
        previous_state
        if isinstance(previous_state, AlertState)
        else AlertState.model_validate(previous_state or {})
    )
    ids, values = _parse_series(series, rule.metric)
    if not ids:
        return state, []
    h = _History(
        ids,
        values,
        rule,
        min_size,
        significance,
        permutations,
        seed,
        {run_id: i for i, run_id in enumerate(ids)},
    )
    if state.last_run is None:
        todo: Sequence[int] = [len(ids) - 1]
    elif state.last_run in h.where:
        todo = range(h.where[state.last_run] + 1, len(ids))
    else:
        raise MetricError(
            rule.metric,
            f"the alert state's last run {state.last_run!r} is not in the series: the state "
            "belongs to another series; start from a fresh AlertState()",
        )
    events: list[AlertEvent] = []
    for end in todo:
        state, new = _step(h, state, end)
        events.extend(new)
    return state, events
