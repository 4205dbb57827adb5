"""The example digits models, trained once per test session (a few seconds on CPU)."""

from __future__ import annotations

from types import ModuleType

import pytest


@pytest.fixture(scope="session")
def train_digits() -> ModuleType:
    from core.examples import train_digits

    return train_digits


@pytest.fixture(scope="session")
def trained(train_digits: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return train_digits.train_models(tmp_path_factory.mktemp("digits-models"))
