"""The handler check: the bundle's TorchServe-style handler must exist and import.

The import runs in a child process (the build environment's interpreter, cwd = the model
folder, its own process group, a timeout), so a handler that hangs, crashes or exits at import
cannot hurt the worker. With the builder's own interpreter the child is forked from the warm
interpreter (`evaluator.zygote`: torch already imported, no network) instead of started
afresh. The module must expose `handle(data, context)` or (TorchServe's rule) exactly one
class of its own with a `handle` method, usually with `initialize(context)`.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import re
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from builder.bundle import Bundle
from builder.processes import MAX_STEP_OUTPUT, TAIL_BYTES, BuildLog, ProcessResult, last_line
from core.errors import JobFailed
from evaluator.zygote import Zygote, ZygoteUnavailable, current_zygote

DEFAULT_HANDLER = "handler.py"
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Runs in the child: import the handler the way TorchServe does (model folder on sys.path,
# importlib.import_module), then describe its entry point. Written to a file so that whatever
# the handler prints cannot be mistaken for the answer.
_PROBE = r"""
import importlib, importlib.metadata, inspect, json, platform, sys, time, traceback
model_dir, module_name, function, out = sys.argv[1:5]
sys.path.insert(0, model_dir)
result = {"python": platform.python_version(), "executable": sys.executable}
started = time.monotonic()
try:
    module = importlib.import_module(module_name)
except BaseException as exc:
    traceback.print_exc()
    result["import_error"] = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    if isinstance(exc, SystemExit):
        result["import_error"] = f"it called sys.exit({exc.code!r}) at import time"

    result["missing_module"] = getattr(exc, "name", None) if isinstance(exc, ImportError) else None
    json.dump(result, open(out, "w"))
    sys.exit(3)
result["import_seconds"] = round(time.monotonic() - started, 3)
for dist in ("torch", "numpy"):
    try:
        result[dist] = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        result[dist] = None

def accepts_two(fn):
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return True
    params = list(sig.parameters.values())
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    return len(required) <= 2 <= len(positional)

if function:
    fn = getattr(module, function, None)
    if not callable(fn):
        result["problem"] = f"defines no function {function}() (named by the .mar's manifest)"
    elif not accepts_two(fn):
        result["problem"] = f"{function}() must accept (data, context)"
    else:
        result["entry"] = function
        result["initialize"] = callable(getattr(module, "initialize", None))
elif callable(getattr(module, "handle", None)) and not inspect.isclass(module.handle):
    if accepts_two(module.handle):
        result["entry"] = "handle"
        result["initialize"] = callable(getattr(module, "initialize", None))
    else:
        result["problem"] = "handle() must accept (data, context)"
else:
    classes = sorted(
        name for name, c in inspect.getmembers(module, inspect.isclass)
        if c.__module__ == module.__name__
    )
    if not classes:
        result["problem"] = (
            "defines neither a module-level handle(data, context) nor a handler class"
        )
    elif len(classes) > 1:
        result["problem"] = (
            f"defines {len(classes)} classes ({', '.join(classes)}) and no module-level "
            "handle(data, context); TorchServe needs exactly one class or a handle function"
        )
    else:
        cls = getattr(module, classes[0])
        if not callable(getattr(cls, "handle", None)):
            result["problem"] = (
                f"class {classes[0]} has no handle(data, context) method "
                "(subclass ts.torch_handler.base_handler.BaseHandler or define handle)"
            )
        else:
            result["entry"] = f"class {classes[0]}"
            result["initialize"] = callable(getattr(cls, "initialize", None))
json.dump(result, open(out, "w"))
"""


@dataclass(frozen=True)
class HandlerInfo:
    """What the check found: the handler as the manifest names it and its entry point."""

    handler: str  # as given to torch-model-archiver / named in the manifest: handler.py[:fn]
    file: str  # the handler's file in the model folder
    entry: str  # "handle", "<function>" or "class <Name>"
    initialize: bool
    python: str  # the interpreter's version
    executable: str
    torch: str | None
    import_seconds: float


def find_handler(bundle: Bundle) -> str:
    """The handler to check: the .mar manifest's `model.handler`, else `handler.py`."""
    if bundle.manifest is not None:
        handler = bundle.manifest["model"]["handler"]
        file = handler.split(":", 1)[0]
        if not file.endswith(".py"):
            file += ".py"
        if not _MODULE.match(file[:-3]):
            raise JobFailed(
                "build",
                f"the .mar's manifest names the handler {handler!r}; it must be a Python file "
                "at the archive's top level, such as handler.py",
            )
        if not (bundle.root / file).is_file():
            raise JobFailed(
                "build",
                f"the .mar's manifest names the handler {handler!r}, but the archive has no "
                f"{file}; built-in TorchServe handlers are not supported here, bundle your "
                "own handler.py",
            )
        return handler
    if not (bundle.root / DEFAULT_HANDLER).is_file():
        top = bundle.top_level_files()
        found = ", ".join(top[:10]) + (" …" if len(top) > 10 else "") if top else "no files"
        py = [f for f in top if f.endswith(".py")]
        hint = f"; rename your handler ({', '.join(py[:3])}?) to handler.py" if py else ""
        raise JobFailed(
            "build",
            "the bundle has no handler.py at its top level (found: "
            f"{found}){hint}. A model bundle needs a TorchServe-style handler.py exposing "
            "handle(data, context) or one handler class; `weighbridge init` writes one",
        )
    return DEFAULT_HANDLER


