"""The local runner loads a handler exactly as TorchServe 0.12 does (ts/model_loader.py)."""

from __future__ import annotations

from pathlib import Path

from tests.sandbox.workers import answer, failure, make_sandbox


async def test_a_module_initialize_is_never_called_only_handle_none(tmp_path: Path) -> None:
    source = """
    calls = []

    def initialize(context):
        calls.append("initialize")

    ORIGINAL = initialize

    def handle(data, context):
        calls.append("handle" if data is not None else "handle(None)")
        if data is None:
            return None
        return [{"calls": list(calls), "restored": initialize is ORIGINAL}]
    """
    outputs = await answer(make_sandbox(tmp_path, source))
    assert outputs == [{"calls": ["handle(None)", "handle"], "restored": True}]
    log = (tmp_path / "log").read_text()
    assert "defines a module-level initialize(context), but TorchServe never calls it" in log


async def test_initialize_called_from_handle_none_runs_once(tmp_path: Path) -> None:
    source = """
    calls = []

    def initialize(context):
        calls.append("initialize")

    def handle(data, context):
        if data is None:
            initialize(context)
            return None
        return [{"calls": list(calls)}]
    """
    assert await answer(make_sandbox(tmp_path, source)) == [{"calls": ["initialize"]}]
    assert "TorchServe never calls it" not in (tmp_path / "log").read_text()


async def test_a_handler_relying_on_initialize_fails_with_the_reason(tmp_path: Path) -> None:
    # Works only where the runner calls initialize: TorchServe fails it at load.
    source = """
    _scale = None

    def initialize(context):
        global _scale
        _scale = 2

    def handle(data, context):
        return [{"y": item["body"]["x"] * _scale} for item in data]
    """
    error = await failure(make_sandbox(tmp_path, source))
    assert "NoneType" in error.reason
    assert "TorchServe never calls it" in error.reason
    assert "call initialize(context) from handle when data is None" in error.reason


async def test_a_handler_class_without_initialize_fails_as_on_torchserve(tmp_path: Path) -> None:
    source = """
    class Handler:
        def handle(self, data, context):
            return [{"y": 1} for item in data]
    """
    error = await failure(make_sandbox(tmp_path, source))
    assert "has no initialize(context) method" in error.reason


async def test_every_class_of_the_module_counts(tmp_path: Path) -> None:
    # TorchServe needs exactly one class when there is no handle function, whatever it holds.
    source = """
    class Settings:
        scale = 3

    class Handler:
        def initialize(self, context):
            pass

        def handle(self, data, context):
            return [{"y": Settings.scale} for item in data]
    """
    error = await failure(make_sandbox(tmp_path, source))
    assert "exactly one class" in error.reason and "Handler, Settings" in error.reason
