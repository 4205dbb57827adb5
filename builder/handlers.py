"""The handler check: the bundle's TorchServe-style handler must exist and import.

The import runs inside the sandbox (`sandbox.jail`: no network, its own uid, seccomp, limits,
the model read-only at /model, a scratch tmpfs), with a timeout, so a handler that hangs,
crashes, exits, allocates without end or attacks the machine at import time cannot hurt the
builder or see anything but its own files. With the builder's own interpreter the child is
forked from the warm interpreter (`sandbox.zygote`: torch already imported) and confines
itself the same way. The module must expose `handle(data, context)` or (TorchServe's rule)
exactly one class of its own with `initialize(context)` and `handle(data, context)`.
TorchServe initialises a module handler with `handle(None, context)` and never calls a
module-level `initialize(context)`: a handler whose `handle` never reaches the `initialize` it
defines fails the build (it would fail, or silently skip its set-up, on TorchServe).
"""

from __future__ import annotations

import codecs
import json
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from builder.bundle import Bundle
from builder.processes import MAX_STEP_OUTPUT, TAIL_BYTES, BuildLog, ProcessResult, last_line
from core.errors import JobFailed
from sandbox.jail import Cell, Jail, Job, Limits, current_jail, host_file, signalled
from sandbox.jobs import jobs_root as sandbox_jobs_root
from sandbox.rootfs import MODEL, OUT, Mount, readable_view
from sandbox.zygote import Zygote, ZygoteUnavailable, current_zygote

DEFAULT_HANDLER = "handler.py"
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


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
    warnings: tuple[str, ...] = ()  # said in the build log; the build goes on


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


CHECK_LIMITS = Limits(memory_mb=4096, pids=128, file_mb=16, scratch_mb=256)
RESULT_BYTES = 1 << 20  # the probe's answer is a few hundred bytes; more is not read


def check_handler(
    model_dir: Path,
    handler: str,
    *,
    python: str,
    timeout: float,
    log: BuildLog,
    zygote: Zygote | None = None,
    jail: Jail | None = None,
) -> HandlerInfo:
    """Import the handler in a sandboxed child; JobFailed says what is wrong and how to fix it.

    The child is forked from the warm interpreter (`zygote`, else the worker's current one)
    when `python` is the builder's own interpreter and the model lies in the jobs folder,
    else a fresh interpreter is started in the sandbox."""
    file, _, function = handler.partition(":")
    if not file.endswith(".py"):
        file += ".py"
    module = file[:-3]
    if not _MODULE.match(module):
        raise JobFailed(
            "build",
            f"the handler file {file!r} is not an importable module name; name it handler.py",
        )
    log.step(f"importing {file} with {python} in the sandbox (timeout {timeout:g} s)")
    jail = jail or current_jail()
    copy = None
    if jail.isolated:
        model_dir, copy = readable_view(model_dir)
    try:
        return _check_in_sandbox(
            model_dir,
            handler,
            file,
            module,
            function,
            python=python,
            timeout=timeout,
            log=log,
            zygote=zygote,
            jail=jail,
        )
    finally:
        if copy is not None:
            shutil.rmtree(copy, ignore_errors=True)


