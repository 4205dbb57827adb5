"""Model folders for the evaluator tests: handler sources, a tiny torch model, .mar packing.

Each broken handler breaks the contract one way; `BROKEN` maps a name to its source and the
words its failure reason must contain. Handlers are written for the toy task (input `x`,
output `label: int`, the parity of x).
"""

from __future__ import annotations

import json
import textwrap
import zipfile
from pathlib import Path

GOOD = '''
"""Parity, answered with plain Python."""


def handle(data, context):
    if data is None:  # TorchServe initialises function handlers with handle(None, context)
        return None
    return [{"label": item["body"]["x"] % 2} for item in data]
'''

# A class handler (initialize / preprocess / inference / postprocess / handle) around a
# TorchScript module saved by the test: the same shape as TorchServe's BaseHandler.
TORCH_CLASS = """
import os

import torch


class ParityHandler:
    def __init__(self):
        self.model = None
        self.initialized = False

    def initialize(self, context):
        props = context.system_properties
        assert context.manifest["model"]["handler"] == "handler.py"
        path = os.path.join(props["model_dir"], context.manifest["model"]["serializedFile"])
        self.model = torch.jit.load(path)
        self.device = "cuda:0" if props.get("gpu_id") is not None else "cpu"
        print("loaded", path, "batch size", props["batch_size"])  # must not break the protocol
        self.initialized = True

    def preprocess(self, data):
        return torch.tensor([item["body"]["x"] for item in data], dtype=torch.int64)

    def inference(self, x):
        with torch.inference_mode():
            return self.model(x)

    def postprocess(self, y):
        return [{"label": int(v)} for v in y]

    def handle(self, data, context):
        return self.postprocess(self.inference(self.preprocess(data)))
"""

# TorchServe's own BaseHandler (the `ts` package): it loads the manifest's serializedFile as
# TorchScript in initialize() and runs preprocess -> inference -> postprocess in handle().
TS_BASE_HANDLER = """
import torch
from ts.torch_handler.base_handler import BaseHandler


class ParityHandler(BaseHandler):
    def preprocess(self, data):
        return torch.tensor([item["body"]["x"] for item in data], dtype=torch.int64)

    def postprocess(self, data):
        return [{"label": int(v)} for v in data]
"""

ECHO = """
import os


def initialize(context):
    print("initialize called; cwd", os.getcwd())


def handle(data, context):
    if data is None:  # TorchServe's load-time call: it never calls initialize itself
        initialize(context)
        return None
    return [
        {
            "label": 0,
            "body": item["body"],
            "keys": sorted(item),
            "header": context.get_request_header(0, "Content-Type"),
            "props": sorted(context.system_properties),
            "gpu_id": context.system_properties["gpu_id"],
            "model_name": context.model_name,
            "cwd": os.getcwd(),
            "home": os.environ.get("HOME"),
            "env": sorted(os.environ),
        }
        for item in data
    ]
"""

SLOW = """
import time


def handle(data, context):
    if data is None:
        return None
    time.sleep(0.25)
    return [{"label": item["body"]["x"] % 2} for item in data]
"""

_GUARDED = """
def handle(data, context):
    if data is None:
        return None
{body}
    return [{{"label": item["body"]["x"] % 2}} for item in data]
"""


def _guarded(body: str) -> str:
    return _GUARDED.format(body=textwrap.indent(textwrap.dedent(body).strip(), "    "))


# name -> (source, words the failure reason must contain)
BROKEN: dict[str, tuple[str, tuple[str, ...]]] = {
    "import_error": (
        "import weighbridge_no_such_package\n" + GOOD,
        ("failed to initialise", "ModuleNotFoundError", "weighbridge_no_such_package"),
    ),
    "raises": (
        _guarded(
            """
            if any(item["body"]["x"] > 900 for item in data):
                raise ValueError("x is too large for this model")
            """
        ),
        ("batch", "raised ValueError: x is too large for this model", "handler.py, line"),
    ),
    "hangs": (
        _guarded(
            """
            while True:
                pass
            """
        ),
        ("did not answer within 1.5 s", "eval.timeout_seconds"),
    ),
    "memory_hog": (
        _guarded(
            """
            hoard = []
            while True:
                hoard.append(bytearray(32 << 20))
            """
        ),
        ("memory", "limit of 200 MB", "eval.memory_mb"),
    ),
    "wrong_count": (
        _guarded("data = data[:-1]"),
        ("returned 15 answers for 16 inputs", "exactly one answer per input"),
    ),
    "wrong_field": (
        "def handle(data, context):\n"
        "    if data is None:\n"
        "        return None\n"
        '    return [{"lable": 1} for item in data]\n',
        ("lacks the output field 'label'", '{"lable": 1}'),
    ),
    "wrong_type": (
        "def handle(data, context):\n"
        "    if data is None:\n"
        "        return None\n"
        '    return [{"label": "odd"} for item in data]\n',
        ("'label' must be int, got str", '"odd"'),
    ),
    "not_json": (
        "def handle(data, context):\n"
        "    if data is None:\n"
        "        return None\n"
        '    return [{"label": {1, 2}} for item in data]\n',
        ("not JSON-serialisable", "set", "{'label': {1, 2}}"),
    ),
    "reads_labels": (
        _guarded(
            """
            open(LABELS).read()  # the evaluator's path: not in the sandbox at all
            """
        ),
        ("raised FileNotFoundError", "{labels}"),
    ),
    "opens_socket": (
        "import socket\n"
        + _guarded(
            """
            s = socket.socket()
            s.connect(("127.0.0.1", PORT))
            """
        ),
        ("tried to use the network", "evaluation runs without network access"),
    ),
    "exits": (
        _guarded(
            """
            import os
            os._exit(3)
            """
        ),
        ("worker process exited with code 3",),
    ),
}


def write_folder(folder: Path, source: str, **constants: object) -> Path:
    """A model folder: handler.py (with module constants such as LABELS prepended)."""
    folder.mkdir(parents=True, exist_ok=True)
    header = "".join(f"{name} = {value!r}\n" for name, value in constants.items())
    (folder / "handler.py").write_text(header + textwrap.dedent(source))
    return folder


def save_parity_model(folder: Path) -> str:
    """A TorchScript module computing x mod 2, saved as model.pt; returns the file name."""
    import torch

    class Parity(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.remainder(x, 2)

    torch.jit.script(Parity()).save(str(folder / "model.pt"))
    return "model.pt"


def pack_mar(folder: Path, target: Path, *, name: str = "model", serialized: str = "") -> Path:
    """A .mar as torch-model-archiver writes one: the folder's files plus MAR-INF/MANIFEST.json."""
    manifest = {
        "createdOn": "01/01/2026 00:00:00",
        "runtime": "python",
        "model": {
            "modelName": name,
            "serializedFile": serialized,
            "handler": "handler.py",
            "modelVersion": "1.0",
        },
        "archiverVersion": "0.12.0",
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as mar:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                mar.write(path, path.relative_to(folder).as_posix())
        mar.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest, indent=2))
    return target
