"""The handler check: a missing, broken, hanging or shapeless handler fails with a clear reason."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.bundle import unpacked_bundle
from builder.handlers import HandlerInfo, check_handler, find_handler, missing_module_hint
from builder.processes import BuildLog
from core.errors import JobFailed
from sandbox.zygote import Zygote
from tests.builder.bundles import HANDLER, make_mar, write_model_folder
from tests.sandbox.workers import job_folder


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


def test_a_missing_torchserve_module_gets_a_specific_hint(tmp_path: Path) -> None:
    error = refused(tmp_path, "from ts.torch_handler.no_such_handler import Handler\n")
    assert "ts.torch_handler.no_such_handler is not in the TorchServe installed" in error.reason


def test_a_build_without_torchserve_is_told_to_add_it() -> None:
    # Weighbridge installs torchserve; a bundle's own requirements environment may not have it.
    hint = missing_module_hint({"missing_module": "ts"})
    assert "add torchserve to requirements.txt" in hint


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


# -- the same check forked from the warm interpreter -------------------------------------------


@pytest.fixture(scope="module")
def zygote() -> Iterator[Zygote]:
    """A warm interpreter owned by an event loop in its own thread, as the build worker's is
    (the check itself runs in a worker thread, not on the loop)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="zygote-loop", daemon=True)
    thread.start()
    warm = Zygote()
    try:
        assert asyncio.run_coroutine_threadsafe(warm.ensure(), loop).result(180)
        yield warm
    finally:
        asyncio.run_coroutine_threadsafe(warm.close(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def check_forked(tmp_path: Path, source: str, zygote: Zygote, *, timeout: float = 20) -> str:
    """The check through the zygote; returns the log (which shows that it forked). The model
    lies in the jobs folder, the only place the warm interpreter forks checks for."""
    folder = write_model_folder(job_folder(tmp_path) / "model", handler=source)
    log = BuildLog(tmp_path / "log")
    try:
        check_handler(
            folder, "handler.py", python=sys.executable, timeout=timeout, log=log, zygote=zygote
        )
    finally:
        log.close()
    text = (tmp_path / "log").read_text()
    assert f"[forked from the warm interpreter {zygote.pid} as " in text
    return text


FORKED_FAILURES = {
    "import_error": (
        "import weighbridge_no_such_package\n",
        "failed to import: ModuleNotFoundError: No module named 'weighbridge_no_such_package' "
        "(add the package that provides 'weighbridge_no_such_package' to requirements.txt)",
    ),
    "exception": (
        "raise RuntimeError('weights not found in /nowhere')\n",
        "RuntimeError: weights not found in /nowhere",
    ),
    "syntax": ("def handle(data, context)\n    return data\n", "SyntaxError"),
    "hangs": ("import time\ntime.sleep(600)\n", "did not finish importing within 1.5 s"),
    "sigkill": ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n", "crashed (SIGKILL)"),
    "sys_exit": ("import sys\nsys.exit(0)\n", "it called sys.exit(0) at import time"),
    "os_exit": (
        "import os\nprint('bye')\nos._exit(4)\n",
        "exited with status 4 before reporting back: bye",
    ),
    "no_entry": ("x = 1\n", "defines neither a module-level handle(data, context) nor"),
    "signature": ("def handle(data):\n    return data\n", "handle() must accept (data, context)"),
}


@pytest.mark.parametrize("name", sorted(FORKED_FAILURES))
def test_forked_check_fails_with_the_same_reasons(
    tmp_path: Path, zygote: Zygote, name: str
) -> None:
    source, reason = FORKED_FAILURES[name]
    started = time.monotonic()
    with pytest.raises(JobFailed) as caught:
        check_forked(tmp_path, source, zygote, timeout=1.5 if name == "hangs" else 20)
    assert reason in caught.value.reason
    assert time.monotonic() - started < 15
    # Whatever it did, the child is gone and the warm interpreter still serves.
    assert zygote.usable


def test_forked_check_finds_torch_already_imported(tmp_path: Path, zygote: Zygote) -> None:
    source = (
        "import sys\nprint('preloaded:', 'torch' in sys.modules)\n"
        "import torch\nprint('torch', torch.__version__)\n" + HANDLER
    )
    log = check_forked(tmp_path, source, zygote)
    assert "preloaded: True" in log  # what makes the check fast
    assert "torch 2." in log  # the handler's output went to the build log


def test_forked_check_has_no_network(tmp_path: Path, zygote: Zygote) -> None:
    source = (
        "lines = open('/proc/self/net/dev').read().splitlines()[2:]\n"
        "print('interfaces:', ','.join(sorted(l.split(':')[0].strip() for l in lines)))\n" + HANDLER
    )
    log = check_forked(tmp_path, source, zygote)
    assert "interfaces: lo\n" in log


def test_another_interpreter_is_checked_in_a_fresh_process(tmp_path: Path, zygote: Zygote) -> None:
    env = tmp_path / "env" / "bin"
    env.mkdir(parents=True)
    (env / "python").symlink_to(Path(sys.executable).resolve())  # like a requirements env
    folder = write_model_folder(tmp_path / "model", handler=HANDLER)
    log = BuildLog(tmp_path / "log")
    try:
        check_handler(
            folder, "handler.py", python=str(env / "python"), timeout=20, log=log, zygote=zygote
        )
    finally:
        log.close()
    text = (tmp_path / "log").read_text()
    assert "forked from the warm interpreter" not in text
    assert f"$ {env / 'python'} -I -B -u" in text


# -- TorchServe 0.12's loading rules (ts/model_loader.py) ----------------------------------------


def test_a_module_initialize_that_handle_never_calls_fails_the_build(tmp_path: Path) -> None:
    # TorchServe calls handle(None, context) at load and never a module-level initialize.
    source = (
        "_model = None\n"
        "def initialize(context):\n    global _model\n    _model = 1\n"
        "def handle(data, context):\n    return [{'label': _model} for item in data]\n"
    )
    error = refused(tmp_path, source)
    assert "initialize(context) that TorchServe never calls" in error.reason
    assert "handle(None, context)" in error.reason


def test_initialize_reached_through_a_helper_or_getattr_passes(tmp_path: Path) -> None:
    helper = (
        "def initialize(context):\n    pass\n"
        "def _ready(context):\n    initialize(context)\n"
        "def handle(data, context):\n    _ready(context)\n    return data and [1 for _ in data]\n"
    )
    assert check(tmp_path / "a", helper).initialize is True
    by_name = (
        "def initialize(context):\n    pass\n"
        "def handle(data, context):\n"
        "    if data is None:\n        return globals()['initialize'](context)\n"
        "    return [1 for _ in data]\n"
    )
    assert check(tmp_path / "b", by_name).initialize is True


def test_a_module_handler_without_initialize_passes(tmp_path: Path) -> None:
    info = check(tmp_path, "def handle(data, context):\n    return data and [1 for _ in data]\n")
    assert info.entry == "handle" and info.initialize is False


def test_a_handler_class_without_initialize_fails_as_on_torchserve(tmp_path: Path) -> None:
    source = "class H:\n    def handle(self, data, context):\n        return data\n"
    error = refused(tmp_path, source)
    assert "class H has no initialize(context) method" in error.reason


def test_a_handler_class_needing_arguments_fails(tmp_path: Path) -> None:
    source = (
        "class H:\n    def __init__(self, path):\n        self.path = path\n"
        "    def initialize(self, context):\n        pass\n"
        "    def handle(self, data, context):\n        return data\n"
    )
    assert "needs arguments (path)" in refused(tmp_path, source).reason


def test_two_classes_and_no_handle_fail_even_if_one_has_no_handle(tmp_path: Path) -> None:
    # TorchServe counts every class the module defines, not only those with handle().
    source = (
        "class Config:\n    pass\n"
        "class H:\n    def initialize(self, context):\n        pass\n"
        "    def handle(self, data, context):\n        return data\n"
    )
    assert "defines 2 classes (Config, H)" in refused(tmp_path, source).reason


def test_a_named_function_missing_falls_back_to_the_one_class(tmp_path: Path) -> None:
    # handler.py:predict with no predict(): TorchServe uses the module's one class.
    source = (
        "class H:\n    def initialize(self, context):\n        pass\n"
        "    def handle(self, data, context):\n        return data\n"
    )
    folder = write_model_folder(tmp_path / "model", handler=source)
    log = BuildLog(tmp_path / "log")
    try:
        info = check_handler(
            folder, "handler.py:predict", python=sys.executable, timeout=20, log=log
        )
    finally:
        log.close()
    assert info.entry == "class H"
