"""Runners: where a built model meets a dataset. One protocol, chosen by WEIGHBRIDGE_RUNNER.

A runner takes a built model and one dataset's inputs and gives back the answers, the log and
the usage (`DatasetRun`); scoring, storing and ranking stay with the evaluation around it. The
local runner runs the handler on this machine in the sandbox (`evaluator.runner.run_dataset`);
the SageMaker runner runs it as a batch transform job (`evaluator.sagemaker_runner`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from core.errors import WeighbridgeError
from evaluator.runner import DatasetRun, DatasetSpec, ModelSpec, StopCheck, run_dataset

if TYPE_CHECKING:
    from core.settings import Settings
    from core.storage import Storage
    from core.taskconfig import TaskConfig


class Runner(Protocol):
    """Runs a built model on one dataset."""

    @property
    def name(self) -> str:
        """The name receipts and hwinfo carry (WEIGHBRIDGE_RUNNER's value)."""

    @property
    def describes(self) -> str:
        """What the hardware information written beside the results describes."""

    async def run_dataset(
        self,
        storage: Storage,
        *,
        submission_id: str,
        task: TaskConfig,
        dataset: DatasetSpec,
        model: ModelSpec,
        scratch: Path,
        should_stop: StopCheck | None = None,
    ) -> DatasetRun: ...


@dataclass(frozen=True)
class LocalRunner:
    """The handler runs on this machine, in sandboxed worker processes, batch by batch."""

    name: str = "local"
    describes: str = "the evaluator machine the handler ran on"

    async def run_dataset(
        self,
        storage: Storage,
        *,
        submission_id: str,
        task: TaskConfig,
        dataset: DatasetSpec,
        model: ModelSpec,
        scratch: Path,
        should_stop: StopCheck | None = None,
    ) -> DatasetRun:
        return await run_dataset(
            storage,
            submission_id=submission_id,
            task=task,
            dataset=dataset,
            model=model,
            scratch=scratch,
            should_stop=should_stop,
        )


def _sagemaker(settings: Settings) -> Runner:
    from evaluator.sagemaker_runner import SageMakerRunner  # aioboto3 only where it is used

    return SageMakerRunner.from_settings(settings)


def _remote(settings: Settings) -> Runner:
    from evaluator.remote_runner import RemoteRunner  # remote workers run each dataset

    return RemoteRunner.from_settings(settings)


RUNNERS: dict[str, Callable[[Settings], Runner]] = {
    "local": lambda settings: LocalRunner(),
    "remote": _remote,
    "sagemaker": _sagemaker,
}


def runner_from_settings(settings: Settings) -> Runner:
    """The runner WEIGHBRIDGE_RUNNER names; a clear error for one this build does not have."""
    make = RUNNERS.get(settings.runner)
    if make is None:
        known = ", ".join(sorted(RUNNERS))
        raise WeighbridgeError(
            f"WEIGHBRIDGE_RUNNER={settings.runner!r} is not a runner of this build "
            f"(it has: {known})",
            field="WEIGHBRIDGE_RUNNER",
        )
    return make(settings)