def check_handler(
    model_dir: Path,
    handler: str,
    *,
    python: str,
    timeout: float,
    log: BuildLog,
    zygote: Zygote | None = None,
) -> HandlerInfo:
    """Import the handler in a child process; JobFailed says what is wrong and how to fix it.

    The child is forked from the warm interpreter (`zygote`, else the worker's current one)
    when `python` is the builder's own interpreter, else started afresh."""
    file, _, function = handler.partition(":")
    if not file.endswith(".py"):
        file += ".py"
    module = file[:-3]
    if not _MODULE.match(module):
        raise JobFailed(
            "build",
            f"the handler file {file!r} is not an importable module name; name it handler.py",
        )
    log.step(f"importing {file} with {python} (timeout {timeout:g} s)")
    with tempfile.TemporaryDirectory(prefix="weighbridge-probe-") as tmp:
        out = Path(tmp) / "result.json"
        probe = Path(tmp) / "weighbridge_handler_probe.py"
        probe.write_text(_PROBE, encoding="utf-8")
        # -I: no PYTHON* variables, no user site; -B: leave no __pycache__ in the model folder.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tmp}
        started = time.monotonic()
        argv = [str(probe), str(model_dir), module, function, str(out)]
        zygote = zygote or current_zygote()
        run = None
        if zygote is not None and zygote.serves(python):
            run = _run_forked(zygote, argv, cwd=model_dir, env=env, timeout=timeout, log=log)
        if run is None:
            run = log.run(
                [python, "-I", "-B", "-u", *argv], cwd=model_dir, timeout=timeout, env=env
            )
        seconds = time.monotonic() - started
        result = _read_json(out)
    if run.timed_out:
        raise JobFailed(
            "build",
            f"{file} did not finish importing within {timeout:g} s; do slow work (loading "
            "weights, downloads) in initialize(context), not at import time",
            log_tail=run.tail,
        )
    if result is None:
        raise JobFailed(
            "build",
            f"importing {file} {_death(run.returncode)} before reporting back"
            + (f": {last_line(run.tail)}" if last_line(run.tail) else ""),
            log_tail=run.tail,
        )
    if "import_error" in result:
        error = last_line(result["import_error"]) or result["import_error"]
        raise JobFailed(
            "build",
            f"{file} failed to import: {error}{missing_module_hint(result)}",
            log_tail=run.tail,
        )
    if "problem" in result:
        raise JobFailed("build", f"{file} {result['problem']}", log_tail=run.tail)
    info = HandlerInfo(
        handler=handler,
        file=file,
        entry=result["entry"],
        initialize=bool(result.get("initialize")),
        python=result.get("python", ""),
        executable=result.get("executable", python),
        torch=result.get("torch"),
        import_seconds=float(result.get("import_seconds", seconds)),
    )
    log.write(f"handler entry point: {info.entry} (initialize: {info.initialize})\n")
    return info


def _run_forked(
    zygote: Zygote,
    argv: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    timeout: float,
    log: BuildLog,
) -> ProcessResult | None:
    """`BuildLog.run` for a child of the warm interpreter (torch already imported): the same
    log lines, output bounds, timeout and process-group kill. None: no warm interpreter now."""
    read_fd, write_fd = os.pipe()
    started = time.monotonic()
    try:
        child = zygote.spawn_script(argv, cwd=cwd, env=env, output=write_fd, ensure_seconds=timeout)
    except ZygoteUnavailable as exc:
        os.close(read_fd)
        log.write(f"({exc}; starting a fresh interpreter)\n")
        return None
    finally:
        os.close(write_fd)
    log.write(
        f"$ python -I -B -u {' '.join(argv)}  "
        f"[forked from the warm interpreter {zygote.pid} as {child.pid}]\n"
    )
    tail = bytearray()
    state = {"logged": 0, "dropped": 0}

    def pump() -> None:
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        with open(read_fd, "rb", buffering=0) as fh:
            while chunk := fh.read(65536):
                tail.extend(chunk)
                del tail[:-TAIL_BYTES]
                room = MAX_STEP_OUTPUT - state["logged"]
                if room > 0:
                    log.write(decoder.decode(chunk[:room]))
                    state["logged"] += min(room, len(chunk))
                state["dropped"] += max(0, len(chunk) - max(room, 0))

    reader = threading.Thread(target=pump, name="build-log", daemon=True)
    reader.start()
    timed_out = False
    try:
        returncode = child.wait(timeout)
        if returncode is None:
            timed_out = True
            child.kill_group()
            child.wait(10)
    except BaseException:
        child.kill_group()
        raise
    reader.join(timeout=2)
    if reader.is_alive():
        # Something the handler started still holds the pipe: end its whole group.
        with contextlib.suppress(OSError):
            os.killpg(child.pid, signal.SIGKILL)
        reader.join(timeout=3)
    seconds = time.monotonic() - started
    if state["dropped"]:
        log.write(f"\n[… {state['dropped']} more bytes of output not kept]\n")
    if timed_out:
        log.write(f"\n[killed after {timeout:g} s]\n")
    else:
        log.write(f"\n[exit {child.returncode} after {seconds:.1f} s]\n")
    return ProcessResult(
        returncode=None if timed_out else child.returncode,
        timed_out=timed_out,
        seconds=seconds,
        tail=bytes(tail).decode("utf-8", "replace"),
    )


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _death(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"crashed ({name})"
    return f"exited with status {returncode}"


def missing_module_hint(result: dict) -> str:
    """What to do about an import of a module the build's interpreter does not have."""
    missing = result.get("missing_module")
    if not missing:
        return ""
    top = missing.split(".")[0]
    if missing == "ts":
        return (
            " (the `ts` package is TorchServe's; add torchserve to requirements.txt, or "
            "write a module-level handle(data, context) that does not import it)"
        )
    if top == "ts":
        return (
            f" ({missing} is not in the TorchServe installed for this build: check the name, "
            "or pin the torchserve release that has it in requirements.txt)"
        )
    return f" (add the package that provides {top!r} to requirements.txt)"
