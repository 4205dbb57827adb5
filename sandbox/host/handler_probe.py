"""The build's handler check, run inside the sandbox (standard library only).

`python -I -B -u handler_probe.py MODEL_DIR MODULE FUNCTION OUT` imports the handler the way
TorchServe does (the model folder on sys.path, importlib.import_module), then describes its
entry point in the JSON file OUT. The answer goes to a file, not stdout, so that whatever the
handler prints cannot be mistaken for it (the builder still treats it as untrusted).
"""

import importlib
import importlib.metadata
import inspect
import json
import platform
import sys
import time
import traceback


def report(result: dict) -> None:
    with open(out, "w") as fh:
        json.dump(result, fh)


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
    report(result)
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
        name
        for name, c in inspect.getmembers(module, inspect.isclass)
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
report(result)
