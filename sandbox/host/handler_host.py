"""The worker process that hosts a model's TorchServe-style handler (standard library only).

`sandbox.worker` starts this file with the build's interpreter, which may not have
Weighbridge installed: it must import nothing but the standard library. It talks to its
parent over its original stdin/stdout with length-prefixed JSON (a 4-byte big-endian length,
then UTF-8 JSON); the handler's own prints go to the log (stderr), never into the protocol.

    parent -> {"op": "init", ...}          child -> {"ok": true, ...} | {"error": ...}
    parent -> {"op": "batch", "id", "data"} child -> {"id", "outputs", "elapsed"} | {"id", "error"}
    parent -> {"op": "exit"}                child exits

A request's body starts with a format byte: b"J" (JSON) or b"M" (marshal, format 4, used for
batches: the parent is trusted, and marshal decodes three times faster). Answers, which the
handler shapes, are always JSON (the parent never unmarshals untrusted bytes).

Started as `handler_host.py --zygote ...` it is instead the warm interpreter of
`host_zygote.py`, which forks a fresh worker per dataset run (the same code below then runs
in the child).

It runs inside the sandbox (`sandbox/jail.py`), which already set the kernel's limits. Before
the handler is imported the host adds what lives in the process (host_guard.py): no core
files, a parent-death signal, and an audit hook that refuses network use, program starts and
signals to other processes with a reason the parent reports. The handler's `context` is
TorchServe's (host_context.py). Both are loaded by path, so they too must import nothing but
the standard library.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import json
import marshal
import os
import resource
import struct
import sys
import time
import traceback


def _load_sibling(name: str):
    """One of the host's own modules, loaded by path: the handler must not find them on
    sys.path (the host runs under `python -I`, so its folder is not there)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), name + ".py")
    spec = importlib.util.spec_from_file_location("weighbridge_" + name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


_guard = _load_sibling("host_guard")
_context = _load_sibling("host_context")
Guard, apply_limits, log = _guard.Guard, _guard.apply_limits, _guard.log
Context = _context.Context

HEADER = struct.Struct(">I")
MAX_MESSAGE = 1 << 30

# One encoder for every batch's answers (json.dumps with options builds one per call). No
# circularity check: a cyclic answer raises RecursionError instead, and not_json() then names
# it with json's own message.
ANSWER_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False, check_circular=False)

MEMORY_MARKERS = ("can't allocate memory", "not enough memory", "cannot allocate memory")


