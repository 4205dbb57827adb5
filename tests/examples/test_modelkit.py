"""The model kit: `init` scaffolds a handler that passes `test`; `test` reports what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from core import modelkit
from core.errors import WeighbridgeError
from core.taskconfig import TaskConfig, load_task_config
from tests.conftest import FIXTURES, ROOT


@pytest.fixture(scope="module")
def digits() -> TaskConfig:
    return load_task_config(ROOT / "task_configs" / "digits.toml")


async def test_init_scaffolds_a_handler_that_passes_the_test(
    tmp_path: Path, digits: TaskConfig
) -> None:
    folder = tmp_path / "my-model"
    written = modelkit.init_model_folder(folder, digits)
    assert {p.name for p in written} == {"handler.py", "README.md"}
    handler = (folder / "handler.py").read_text()
    assert '"pixels"' in handler and '"label": 0' in handler
    assert "weighbridge test" in (folder / "README.md").read_text()
    compile(handler, "handler.py", "exec")

    report = await modelkit.test_model_folder(folder, digits)
    assert report.ok, report.error
    assert report.passed == len(report.examples) == 20
    assert report.accuracy == pytest.approx(0.1)  # the placeholder answers 0 to everything


def test_init_refuses_to_overwrite(tmp_path: Path, digits: TaskConfig) -> None:
    modelkit.init_model_folder(tmp_path, digits)
    with pytest.raises(WeighbridgeError, match=r"already has handler\.py"):
        modelkit.init_model_folder(tmp_path, digits)
    assert modelkit.init_model_folder(tmp_path, digits, force=True)


async def test_a_trained_model_passes(trained: dict, digits: TaskConfig) -> None:
    report = await modelkit.test_model_folder(trained["digits-cnn"].folder, digits)
    assert report.ok, report.error
    assert report.accuracy is not None and report.accuracy >= 0.9
    assert report.to_dict()["failed"] == 0


async def test_wrong_answers_are_reported_per_example(tmp_path: Path) -> None:
    toy = load_task_config(FIXTURES / "task_configs" / "toy.toml")
    (tmp_path / "handler.py").write_text(
        "def handle(data, context):\n"
        "    if data is None:\n"
        "        return None\n"
        "    answers = [{'label': str(item['body']['x'] % 2)} for item in data]\n"
        "    answers[0] = {'parity': 1}\n"
        "    return answers\n"
    )
    report = await modelkit.test_model_folder(tmp_path, toy)
    assert not report.ok and report.error is None
    first, second = report.examples[0], report.examples[1]
    assert first.problems == ["missing field 'label' (int)"]
    assert second.problems and "expected int" in second.problems[0]


async def test_a_handler_returning_too_few_answers_fails_every_example(tmp_path: Path) -> None:
    toy = load_task_config(FIXTURES / "task_configs" / "toy.toml")
    (tmp_path / "handler.py").write_text(
        "def handle(data, context):\n    return None if data is None else [{'label': 0}]\n"
    )
    report = await modelkit.test_model_folder(tmp_path, toy)
    assert not report.ok
    assert len(report.examples) == 20
    assert all("returned 1 answers for a batch of" in e.problems[0] for e in report.examples)


async def test_a_crashing_handler_reports_the_reason(tmp_path: Path) -> None:
    toy = load_task_config(FIXTURES / "task_configs" / "toy.toml")
    (tmp_path / "handler.py").write_text("import not_a_module_anywhere\n")
    report = await modelkit.test_model_folder(tmp_path, toy)
    assert not report.ok and report.error_kind == "init"
    assert "not_a_module_anywhere" in report.error
    assert "not_a_module_anywhere" in report.log_tail


async def test_a_folder_without_handler(tmp_path: Path) -> None:
    toy = load_task_config(FIXTURES / "task_configs" / "toy.toml")
    report = await modelkit.test_model_folder(tmp_path, toy)
    assert not report.ok and "weighbridge init" in (report.error or "")
