"""task_configs/digits.toml is a valid task whose metrics exist in the metric library."""

from __future__ import annotations

from core.taskconfig import load_task_config, load_task_configs
from tests.conftest import ROOT


def test_digits_config_validates() -> None:
    config = load_task_config(ROOT / "task_configs" / "digits.toml")
    assert config.slug == "digits"
    assert config.input_fields == ["pixels"]
    assert config.output_fields == {"label": "int"}
    assert [m.name for m in config.metrics] == ["accuracy", "macro_f1", "robustness"]
    datasets = {d.name: d for d in config.datasets}
    assert datasets["examples"].access == "public"
    assert datasets["heldout"].access == datasets["heldout-noisy"].access == "hidden"
    assert datasets["heldout-noisy"].perturbation_of == "heldout"
    assert all(d.sha256 for d in config.datasets)
    assert config.eval.eval_server_id == "default"
    assert config.limits.submissions_per_window >= 2  # the demo uploads two models


def test_metrics_of_digits_are_registered() -> None:
    from metrics.registry import is_registered

    config = load_task_config(ROOT / "task_configs" / "digits.toml")
    assert all(is_registered(m.name) for m in config.metrics)


def test_the_task_config_folder_loads() -> None:
    assert "digits" in load_task_configs(ROOT / "task_configs")
