"""The build log and its subprocesses: core.processes, shared with the remote evaluator
workers (which build model environments too); kept here for the builder's imports."""

from core.processes import (
    MAX_STEP_OUTPUT,
    TAIL_BYTES,
    BuildLog,
    ProcessResult,
    last_line,
)

__all__ = ["MAX_STEP_OUTPUT", "TAIL_BYTES", "BuildLog", "ProcessResult", "last_line"]
