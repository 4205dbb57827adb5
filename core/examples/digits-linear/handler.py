"""A linear (multinomial logistic) digits classifier as a TorchServe-style handler.

TorchServe (and Weighbridge's local runner) import this module, call `handle(None, context)`
once (which calls `initialize(context)`: TorchServe never calls a module-level initialize
itself), then `handle(data, context)` with one item per example:
`{"body": {"pixels": [64 floats, 0..16]}}`. It answers `{"label": int}` per item.
"""

from __future__ import annotations

import json
import os

import torch
from torch import nn

WEIGHTS = "model.pt"

_model: nn.Module | None = None


def build_model() -> nn.Module:
    """The architecture; `examples/train_digits.py` trains this same module."""
    return nn.Linear(64, 10)


def initialize(context) -> None:
    global _model
    model_dir = context.system_properties.get("model_dir") or os.path.dirname(__file__)
    model = build_model()
    state = torch.load(os.path.join(model_dir, WEIGHTS), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    _model = model


def _body(item: dict) -> dict:
    body = item.get("body") if item.get("body") is not None else item.get("data")
    if isinstance(body, (bytes, bytearray)):
        body = body.decode("utf-8")
    if isinstance(body, str):
        body = json.loads(body)
    return body


def handle(data, context):
    if data is None:  # TorchServe initialises function handlers with handle(None, context)
        initialize(context)
        return None
    if _model is None:
        initialize(context)
    pixels = torch.tensor([_body(item)["pixels"] for item in data], dtype=torch.float32)
    with torch.inference_mode():
        predicted = _model(pixels / 16.0).argmax(dim=1)
    return [{"label": int(p)} for p in predicted]
