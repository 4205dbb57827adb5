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


def refers_to(fn, name: str):
    """Whether `fn` can reach `name`: its code (nested functions included), or a function of
    the model folder it names, transitively, names it (a call, an attribute, a getattr string).
    None when `fn` has no Python code to read."""
    fn = getattr(fn, "__func__", fn)
    code = getattr(fn, "__code__", None)
    if not inspect.iscode(code):
        return None
    todo = [(code, getattr(fn, "__globals__", {}))]
    seen = set()
    while todo and len(seen) < 5000:
        code, names = todo.pop()
        if code in seen:
            continue
        seen.add(code)
        if name in code.co_names or name in code.co_freevars:
            return True
        for const in code.co_consts:
            if const == name:
                return True
            if inspect.iscode(const):
                todo.append((const, names))
        for used in code.co_names:
            target = names.get(used) if isinstance(names, dict) else None
            target = getattr(target, "__func__", target)
            if inspect.isfunction(target) and (
                target.__globals__ is names or target.__code__.co_filename.startswith(model_dir)
            ):
                todo.append((target.__code__, target.__globals__))
    return False


NEVER_CALLED = (
    "defines a module-level initialize(context) that TorchServe never calls: TorchServe "
    "initialises a module handler by calling {entry}(None, context) once at load, and "
    "{entry} never calls initialize. Call initialize(context) from {entry} when data is None "
    "(as `weighbridge init`'s template does), or remove initialize"
)

# TorchServe's rules (ts/model_loader.py): the attribute named by the handler (`handle` unless
# the manifest says handler.py:function) is the entry point if the module has it, called once
# with (None, context) at load; otherwise the module's one class is instantiated with no
# arguments, and its initialize(context) then handle(data, context) are called.
entry_name = function or "handle"
if hasattr(module, entry_name):
    fn = getattr(module, entry_name)
    if not callable(fn) or inspect.isclass(fn):
        result["problem"] = (
            f"has a module-level {entry_name} that is not a function; TorchServe calls "
            f"{entry_name}(data, context)"
        )
    elif not accepts_two(fn):
        result["problem"] = f"{entry_name}() must accept (data, context)"
    else:
        result["entry"] = entry_name
        initialize = getattr(module, "initialize", None)
        result["initialize"] = False
        if callable(initialize) and not inspect.isclass(initialize) and initialize is not fn:
            reached = refers_to(fn, "initialize")
            if reached is False:
                result["problem"] = NEVER_CALLED.format(entry=entry_name)
            else:
                result["initialize"] = True
                if reached is None:
                    result["warning"] = (
                        "defines a module-level initialize(context); TorchServe never calls "
                        f"it (only {entry_name}(None, context) at load), and whether "
                        f"{entry_name} calls it could not be read: make sure it does"
                    )
else:
    classes = sorted(
        name
        for name, c in inspect.getmembers(module, inspect.isclass)
        if c.__module__ == module.__name__
    )
    if not classes:
        result["problem"] = (
            f"defines no function {function}() (named by the .mar's manifest) nor a handler class"
            if function
            else "defines neither a module-level handle(data, context) nor a handler class"
        )
    elif len(classes) > 1:
        result["problem"] = (
            f"defines {len(classes)} classes ({', '.join(classes)}) and no module-level "
            f"{entry_name}(data, context); TorchServe needs exactly one class or a "
            f"{entry_name} function"
        )
    else:
        cls = getattr(module, classes[0])
        try:
            required = [
                p
                for p in inspect.signature(cls).parameters.values()
                if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            ]
        except (TypeError, ValueError):
            required = []
        if not callable(getattr(cls, "handle", None)):
            result["problem"] = (
                f"class {classes[0]} has no handle(data, context) method "
                "(subclass ts.torch_handler.base_handler.BaseHandler or define handle)"
            )
        elif not callable(getattr(cls, "initialize", None)):
            result["problem"] = (
                f"class {classes[0]} has no initialize(context) method, which TorchServe "
                "calls at load (subclass ts.torch_handler.base_handler.BaseHandler or "
                "define initialize)"
            )
        elif required:
            result["problem"] = (
                f"class {classes[0]} needs arguments ({', '.join(p.name for p in required)}) "
                "to be created; TorchServe creates the handler class with none"
            )
        else:
            result["entry"] = f"class {classes[0]}"
            result["initialize"] = True
report(result)
