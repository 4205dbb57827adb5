"""The handler check: a missing, broken, hanging or shapeless handler fails with a clear reason."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from builder.bundle import unpacked_bundle
from builder.handlers import HandlerInfo, check_handler, find_handler
from builder.processes import BuildLog
from core.errors import JobFailed
from tests.builder.bundles import HANDLER, make_mar, write_model_folder


def check(tmp_path: Path, source: str, *, timeout: float = 20) -> HandlerInfo:
    folder = write_model_folder(tmp_path / "model", handler=source)
    log = BuildLog(tmp_path / "log")
    try:
        return check_handler(folder, "handler.py", python=sys.executable, timeout=timeout, log=log)
    finally:
        log.close()


def refused(tmp_path: Path, source: str, *, timeout: float = 20) -> JobFailed:
    with pytest.raises(JobFailed) as caught:
        check(tmp_path, source, timeout=timeout)
    assert caught.value.stage == "build"
    return caught.value


def test_function_handler_passes(tmp_path: Path) -> None:
    info = check(tmp_path, HANDLER)
    assert info.entry == "handle" and info.initialize is True
    assert info.file == "handler.py" and info.python.startswith("3.")


def test_class_handler_passes(tmp_path: Path) -> None:
    source = (
        "class MyHandler:\n"
        "    def initialize(self, context):\n        pass\n"
        "    def handle(self, data, context):\n        return data\n"
    )
    info = check(tmp_path, source)
    assert info.entry == "class MyHandler" and info.initialize is True


def test_missing_handler_names_what_was_found(tmp_path: Path) -> None:
    folder = write_model_folder(
        tmp_path / "m", handler=None, files={"my_handler.py": b"", "model.pt": b"w"}
    )
    with unpacked_bundle(folder) as bundle, pytest.raises(JobFailed) as caught:
        find_handler(bundle)
    reason = caught.value.reason
    assert "no handler.py" in reason and "model.pt, my_handler.py" in reason
    assert "rename your handler (my_handler.py?)" in reason


def test_mar_manifest_names_the_handler(tmp_path: Path) -> None:
    source = make_mar(
        tmp_path / "m.mar",
        handler="serve.py:predict",
        files={"serve.py": b"def predict(d, c): ..."},
    )
    with unpacked_bundle(source) as bundle:
        assert find_handler(bundle) == "serve.py:predict"


def test_mar_with_a_builtin_handler_is_refused(tmp_path: Path) -> None:
    source = make_mar(tmp_path / "m.mar", handler="image_classifier", files={"model.pt": b"w"})
    with unpacked_bundle(source) as bundle, pytest.raises(JobFailed) as caught:
        find_handler(bundle)
    assert "built-in TorchServe handlers are not supported" in caught.value.reason


def test_import_error_gives_the_error_and_a_hint(tmp_path: Path) -> None:
    error = refused(tmp_path, "import weighbridge_no_such_package\n")
    assert error.reason.startswith("handler.py failed to import: ModuleNotFoundError")
    assert "'weighbridge_no_such_package'" in error.reason and "requirements.txt" in error.reason
    assert "Traceback" in error.log_tail


def test_exception_at_import_is_reported(tmp_path: Path) -> None:
    error = refused(tmp_path, "raise RuntimeError('weights not found in /nowhere')\n")
    assert "RuntimeError: weights not found in /nowhere" in error.reason


def test_torchserve_base_handler_import_gets_a_specific_hint(tmp_path: Path) -> None:
    error = refused(tmp_path, "from ts.torch_handler.base_handler import BaseHandler\n")
    assert "the `ts` package is TorchServe's" in error.reason


def test_syntax_error_is_reported(tmp_path: Path) -> None:
    error = refused(tmp_path, "def handle(data, context)\n    return data\n")
    assert "SyntaxError" in error.reason


def test_handler_hanging_at_import_times_out(tmp_path: Path) -> None:
    started = time.monotonic()
    error = refused(tmp_path, "import time\ntime.sleep(600)\n", timeout=1.5)
    assert time.monotonic() - started < 15
    assert "did not finish importing within 1.5 s" in error.reason
    assert "initialize(context)" in error.reason


def test_handler_killing_its_process_is_reported(tmp_path: Path) -> None:
    error = refused(tmp_path, "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    assert "crashed (SIGKILL)" in error.reason


def test_handler_exiting_at_import_is_reported(tmp_path: Path) -> None:
    error = refused(tmp_path, "import sys\nsys.exit(0)\n")
    assert "failed to import: it called sys.exit(0) at import time" in error.reason
    error = refused(tmp_path, "import os\nprint('bye')\nos._exit(4)\n")
    assert "exited with status 4 before reporting back: bye" in error.reason


def test_module_without_an_entry_point_is_refused(tmp_path: Path) -> None:
    error = refused(tmp_path, "x = 1\n")
    assert "defines neither a module-level handle(data, context) nor a handler class" in (
        error.reason
    )


def test_two_classes_without_handle_function_are_refused(tmp_path: Path) -> None:
    error = refused(tmp_path, "class A:\n    pass\nclass B:\n    pass\n")
    assert "defines 2 classes (A, B)" in error.reason


def test_handle_with_the_wrong_signature_is_refused(tmp_path: Path) -> None:
    error = refused(tmp_path, "def handle(data):\n    return data\n")
    assert "handle() must accept (data, context)" in error.reason


def test_handler_output_goes_to_the_log(tmp_path: Path) -> None:
    check(tmp_path, "print('loading tokenizer…')\n" + HANDLER)
    assert "loading tokenizer…" in (tmp_path / "log").read_text()
