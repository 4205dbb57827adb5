"""Regression alerts: one event per change, none for noise, cleared on return, direction kept.

Each history is replayed as the scheduler will drive it: ``evaluate_alerts`` after every
run, with the state stored as JSON between runs (as the database keeps it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from metrics import MetricError
from metrics.regressions import (
    CONFIRM_RUNS,
    MIN_BASELINE,
    AlertEvent,
    AlertRule,
    AlertState,
    evaluate_alerts,
    lookback_zscore,
)

LEVEL, SIGMA = 100.0, 1.0  # noise of 1 % of the level: a 3-sd wobble is under min_change


def noise(seed: int, n: int = 60) -> np.ndarray:
    return np.random.default_rng(seed).normal(LEVEL, SIGMA, n)


def replay(
    values: Sequence[float | None], rule: AlertRule, *, ids: Sequence[int | str] | None = None
) -> tuple[AlertState, list[AlertEvent]]:
    """Evaluate after each run, storing the state as JSON in between; all events in order."""
    ids = list(range(len(values))) if ids is None else list(ids)
    stored = AlertState().model_dump_json()
    events: list[AlertEvent] = []
    for end in range(len(values)):
        series = [
            (ids[i], None if v is None else float(v)) for i, v in enumerate(values[: end + 1])
        ]
        state, new = evaluate_alerts(series, rule, AlertState.model_validate_json(stored))
        stored = state.model_dump_json()
        events.extend(new)
    return AlertState.model_validate_json(stored), events


def summary(events: list[AlertEvent]) -> list[tuple[str, int | str, int | str]]:
    return [(e.kind, e.run_id, e.detected_at) for e in events]


BOTH = AlertRule(metric="latency_ms", worse="higher")
ZSCORE = AlertRule(metric="latency_ms", worse="higher", method="zscore")
CHANGEPOINT = AlertRule(metric="latency_ms", worse="higher", method="changepoint")


# --- a step fires once, noise never --------------------------------------------------------


@pytest.mark.parametrize("seed", range(10))
def test_a_step_fires_exactly_one_alert_naming_the_run_the_baseline_and_the_change(seed) -> None:
    values = noise(seed)
    values[30:] += 8 * SIGMA  # 8 sd, 8 %
    state, events = replay(values, BOTH)
    (event,) = events
    # "both" confirms with CONFIRM_RUNS runs at the new level: fired two runs after the step
    assert (event.kind, event.run_id, event.detected_at) == ("fired", 30, 30 + CONFIRM_RUNS - 1)
    assert (event.metric, event.method) == ("latency_ms", "both")
    assert event.baseline == pytest.approx(np.mean(values[10:30]))  # the 20 runs before
    assert event.value == pytest.approx(np.median(values[30:33]))
    assert event.change == pytest.approx(event.value - event.baseline)
    assert event.relative_change == pytest.approx(0.08, abs=0.015)
    assert event.z is not None and event.z > 3
    assert event.change_point_index == 30
    assert event.pvalue is not None and event.pvalue <= 0.01
    assert state.status == "alerting"


@settings(max_examples=15, deadline=None)
@given(
    k=st.floats(6.0, 15.0), seed=st.integers(0, 10_000), worse=st.sampled_from(["higher", "lower"])
)
def test_a_step_of_k_sigma_the_worse_way_fires_once_at_the_step(k, seed, worse) -> None:
    values = noise(seed, 45)
    values[30:] += k * SIGMA if worse == "higher" else -k * SIGMA
    _, events = replay(values, AlertRule(metric="images_per_second", worse=worse))
    # run 30 itself, unless its noise left it under the 5 % guard (6 sd = 6 % here): then the
    # first run after it that is not; confirmed two runs after the run it names
    ((kind, run, detected),) = summary(events)
    assert kind == "fired" and run in (30, 31, 32) and detected == run + 2
    assert run == 30 or abs(values[30] - np.mean(values[10:30])) < 0.05 * LEVEL


@pytest.mark.parametrize("rule", [BOTH, ZSCORE], ids=["both", "zscore"])
def test_noise_of_the_same_size_without_a_step_raises_nothing(rule) -> None:
    fired = [summary(replay(noise(seed), rule)[1]) for seed in range(50)]
    assert fired == [[]] * 50


def test_noise_without_a_step_raises_nothing_under_changepoint_either() -> None:
    fired = [summary(replay(noise(seed, 45), CHANGEPOINT)[1]) for seed in range(12)]
    assert fired == [[]] * 12


def test_without_min_change_both_still_ignores_noise_where_the_z_score_alone_pages() -> None:
    # min_change 0 leaves the statistics alone to decide: the z-score flags a 3-sd run about
    # once in 200 (t with 19 degrees of freedom), and "zscore" pages on each; "both" drops
    # them, since the change-point test finds no new level behind a single high run
    both = AlertRule(metric="latency_ms", worse="higher", min_change=0.0)
    zscore = both.model_copy(update={"method": "zscore"})
    pages_both = sum(len(replay(noise(seed), both)[1]) for seed in range(50))
    fired_zscore = sum(
        e.kind == "fired" for seed in range(50) for e in replay(noise(seed), zscore)[1]
    )
    assert pages_both == 0
    assert 3 <= fired_zscore <= 40  # 50 series x 40 judged runs x ~0.5 %


def test_zscore_fires_on_the_first_run_and_changepoint_two_runs_later() -> None:
    values = noise(3)
    values[30:] += 8 * SIGMA
    assert summary(replay(values, ZSCORE)[1]) == [("fired", 30, 30)]
    (event,) = replay(values, CHANGEPOINT)[1]
    assert (event.kind, event.run_id, event.detected_at, event.method) == (
        "fired",
        30,
        32,
        "changepoint",
    )
    assert event.baseline == pytest.approx(np.median(values[:30]))
    assert event.z is None and event.change_point_index == 30


# --- clearing and firing again -------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (BOTH, [("fired", 30, 32), ("cleared", 50, 51), ("fired", 65, 67)]),
        (ZSCORE, [("fired", 30, 30), ("cleared", 50, 50), ("fired", 65, 65)]),
        (CHANGEPOINT, [("fired", 30, 32), ("cleared", 50, 51), ("fired", 65, 67)]),
    ],
    ids=["both", "zscore", "changepoint"],
)
def test_a_step_back_clears_and_a_second_step_after_that_fires_again(rule, expected) -> None:
    values = noise(5, 80)
    values[30:50] += 8 * SIGMA
    values[65:] += 8 * SIGMA
    state, events = replay(values, rule)
    assert summary(events) == expected
    cleared = events[1]
    assert cleared.baseline == events[0].baseline
    assert abs(cleared.change) < 0.025 * LEVEL  # back within half the 5 % threshold
    assert state.status == "alerting"


def test_later_runs_at_the_new_level_even_worse_ones_do_not_fire_again() -> None:
    values = noise(6, 70)
    values[30:] += 8 * SIGMA
    values[45:] += 4 * SIGMA  # worse still while the alert is open
    state, events = replay(values, BOTH)
    assert summary(events) == [("fired", 30, 32)]
    assert state.status == "alerting" and state.since_run == 30


def test_one_run_back_inside_a_regression_does_not_clear_it_under_both() -> None:
    values = noise(7, 50)
    values[30:] += 8 * SIGMA
    values[40] = LEVEL  # one good night
    assert summary(replay(values, BOTH)[1]) == [("fired", 30, 32)]


# --- flaky series --------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(
    at=st.integers(MIN_BASELINE + 2, 40),
    size=st.floats(5.0, 50.0),
    seed=st.integers(0, 10_000),
)
def test_a_single_outlier_does_not_fire_under_both(at, size, seed) -> None:
    values = noise(seed, 45)
    values[at] += size * SIGMA
    state, events = replay(values, BOTH)
    assert events == []
    assert state.status == "ok"


def test_a_single_outlier_pages_and_clears_under_zscore_alone() -> None:
    values = noise(8, 40)
    values[25] += 20 * SIGMA
    assert summary(replay(values, ZSCORE)[1]) == [("fired", 25, 25), ("cleared", 26, 26)]


def test_two_bad_nights_then_back_do_not_fire_under_both() -> None:
    values = noise(9, 45)
    values[30:32] += 10 * SIGMA
    assert replay(values, BOTH)[1] == []


# --- direction -----------------------------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(
    k=st.floats(4.0, 30.0),
    seed=st.integers(0, 10_000),
    method=st.sampled_from(["both", "zscore", "changepoint"]),
    worse=st.sampled_from(["higher", "lower"]),
)
def test_an_improvement_never_fires(k, seed, method, worse) -> None:
    values = noise(seed, 40)
    values[30:] += -k * SIGMA if worse == "higher" else k * SIGMA  # the better way
    rule = AlertRule(metric="m", worse=worse, method=method)
    assert replay(values, rule)[1] == []


def test_a_drop_fires_when_lower_is_worse_and_not_when_higher_is() -> None:
    values = noise(10)
    values[30:] -= 8 * SIGMA
    lower = AlertRule(metric="throughput", worse="lower")
    (event,) = replay(values, lower)[1]
    assert event.run_id == 30 and event.change < 0 and event.relative_change < -0.05
    assert replay(values, lower.model_copy(update={"worse": "higher"}))[1] == []


# --- edge cases of the z-score -------------------------------------------------------------


def test_too_few_points_give_no_verdict() -> None:
    verdict = lookback_zscore([100.0, 100.5, 99.5, 100.2, 500.0], worse="higher")
    assert verdict.regression is None
    assert "too few earlier values: 4, a verdict needs 5" in verdict.reason
    state, events = replay([100.0, 100.5, 99.5, 100.2, 500.0], ZSCORE)
    assert events == [] and state.note.startswith("too few")


def test_the_z_score_uses_the_last_lookback_values_and_reports_its_numbers() -> None:
    history = [50.0] * 10 + [100.0, 101.0, 99.0, 100.0, 100.0]  # lookback 5 sees only 100s
    verdict = lookback_zscore([*history, 110.0], worse="higher", lookback=5)
    assert verdict.regression is True
    assert (verdict.baseline, verdict.window) == (100.0, 5)
    assert verdict.sd == pytest.approx(np.std([100, 101, 99, 100, 100], ddof=1))
    assert verdict.z == pytest.approx(10 / verdict.sd)
    assert (verdict.change, verdict.relative_change) == (10.0, 0.10)
    small = lookback_zscore([*history, 103.0], worse="higher", lookback=5)
    assert small.regression is False and "min_change" in small.reason  # 4 sd but 3 %
    improvement = lookback_zscore([*history, 80.0], worse="higher", lookback=5)
    assert improvement.regression is False and "not worse" in improvement.reason


def test_a_constant_series_with_sd_0_fires_on_a_relevant_step_only() -> None:
    flat = [100.0] * 30
    (event,) = replay([*flat, *[110.0] * 5], BOTH)[1]
    assert (event.run_id, event.z, event.relative_change) == (30, None, pytest.approx(0.10))
    assert replay([*flat, *[101.0] * 5], BOTH)[1] == []  # 1 % < min_change
    # with min_change 0 any worse value of a constant series is a regression
    strict = BOTH.model_copy(update={"min_change": 0.0})
    assert summary(replay([*flat, *[100.5] * 5], strict)[1]) == [("fired", 30, 32)]


def test_a_nearly_constant_series_does_not_fire_on_a_huge_z_of_a_tiny_change() -> None:
    values = list(100.0 + np.random.default_rng(1).normal(0, 1e-9, 30)) + [100.5] * 5
    assert lookback_zscore(values[:31], worse="higher").z > 1e6
    assert replay(values, BOTH)[1] == []


# --- missing values ------------------------------------------------------------------------


def test_a_missing_newest_value_is_skipped_with_a_reason() -> None:
    verdict = lookback_zscore([100.0] * 10 + [math.nan], worse="higher")
    assert verdict.regression is None and "nan" in verdict.reason
    state, events = evaluate_alerts([(i, 100.0) for i in range(10)] + [(10, None)], BOTH)
    assert events == [] and state.last_run == 10 and "no finite value (nan): skipped" in state.note


def test_missing_values_in_the_history_are_left_out_and_a_step_still_fires_once() -> None:
    values: list[float | None] = list(noise(11))
    values[30:] = [v + 8 * SIGMA for v in values[30:]]  # type: ignore[operator]
    for i in (12, 20, 31, 45):
        values[i] = math.nan if i % 2 else None
    _, events = replay(values, BOTH)
    # run 31 is missing: three values at the new level exist at run 33
    assert summary(events) == [("fired", 30, 33)]


@settings(max_examples=25, deadline=None)
@given(
    levels=st.lists(st.sampled_from([0.0, 6.0, 12.0, -6.0]), min_size=2, max_size=5),
    length=st.integers(5, 15),
    outliers=st.lists(st.tuples(st.integers(0, 74), st.floats(-30, 30)), max_size=4),
    method=st.sampled_from(["both", "zscore", "changepoint"]),
    seed=st.integers(0, 10_000),
)
def test_events_alternate_fired_cleared_and_the_state_agrees(
    levels, length, outliers, method, seed
) -> None:
    values = np.concatenate([noise(seed + i, length) + level for i, level in enumerate(levels)])
    for at, size in outliers:
        if at < len(values):
            values[at] += size
    state, events = replay(values, AlertRule(metric="m", worse="higher", method=method))
    kinds = [e.kind for e in events]
    assert kinds == ["fired", "cleared"] * (len(kinds) // 2) + ["fired"] * (len(kinds) % 2)
    assert (state.status == "alerting") == (kinds[-1:] == ["fired"])
    for previous, event in zip([None, *events], events, strict=False):
        assert event.run_id <= event.detected_at  # ids are positions here
        if event.kind == "fired":
            assert event.change > 0  # worse is higher
        else:  # back within half the threshold, which the fired level was not
            assert previous is not None and event.change < previous.change


# --- state, idempotence, bad input ---------------------------------------------------------


def test_evaluation_is_idempotent_and_catches_up_on_several_runs_in_order() -> None:
    values = noise(12)
    values[30:] += 8 * SIGMA
    series = [(f"run-{i}", float(v)) for i, v in enumerate(values)]
    state, events = evaluate_alerts(series[:29], BOTH)  # fresh: judges run-28 only
    assert events == [] and state.last_run == "run-28"
    state, events = evaluate_alerts(series[:40], BOTH, state)  # runs 29..39 in order
    assert summary(events) == [("fired", "run-30", "run-32")]
    again, events = evaluate_alerts(series[:40], BOTH, state)
    assert events == [] and again == state


def test_a_long_history_is_tested_over_its_newest_500_runs() -> None:
    values = noise(15, 610)
    values[:100] += 30 * SIGMA  # an old level, outside the tested window at run 602
    values[600:] += 8 * SIGMA
    series = list(enumerate(values))
    state, _ = evaluate_alerts(series[:598], CHANGEPOINT)
    state, events = evaluate_alerts(series[:605], CHANGEPOINT, state)
    (event,) = events
    assert (event.run_id, event.detected_at) == (600, 602)
    assert event.baseline == pytest.approx(np.median(values[103:600]))  # not the old level


def test_a_fresh_state_on_a_long_history_does_not_alert_on_an_old_change() -> None:
    values = noise(13, 80)
    values[20:] += 8 * SIGMA
    for rule in (BOTH, ZSCORE, CHANGEPOINT):
        state, events = evaluate_alerts(list(enumerate(values)), rule)
        assert events == [] and state.status == "ok"


def test_state_and_events_are_plain_json() -> None:
    values = noise(14, 40)
    values[30:] += 8 * SIGMA
    state, events = replay(values, BOTH, ids=[f"r{i}" for i in range(40)])
    assert AlertState.model_validate_json(state.model_dump_json()) == state
    assert state.model_dump()["since_run"] == "r30"
    dumped = events[0].model_dump(mode="json")
    assert dumped["kind"] == "fired" and dumped["run_id"] == "r30"
    assert AlertEvent.model_validate_json(events[0].model_dump_json()) == events[0]


def test_a_state_from_another_series_is_refused() -> None:
    state = AlertState(last_run="someone-else")
    with pytest.raises(MetricError, match="'someone-else' is not in the series"):
        evaluate_alerts([("a", 1.0), ("b", 2.0)], BOTH, state)


def test_the_rule_takes_the_descriptor_table_with_its_defaults() -> None:
    rule = AlertRule.model_validate({"metric": "elapsed", "worse": "higher"})
    assert (rule.method, rule.lookback, rule.z, rule.min_change) == ("both", 20, 3.0, 0.05)
    _, events = evaluate_alerts([(1, 1.0)], {"metric": "elapsed", "worse": "lower"}, {})
    assert events == []


@pytest.mark.parametrize(
    ("table", "field"),
    [
        ({"metric": "m", "worse": "up"}, "worse"),
        ({"metric": "m"}, "worse"),
        ({"metric": "m", "worse": "higher", "method": "ewma"}, "method"),
        ({"metric": "m", "worse": "higher", "lookback": 3}, "lookback"),
        ({"metric": "m", "worse": "higher", "z": 0}, "z"),
        ({"metric": "m", "worse": "higher", "min_change": -0.1}, "min_change"),
        ({"metric": "m", "worse": "higher", "threshold": 2}, "threshold"),
    ],
)
def test_a_bad_rule_is_refused_naming_the_field(table, field) -> None:
    with pytest.raises(ValidationError) as caught:
        AlertRule.model_validate(table)
    assert caught.value.errors()[0]["loc"] == (field,)


@pytest.mark.parametrize(
    ("series", "message"),
    [
        ([(1, 1.0), (1, 2.0)], "run 1 appears twice"),
        ([(1, 1.0), (2, "fast")], "value at index 1 is 'fast'"),
        ([(1, 1.0), (True, 2.0)], "series item 1 has run id True"),
        ([(1, 1.0), 2.0], "series item 1 is 2.0; expected \\(run_id, value\\)"),
    ],
)
def test_a_bad_series_is_refused_naming_the_item(series, message) -> None:
    with pytest.raises(MetricError, match=message):
        evaluate_alerts(series, BOTH)
