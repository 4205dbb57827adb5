"""Task configs: the fixture task loads; a bad file is refused naming the file, field and reason."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

import metrics
from core.errors import InvalidConfig
from core.taskconfig import load_task_config, load_task_configs
from tests.conftest import FIXTURES

TOY = FIXTURES / "task_configs" / "toy.toml"

GOOD = """\
name = "Sentiment"
input_fields = ["text"]
output_fields = { label = "int" }
metrics = [{ name = "accuracy" }, { name = "macro_f1" }]

[[datasets]]
name = "examples"
access = "public"
source = "generator:toy"

[[datasets]]
name = "test"
source = "generator:toy"
"""


def write(tmp_path: Path, text: str, name: str = "sentiment.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def refusal(path: Path) -> InvalidConfig:
    with pytest.raises(InvalidConfig) as err:
        load_task_config(path)
    return err.value


def test_the_fixture_task_loads() -> None:
    config = load_task_config(TOY)
    assert config.slug == "toy"
    assert config.name == "Toy classification"
    assert [d.name for d in config.datasets] == ["examples", "test"]
    assert [d.access for d in config.datasets] == ["public", "hidden"]
    assert config.dataset("test").options == {"n": 100, "seed": 1}
    assert config.primary_metric.name == "accuracy"
    assert config.metric_weights() == {"accuracy": 4.0, "macro_f1": 1.0}
    assert config.eval.eval_server_id == "toy-fleet"
    assert config.eval.batch_size == 16
    assert config.limits.submissions_per_window == 3
    assert config.limits.max_upload_bytes == 1048576
    assert load_task_configs(TOY.parent)["toy"] == config


def test_a_good_config_written_by_a_user_loads(tmp_path: Path) -> None:
    config = load_task_config(write(tmp_path, GOOD))
    assert config.slug == "sentiment"
    assert config.eval.eval_server_id == "default"


def test_the_config_hash_changes_only_when_the_config_does(tmp_path: Path) -> None:
    a = load_task_config(write(tmp_path, GOOD, "a.toml")).model_copy(update={"slug": "x"})
    b = load_task_config(write(tmp_path, GOOD, "b.toml")).model_copy(update={"slug": "x"})
    assert a.sha256() == b.sha256()
    c = load_task_config(write(tmp_path, GOOD.replace("Sentiment", "Mood"), "c.toml"))
    assert c.model_copy(update={"slug": "x"}).sha256() != a.sha256()


@pytest.mark.parametrize(
    ("text", "field", "reason"),
    [
        pytest.param(
            'colour = "blue"\n' + GOOD,
            "colour",
            "unknown field; check the spelling against the task config reference",
            id="unknown-field",
        ),
        pytest.param(
            GOOD + "[eval]\nbatch_sise = 8\n",
            "eval.batch_sise",
            "unknown field",
            id="unknown-nested-field",
        ),
        pytest.param(
            GOOD.replace('name = "Sentiment"\n', ""),
            "name",
            "required field is missing",
            id="missing-field",
        ),
        pytest.param(
            GOOD.replace('source = "generator:toy"\n', "", 1),
            "datasets.0.source",
            "required field is missing",
            id="missing-dataset-field",
        ),
        pytest.param(
            GOOD.replace('name = "examples"', 'name = "test"'),
            "datasets",
            "names must be unique, repeated: ['test']",
            id="duplicate-dataset-names",
        ),
        pytest.param(
            GOOD.replace('name = "test"\n', 'name = "test"\naccess = "public"\n'),
            "datasets",
            "at least one dataset must be hidden",
            id="no-hidden-dataset",
        ),
        pytest.param(
            GOOD + '\n[[datasets]]\nname = "noisy"\nsource = "x"\nperturbation_of = "tset"\n',
            "datasets.2.perturbation_of",
            "dataset 'noisy' perturbs 'tset', which is not a dataset of this task",
            id="perturbation-of-nowhere",
        ),
        pytest.param(
            GOOD + "[leaderboard_weights]\naccuracy = 2\nbleu = 1\n",
            "leaderboard_weights.bleu",
            "not one of the task's metrics ['accuracy', 'macro_f1']",
            id="weight-for-unknown-metric",
        ),
        pytest.param(
            GOOD.replace('{ label = "int" }', '{ label = "integer" }'),
            "output_fields",
            "type of 'label' is 'integer'",
            id="bad-output-type",
        ),
        pytest.param(
            GOOD.replace('input_fields = ["text"]', 'input_fields = ["text", "label"]'),
            "input_fields",
            "the label field 'label' must not be an input",
            id="label-as-input",
        ),
        pytest.param(
            GOOD + "[eval]\nbatch_size = 0\n",
            "eval.batch_size",
            "greater than or equal to 1",
            id="out-of-range",
        ),
        pytest.param(
            GOOD + '[eval]\neval_server_id = "GPU Fleet"\n',
            "eval.eval_server_id",
            "should match pattern",
            id="bad-fleet-id",
        ),
    ],
)
def test_a_bad_config_is_refused_naming_file_field_and_reason(
    tmp_path: Path, text: str, field: str, reason: str
) -> None:
    path = write(tmp_path, text)
    err = refusal(path)
    assert err.path == str(path)
    assert err.field == field
    assert reason in err.reason
    # What a person reads (CLI, API): the file, the field and why, in one line.
    assert err.message == f"{path}: {field}: {err.reason}"
    assert err.to_dict()["error"]["field"] == field
    assert err.status == 422


def test_bad_toml_syntax_is_refused_with_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "[eval\nbatch_size = 2\n")
    err = refusal(path)
    assert err.path == str(path)
    assert err.field == "(syntax)"
    assert "not valid TOML" in err.reason
    assert "line 14" in err.reason


def test_a_bad_slug_from_the_file_name_is_refused(tmp_path: Path) -> None:
    err = refusal(write(tmp_path, GOOD, "My Task.toml"))
    assert err.field == "slug"
    assert "lower-case" in err.reason


def test_a_missing_file_or_folder_is_refused(tmp_path: Path) -> None:
    err = refusal(tmp_path / "nowhere.toml")
    assert (err.field, err.reason) == ("(file)", "cannot be read: No such file or directory")
    with pytest.raises(InvalidConfig, match="task config folder does not exist"):
        load_task_configs(tmp_path / "missing")


def test_loading_a_folder_stops_at_the_first_bad_file(tmp_path: Path) -> None:
    write(tmp_path, GOOD, "a.toml")
    bad = write(tmp_path, "colour = 1\n" + GOOD, "b.toml")
    with pytest.raises(InvalidConfig) as err:
        load_task_configs(tmp_path)
    assert err.value.path == str(bad)
    assert err.value.field == "colour"


def test_a_slug_used_by_two_files_is_refused(tmp_path: Path) -> None:
    write(tmp_path, 'slug = "same"\n' + GOOD, "a.toml")
    second = write(tmp_path, 'slug = "same"\n' + GOOD, "b.toml")
    with pytest.raises(InvalidConfig) as err:
        load_task_configs(tmp_path)
    assert (err.value.path, err.value.field) == (str(second), "slug")
    assert "already used" in err.value.reason


@pytest.mark.skipif(
    not hasattr(metrics, "is_registered"),
    reason="metrics.is_registered (the metric registry) is not written yet",
)
def test_an_unknown_metric_name_is_refused(tmp_path: Path) -> None:
    err = refusal(write(tmp_path, GOOD.replace('{ name = "macro_f1" }', '{ name = "acurracy" }')))
    assert err.field == "metrics"
    assert "acurracy" in err.reason
    assert "accuracy" in err.reason  # the registered names, so the user can fix the typo
