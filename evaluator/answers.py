"""A handler's answers checked against the task's output schema, with reasons a person can act on.

One object per input, in order, holding every declared output field with its declared type; a
JSON string holding such an object is accepted (TorchServe handlers often answer that way).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

SHOWN_ANSWER_CHARS = 300


def _short(value: Any, limit: int = SHOWN_ANSWER_CHARS) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, default=repr)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# Answers come out of json.loads, so exact types suffice (and `bool` is not an `int` here).
_ACCEPTED: dict[str, tuple[type, ...] | None] = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "bool": (bool,),
    "list": (list,),
    "dict": (dict,),
    "any": None,
}


def _type_ok(value: Any, kind: str) -> bool:
    accepted = _ACCEPTED[kind]
    return accepted is None or type(value) in accepted


class InvalidAnswer(Exception):
    """An answer that breaks the task's output schema; the message says which and how."""


def check_answers(
    outputs: list[Any], uids: Sequence[Any], output_fields: dict[str, str], *, where: str
) -> list[dict[str, Any]]:
    """Exactly one object per input holding every output field with its declared type."""
    if len(outputs) != len(uids):
        raise InvalidAnswer(
            f"{where}: the handler returned {len(outputs)} answers for {len(uids)} inputs; "
            "it must return exactly one answer per input, in the order received"
        )
    checks = [(name, _ACCEPTED[kind]) for name, kind in output_fields.items()]
    checked = []
    for index, answer in enumerate(outputs):
        if type(answer) is str:
            # TorchServe handlers often answer with a JSON string; accept an object in one.
            try:
                decoded = json.loads(answer)
            except ValueError:
                decoded = None
            answer = decoded if isinstance(decoded, dict) else answer
        if type(answer) is not dict:
            raise InvalidAnswer(_explain(answer, index, uids[index], output_fields, where))
        for name, accepted in checks:  # a plain loop: this runs for every answer
            if name not in answer or (accepted is not None and type(answer[name]) not in accepted):
                raise InvalidAnswer(_explain(answer, index, uids[index], output_fields, where))
        checked.append(answer)
    return checked


def _explain(answer: Any, index: int, uid: Any, output_fields: dict[str, str], where: str) -> str:
    expected = ", ".join(f"{name} ({kind})" for name, kind in output_fields.items())
    at = f"{where}: answer {index} (uid {uid!r})"
    if not isinstance(answer, dict):
        return (
            f"{at} is {type(answer).__name__}, not an object with the output fields "
            f"{expected}: {_short(answer)}"
        )
    for name, kind in output_fields.items():
        if name not in answer:
            return (
                f"{at} lacks the output field {name!r} ({kind}); the task expects {expected}; "
                f"the answer was {_short(answer)}"
            )
        if not _type_ok(answer[name], kind):
            return (
                f"{at}: the output field {name!r} must be {kind}, got "
                f"{type(answer[name]).__name__} {_short(answer[name], 60)}; "
                f"the answer was {_short(answer)}"
            )
    return f"{at} is not a valid answer: {_short(answer)}"
