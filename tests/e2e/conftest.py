"""End-to-end fixtures: the example models, trained once per session."""

from tests.examples.conftest import train_digits, trained

__all__ = ["train_digits", "trained"]
