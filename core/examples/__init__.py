"""Worked example models shipped with Weighbridge: a handler and its trained weights, per task.

The weights are small (the CNN is about 150 KiB) and committed; `train_digits.py` beside this
file made them (`python -m core.examples.train_digits` makes them again, seeds fixed).
"""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent
# Example name -> the task it answers.
EXAMPLES = {
    "digits-cnn": "digits",
    "digits-linear": "digits",
    "qa-span": "qa",
    "sentiment-bow": "sentiment",
    "translation-lexicon": "translation",
}


def examples_for(task: str) -> list[str]:
    """The names of the examples made for `task` (sorted; empty when it has none)."""
    return sorted(name for name, slug in EXAMPLES.items() if slug == task)


def example_folder(name: str) -> Path:
    """The shipped folder of example `name` (KeyError when there is no such example)."""
    if name not in EXAMPLES:
        raise KeyError(name)
    return FOLDER / name
