"""What a command reports when it cannot do what was asked, and the exit code that says why."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer

# Exit codes (the public contract): 0 success, 1 the thing asked about failed, 2 usage error.
FAILED = 1
USAGE = 2

P = ParamSpec("P")
R = TypeVar("R")


class CliError(Exception):
    """A failure told to the user as one clean line (plus an optional hint), never a traceback."""

    def __init__(self, message: str, *, exit_code: int = FAILED, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.hint = hint


class UsageError(CliError):
    """The command was called wrongly (a missing file, not logged in): exit code 2."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, exit_code=USAGE, hint=hint)


def reports_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Wrap a command so a CliError prints on stderr and exits with its code."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except CliError as exc:
            from cli.render import print_error

            print_error(exc.message, hint=exc.hint)
            raise typer.Exit(exc.exit_code) from None

    return wrapper
