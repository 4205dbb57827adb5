"""Weighbridge's TorchServe handler for SageMaker batch transform (standard library only).

The docker builder puts this module in the image's copy of the model archive as its handler
and keeps the model's own handler beside it (named in weighbridge_serving.json). SageMaker
sends a request of JSON lines (`application/jsonlines`: one line, or many with MultiRecord),
each `{"uid": ..., <input fields>}`; TorchServe hands it over as one item whose body is those
bytes. This module loads the model's handler exactly as TorchServe would, gives it what the
model contract promises (one item per line, `{"body": {<input fields>}}`, nothing else) and
answers each request with one JSON line per input line, in order.
"""

import importlib
import inspect
import json
import os

SETTINGS = "weighbridge_serving.json"
_state = {}  # type: dict[str, object]


def _settings(context):
    model_dir = context.system_properties.get("model_dir") or os.path.dirname(__file__)
    with open(os.path.join(model_dir, SETTINGS), encoding="utf-8") as fh:
        return json.load(fh)


def _import(spec):
    """The model's handler module and entry name, as TorchServe's model_loader finds them."""
    module_name, _, function_name = spec.partition(":")
    if module_name.endswith(".py"):
        module_name = module_name[:-3]
    module_name = module_name.split("/")[-1]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        module = importlib.import_module(f"ts.torch_handler.{module_name}")
    return module, function_name or "handle"


def _load(spec, context):
    """Initialise the model's handler as TorchServe does; returns its `handle`."""
    module, function_name = _import(spec)
    if hasattr(module, function_name):
        entry = getattr(module, function_name)
        entry(None, context)
        return entry
    classes = [
        cls
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if cls.__module__ == module.__name__
    ]
    if len(classes) != 1:
        raise ValueError(f"{spec}: TorchServe needs a function or exactly one class")
    service = classes[0]()
    service.initialize(context)
    return service.handle


def _rows(item):
    body = item.get("body") if item.get("body") is not None else item.get("data")
    if isinstance(body, (bytes, bytearray)):
        body = body.decode("utf-8")
    if isinstance(body, str):
        return [json.loads(line) for line in body.splitlines() if line.strip()]
    return body if isinstance(body, list) else [body]


def handle(data, context):
    if data is None:
        settings = _settings(context)
        manifest = getattr(context, "manifest", None)
        if isinstance(manifest, dict) and isinstance(manifest.get("model"), dict):
            manifest["model"]["handler"] = settings["handler"]  # what the model's own saw
        _state["fields"] = list(settings["input_fields"])
        _state["entry"] = _load(settings["handler"], context)
        return None
    fields = _state["fields"]
    answers = []
    for index, item in enumerate(data):
        rows = _rows(item)
        # Only the task's input fields (without a task: all but the uid the runner added).
        inputs = [
            {"body": {k: v for k, v in row.items() if (k in fields if fields else k != "uid")}}
            for row in rows
        ]
        outputs = _state["entry"](inputs, context) if inputs else []
        if not isinstance(outputs, list) or len(outputs) != len(inputs):
            raise ValueError(
                f"the handler answered {len(inputs)} inputs with "
                f"{len(outputs) if isinstance(outputs, list) else type(outputs).__name__}; "
                "it must return a list with one answer per input"
            )
        answers.append("".join(json.dumps(o, separators=(",", ":")) + "\n" for o in outputs))
        if hasattr(context, "set_response_content_type"):
            context.set_response_content_type(index, "application/jsonlines")
    return answers
