"""The example digits models, trained once per test session (a few seconds on CPU)."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

import pytest

from tests.conftest import ROOT


def load_train_script() -> ModuleType:
    path = ROOT / "examples" / "train_digits.py"
    spec = importlib.util.spec_from_file_location("train_digits_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def train_digits() -> ModuleType:
    return load_train_script()


@pytest.fixture(scope="session")
def trained(train_digits: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return train_digits.train_models(tmp_path_factory.mktemp("digits-models"))
