"""End-to-end fixtures: the example models, trained once per session, and a fresh database on
each selected backend for the processes a test starts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import _create_server_database, _drop_server_database, selected_backends
from tests.examples.conftest import train_digits, trained

__all__ = ["stack_database", "train_digits", "trained"]


@pytest.fixture(params=selected_backends())
def stack_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database of each selected backend (Postgres and MariaDB skipped with
    the reason when unreachable): SQLite in the stack's home, else a fresh database on the
    server, dropped afterwards. The processes under test create the schema, as `up` does."""
    backend = request.param
    if backend == "sqlite":
        # The same file `up` would pick by default in the home `stack_env` gives it.
        yield f"sqlite+aiosqlite:///{tmp_path / 'home' / 'weighbridge.db'}"
        return
    url, admin = _create_server_database(backend)
    try:
        yield url
    finally:
        _drop_server_database(backend, url, admin)