class Host:
    """Reads requests, runs the handler, writes answers; one process per dataset run."""

    def __init__(self, rfd: int, wfd: int, *, forked: bool = False) -> None:
        self.rfd = rfd
        self.wfd = wfd
        self.model_dir = ""
        # Forked from the warm interpreter, the process starts with its pages resident (and
        # shared): report the peak beyond them, as the parent's memory watch counts.
        self.maxrss_base = (
            (
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
            )
            if forked
            else (0, 0)
        )
        self.guard: Guard | None = None
        self.entry = None
        self.context: Context | None = None

    # -- framing -----------------------------------------------------------------------------

    def read_exact(self, n: int) -> bytes | None:
        chunks, left = [], n
        while left:
            chunk = os.read(self.rfd, min(left, 1 << 20))
            if not chunk:
                return None
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def read(self) -> dict | None:
        """One request: b"J" + JSON, or b"M" + marshal (batches; from the trusted parent)."""
        header = self.read_exact(HEADER.size)
        if header is None:
            return None
        (size,) = HEADER.unpack(header)
        if size > MAX_MESSAGE:
            raise ValueError(f"request of {size} bytes is larger than {MAX_MESSAGE}")
        body = self.read_exact(size)
        if body is None:
            return None
        if body[:1] == b"M":
            return marshal.loads(body[1:])
        return json.loads(body[1:])

    def write_raw(self, body: bytes) -> None:
        view = memoryview(HEADER.pack(len(body)) + body)
        while view:
            written = os.write(self.wfd, view)
            view = view[written:]

    def write(self, message: dict) -> None:
        self.write_raw(json.dumps(message, separators=(",", ":")).encode())

    # -- set-up ------------------------------------------------------------------------------

    def init(self, request: dict) -> dict:
        started = time.perf_counter()
        notes = apply_limits(request)
        model_dir = request["model_dir"]
        self.model_dir = model_dir
        workdir = request["workdir"]
        self.guard = Guard(
            workdir=workdir,
            allow_exec=bool(request.get("allow_exec")),
            private_network=bool(request.get("private_network")),
        )
        sys.addaudithook(self.guard)
        log("audit hook installed: no network, no programs, no signals to other processes")
        gpu = detect_gpu()
        sys.path.insert(0, model_dir)
        self.context = Context(
            model_name=request.get("model_name") or "model",
            model_dir=model_dir,
            manifest=request.get("manifest") or {},
            batch_size=int(request.get("batch_size") or 1),
            gpu=gpu,
            server_name=request.get("server_name") or "weighbridge",
        )
        try:
            self.entry = load_handler(request["handler"], model_dir, self.context)
        except BaseException as exc:
            return self.failure("init", exc)
        if self.guard.violations:
            return self.violation(None)
        return {
            "ok": True,
            "gpu_id": gpu,
            "init_seconds": time.perf_counter() - started,
            "versions": package_versions(),
            "gpu_name": gpu_name(gpu),
            "limits": notes,
        }

    # -- requests ----------------------------------------------------------------------------

    def batch(self, request: dict) -> bytes:
        batch_id = request.get("id")
        data = request["data"]
        assert self.context is not None and self.guard is not None
        self.context.start_batch(len(data), batch_id or 0)
        started = time.perf_counter()
        try:
            outputs = self.entry(data, self.context)
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            return self.encode(self.failure("handler", exc, batch_id=batch_id))
        elapsed = time.perf_counter() - started
        if self.guard.violations:
            return self.encode(self.violation(batch_id))
        if isinstance(outputs, tuple):
            outputs = list(outputs)
        if not isinstance(outputs, list):
            return self.encode(
                {
                    "id": batch_id,
                    "error": "not_list",
                    "message": f"the handler returned {type(outputs).__name__}, "
                    "not a list with one answer per input",
                    "answer": short_repr(outputs),
                }
            )
        try:
            payload = ANSWER_ENCODER.encode(outputs)
        except (TypeError, ValueError, RecursionError):
            return self.encode(not_json(outputs, batch_id))
        usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self.maxrss_base[0]
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss - self.maxrss_base[1]
        # Written out by hand (the id is the parent's int, a float's repr is JSON), with the
        # already-encoded answers spliced in rather than encoded twice.
        return (
            f'{{"id":{int(batch_id or 0)},"elapsed":{elapsed!r},'
            f'"maxrss_kb":{max(0, usage) + max(0, children)},"outputs":{payload}}}'
        ).encode()

    @staticmethod
    def encode(message: dict) -> bytes:
        return json.dumps(message, separators=(",", ":"), default=repr).encode()

    def failure(self, stage: str, exc: BaseException, *, batch_id=None) -> dict:
        if self.guard is not None and self.guard.violations:
            return self.violation(batch_id)
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        log(f"{'initialisation' if stage == 'init' else f'batch {batch_id}'} failed:\n{text}")
        kind = stage
        message = f"{type(exc).__name__}: {exc}".strip()
        if isinstance(exc, SyntaxError) and exc.msg:
            message = f"{type(exc).__name__}: {exc.msg}"  # its place is in "where"
        hint = getattr(exc, "weighbridge_hint", "")
        if hint and isinstance(hint, str):
            message = f"{message.splitlines()[0] if message else type(exc).__name__} ({hint})"
            log(f"note: {hint}")
        if isinstance(exc, MemoryError) or any(m in str(exc).lower() for m in MEMORY_MARKERS):
            kind = "memory"
        return {
            "id": batch_id,
            "error": kind,
            "message": message.splitlines()[0] if message else type(exc).__name__,
            "where": innermost_frame(exc, self.model_dir),
            "traceback": text[-6000:],
        }

    def violation(self, batch_id) -> dict:
        assert self.guard is not None
        first = self.guard.violations[0]
        log(f"sandbox violation: {first['kind']}: {first['detail']}")
        return {"id": batch_id, "error": "violation", "kind": first["kind"], **first}

    def serve(self) -> int:
        # One thread on purpose: a reader thread decoding ahead was measured slower here (the
        # GIL hand-offs cost more than the overlap won on a 2-vCPU machine).
        while True:
            request = self.read()
            if request is None or request.get("op") == "exit":
                return 0
            op = request.get("op")
            if op == "init":
                self.write(self.init(request))
            elif op == "batch":
                self.write_raw(self.batch(request))
            else:
                self.write({"id": None, "error": "protocol", "message": f"unknown op {op!r}"})
                return 1