def _check_in_sandbox(
    model_dir: Path,
    handler: str,
    file: str,
    module: str,
    function: str,
    *,
    python: str,
    timeout: float,
    log: BuildLog,
    zygote: Zygote | None,
    jail: Jail,
) -> HandlerInfo:
    with tempfile.TemporaryDirectory(prefix="probe-", dir=sandbox_jobs_root()) as tmp:
        out = Path(tmp) / "out"
        out.mkdir()
        job = Job(
            python=python,
            mounts=(Mount(str(model_dir), MODEL), Mount(str(out), OUT, writable=True)),
            limits=CHECK_LIMITS,
        )
        with jail.cell(job) as cell:
            os.chown(out, cell.uid, cell.gid)
            started = time.monotonic()
            inside = jail.isolated
            argv = [
                host_file("handler_probe.py", jail),
                MODEL if inside else str(model_dir),
                module,
                function,
                f"{OUT}/result.json" if inside else str(out / "result.json"),
            ]
            zygote = zygote or current_zygote()
            run = None
            if zygote is not None and cell.slot is not None and zygote.serves(python, model_dir):
                run = _run_forked(
                    zygote, argv, cell=cell, model=model_dir, out=out, timeout=timeout, log=log
                )
            if run is None:
                run = log.run(
                    cell.command([python, "-I", "-B", "-u", *argv]),
                    cwd=model_dir if not inside else Path(tmp),
                    timeout=timeout,
                    env=cell.env() if not inside else {},
                    pass_fds=cell.pass_fds,
                    preexec_fn=cell.preexec,
                    shown=[python, "-I", "-B", "-u", *argv],
                )
            seconds = time.monotonic() - started
            killed_for_memory = cell.oom_killed()
        result = _read_json(out / "result.json")
    if run.timed_out:
        raise JobFailed(
            "build",
            f"{file} did not finish importing within {timeout:g} s; do slow work (loading "
            "weights, downloads) in initialize(context) (a module handler: in handle(None, "
            "context)), not at import time",
            log_tail=run.tail,
        )
    if killed_for_memory:
        raise JobFailed(
            "build",
            f"importing {file} used more than {CHECK_LIMITS.memory_mb} MB of memory and was "
            "stopped; load weights in initialize(context) (a module handler: in handle(None, "
            "context)), not at import time",
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
        error = last_line(str(result["import_error"])) or str(result["import_error"])
        raise JobFailed(
            "build",
            f"{file} failed to import: {error}{missing_module_hint(result)}",
            log_tail=run.tail,
        )
    if "problem" in result:
        raise JobFailed("build", f"{file} {result['problem']}", log_tail=run.tail)
    if not isinstance(result.get("entry"), str):
        raise JobFailed("build", f"importing {file} gave an unreadable report", log_tail=run.tail)
    info = HandlerInfo(
        handler=handler,
        file=file,
        entry=result["entry"],
        initialize=bool(result.get("initialize")),
        python=str(result.get("python", "")),
        executable=str(result.get("executable", python)),
        torch=result.get("torch") if isinstance(result.get("torch"), str) else None,
        import_seconds=_number(result.get("import_seconds"), seconds),
        warnings=(f"{file} {result['warning']}",) if isinstance(result.get("warning"), str) else (),
    )
    log.write(f"handler entry point: {info.entry} (initialize: {info.initialize})\n")
    for warning in info.warnings:
        log.write(f"warning: {warning}\n")
    return info


def _number(value: object, default: float) -> float:
    return float(value) if isinstance(value, int | float) else default


def _run_forked(
    zygote: Zygote,
    argv: list[str],
    *,
    cell: Cell,
    model: Path,
    out: Path,
    timeout: float,
    log: BuildLog,
) -> ProcessResult | None:
    """`BuildLog.run` for a confined child of the warm interpreter (torch already imported):
    the same log lines, output bounds, timeout and kill. None: no warm interpreter now."""
    read_fd, write_fd = os.pipe()
    started = time.monotonic()
    try:
        child = zygote.spawn_script(
            argv,
            cell=cell,
            model=model,
            out=out,
            env=cell.env(),
            output=write_fd,
            ensure_seconds=timeout,
        )
    except ZygoteUnavailable as exc:
        os.close(read_fd)
        log.write(f"({exc}; starting a fresh interpreter)\n")
        return None
    finally:
        os.close(write_fd)
    log.write(
        f"$ python -I -B -u {' '.join(argv)}  "
        f"[forked from the warm interpreter {zygote.pid} as {child.pid}, uid {cell.uid}]\n"
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
        # Something the handler started still holds the pipe: end the cell's processes.
        cell.close()
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
    """The probe's report (written by the sandboxed child: untrusted, and read bounded)."""
    try:
        with path.open("rb") as fh:
            data = json.loads(fh.read(RESULT_BYTES).decode("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _death(returncode: int | None) -> str:
    returncode = signalled(returncode)
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
