"""Perturbed datasets in task configs: which delta they measure, and refusals naming the field."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from core.errors import InvalidConfig
from core.taskconfig import load_task_config, parse_task_config
from tests.conftest import ROOT

BASE: dict[str, Any] = {
    "name": "Toy",
    "input_fields": ["x"],
    "output_fields": {"label": "int"},
    "metrics": [{"name": "accuracy"}],
    "datasets": [
        {"name": "examples", "access": "public", "source": "generator:toy"},
        {"name": "test", "source": "generator:toy"},
        {"name": "test-typos", "source": "generator:toy", "perturbation_of": "test"},
    ],
}


def config(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    for key, value in changes.items():
        if key.startswith("dataset_"):
            data["datasets"][int(key.removeprefix("dataset_"))].update(value)
        else:
            data[key] = value
    return data


def test_a_perturbation_measures_robustness_unless_it_says_fairness() -> None:
    task = parse_task_config(config(), path="toy.toml")
    assert task.dataset("test-typos").delta_metric == "robustness"
    assert task.dataset("test").delta_metric is None
    task = parse_task_config(config(dataset_2={"perturbation": "fairness"}), path="toy.toml")
    assert task.dataset("test-typos").delta_metric == "fairness"


def test_digits_declares_its_noisy_set_as_a_robustness_perturbation() -> None:
    digits = load_task_config(ROOT / "task_configs" / "digits.toml")
    noisy = digits.dataset("heldout-noisy")
    assert noisy.perturbation_of == "heldout" and noisy.delta_metric == "robustness"
    # A leaderboard metric as in Dynaboard: measured on heldout-noisy only, the leaderboard
    # takes its (weighted) mean over the datasets that measure it.
    assert [m.name for m in digits.metrics] == ["accuracy", "macro_f1", "robustness"]


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"dataset_2": {"perturbation": "typos"}}, "datasets.2.perturbation", "robustness"),
        (
            {"dataset_1": {"perturbation": "fairness"}},
            "datasets.1.perturbation",
            "names no perturbation_of",
        ),
        ({"dataset_2": {"perturbation_of": "test-typos"}}, "datasets.2.perturbation_of", "itself"),
        (
            {"dataset_2": {"perturbation_of": "examples"}},
            "datasets.2.perturbation_of",
            "original must be hidden too",
        ),
        (
            {"metrics": [{"name": "robustness"}, {"name": "accuracy"}]},
            "metrics.0",
            "cannot be the primary metric",
        ),
        (
            {"metrics": [{"name": "accuracy"}, {"name": "fairness"}]},
            "metrics.1",
            'perturbation = "fairness"',
        ),
    ],
)
def test_bad_perturbations_are_refused_with_the_field(
    changes: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(InvalidConfig) as info:
        parse_task_config(config(**changes), path="toy.toml")
    assert info.value.field == field, str(info.value)
    assert words in str(info.value)


def test_delta_metrics_after_the_primary_are_accepted() -> None:
    metrics = [{"name": "accuracy"}, {"name": "robustness"}]
    task = parse_task_config(config(metrics=metrics), path="toy.toml")
    assert [m.name for m in task.metrics] == ["accuracy", "robustness"]