# -- helpers -----------------------------------------------------------------------------------


def short_repr(value: object, limit: int = 300) -> str:
    try:
        text = repr(value)
    except Exception as exc:
        text = f"<unprintable {type(value).__name__}: {exc}>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def not_json(outputs: list, batch_id) -> dict:
    for index, answer in enumerate(outputs):
        try:
            json.dumps(answer, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            return {
                "id": batch_id,
                "error": "not_json",
                "index": index,
                "message": f"{type(exc).__name__}: {exc}",
                "answer": short_repr(answer),
            }
    return {"id": batch_id, "error": "not_json", "index": None, "message": "", "answer": ""}


def innermost_frame(exc: BaseException, model_dir: str = "") -> str:
    """`file, line N` of the user's code nearest the error: the innermost frame in the model
    folder (named relative to it), else the innermost frame; a syntax error's own place."""
    prefix = model_dir.rstrip("/") + "/" if model_dir else ""

    def shown(filename: str) -> str:
        if prefix and filename.startswith(prefix):
            return filename[len(prefix) :]
        return os.path.basename(filename)

    if isinstance(exc, SyntaxError) and exc.filename and exc.lineno:
        return f"{shown(exc.filename)}, line {exc.lineno}"
    tb = traceback.extract_tb(exc.__traceback__)
    if not tb:
        return ""
    ours = [f for f in tb if prefix and f.filename.startswith(prefix)]
    frame = (ours or tb)[-1]
    return f"{shown(frame.filename)}, line {frame.lineno}"


def detect_gpu() -> int | None:
    """0 when torch sees CUDA in this process (TorchServe's gpu_id), else None."""
    if not any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg")):
        return None  # no NVIDIA device: do not pay for importing torch just to ask
    if importlib.util.find_spec("torch") is None:
        return None
    try:
        import torch

        return 0 if torch.cuda.is_available() else None
    except Exception as exc:
        log(f"could not ask torch for a GPU: {exc}")
        return None


def gpu_name(gpu: int | None) -> str | None:
    if gpu is None:
        return None
    try:
        import torch

        return torch.cuda.get_device_name(gpu)
    except Exception:
        return None


def package_versions() -> dict:
    """Versions installed in this interpreter (read from metadata: nothing is imported)."""
    from importlib import metadata

    versions: dict = {"python": sys.version.split()[0]}
    for name in ("torch", "numpy"):
        module = sys.modules.get(name)
        version = getattr(module, "__version__", None) if module else None
        if version is None:
            try:
                version = metadata.version(name)
            except metadata.PackageNotFoundError:
                version = None
        versions[name] = str(version) if version is not None else None
    return versions


def _classes_of(module) -> list[type]:
    """The classes the module defines itself (TorchServe's list_classes_from_module)."""
    return [
        cls
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if cls.__module__ == module.__name__
    ]


UNCALLED_INITIALIZE = (
    "{file} defines a module-level initialize(context), but TorchServe never calls it: it "
    "initialises a module handler with {entry}(None, context) only, and that call did not "
    "run initialize; call initialize(context) from {entry} when data is None"
)


def _import_handler(spec: str):
    """The handler's module and function name, resolved as TorchServe's model_loader does:
    `file.py[:function]` from the model folder (any folders in the name dropped), else one of
    TorchServe's built-in handlers (ts.torch_handler.<name>) when `ts` is installed."""
    module_name, _, function_name = spec.partition(":")
    if module_name.endswith(".py"):
        module_name = module_name[:-3]
    module_name = module_name.split("/")[-1]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        try:  # TorchServe's built-in handlers (image_classifier, ...) when ts is installed
            module = importlib.import_module(f"ts.torch_handler.{module_name}")
        except ModuleNotFoundError:
            raise ModuleNotFoundError(
                f"handler {spec!r}: no {module_name}.py in the model archive, and it is not "
                "one of TorchServe's built-in handlers",
                name=module_name,
            ) from None
    return module, function_name or "handle"


def load_handler(spec: str, model_dir: str, context: Context):
    """Load and initialise the handler exactly as TorchServe 0.12 does (ts/model_loader.py).

    When the module has an attribute named by the spec (`handle` by default), that is the
    entry point and TorchServe initialises it with `entry(None, context)`, once; it never
    calls a module-level `initialize(context)`, so neither do we. Otherwise the module must
    define exactly one class (of any kind); it is instantiated with no arguments, must have
    `handle`, and its `initialize(context)` is called. Returns the per-request callable,
    `entry(data, context)`.
    """
    module, function_name = _import_handler(spec)
    if hasattr(module, function_name):
        entry = getattr(module, function_name)
        watch = _InitializeWatch(module, entry)
        try:
            entry(None, context)
        except BaseException as exc:
            hint = watch.finish()
            if hint:
                _attach_hint(exc, hint)
            raise
        hint = watch.finish()
        if hint:
            log(f"note: {hint}")
        return entry
    classes = _classes_of(module)
    if len(classes) != 1:
        found = ", ".join(c.__name__ for c in classes) or "none"
        raise ValueError(
            f"{spec}: TorchServe needs a function {function_name!r} or exactly one class in "
            f"the handler module; found classes: {found}"
        )
    service = classes[0]()
    if not hasattr(service, "handle"):
        raise ValueError(f"{spec}: class {classes[0].__name__} has no handle method")
    if not hasattr(service, "initialize"):
        raise AttributeError(
            f"{spec}: class {classes[0].__name__} has no initialize(context) method, which "
            "TorchServe calls at load (subclass ts.torch_handler.base_handler.BaseHandler or "
            "define it)"
        )
    entry, initialize = service.handle, service.initialize
    initialize(context)
    return entry


class _InitializeWatch:
    """Notes whether a module handler's own `initialize` ran during `handle(None, context)`,
    to say why a handler that relied on the local runner calling it fails (as on TorchServe).
    The module attribute is wrapped only for that call, then restored."""

    def __init__(self, module, entry) -> None:
        self.module = module
        self.entry = entry
        self.original = getattr(module, "initialize", None)
        self.called = False
        self.active = (
            callable(self.original)
            and not inspect.isclass(self.original)
            and self.original is not entry
        )
        if self.active:
            original = self.original

            def initialize(*args, **kwargs):
                self.called = True
                return original(*args, **kwargs)

            try:
                initialize.__wrapped__ = original  # type: ignore[attr-defined]
                initialize.__name__ = getattr(original, "__name__", "initialize")
                initialize.__doc__ = getattr(original, "__doc__", None)
                module.initialize = initialize
            except Exception:
                self.active = False

    def finish(self) -> str:
        """Restore the attribute; the hint when initialize was defined and never called."""
        if not self.active:
            return ""
        self.active = False
        if getattr(self.module, "initialize", None) is not self.original:
            with contextlib.suppress(Exception):
                self.module.initialize = self.original
        if self.called:
            return ""
        file = os.path.basename(getattr(self.module, "__file__", None) or "handler.py")
        entry = getattr(self.entry, "__name__", "handle")
        return UNCALLED_INITIALIZE.format(file=file, entry=entry)


def _attach_hint(exc: BaseException, hint: str) -> None:
    with contextlib.suppress(Exception):
        exc.weighbridge_hint = hint  # type: ignore[attr-defined]


def main() -> int:
    if sys.argv[1:2] == ["--zygote"]:
        # The warm interpreter: preloads torch/numpy, then forks one serve_stdio() per worker.
        return _load_sibling("host_zygote").serve(
            sys.argv[2:], lambda: serve_stdio(forked=True), _load_sibling("confine")
        )
    return serve_stdio()


def serve_stdio(*, forked: bool = False) -> int:
    """Serve the parent over stdin/stdout (in an exec'd worker, or a child of the zygote)."""
    # Keep the protocol on private descriptors; the handler's stdout and stderr go to the log.
    rfd = os.dup(0)
    wfd = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)  # sys.stdout writes to fd 1 (unbuffered: the parent passes -u)
    sys.stdin = open(os.devnull)  # noqa: SIM115 - lives as long as the process
    host = Host(rfd, wfd, forked=forked)
    try:
        return host.serve()
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
