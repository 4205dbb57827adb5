"""A sandboxed handler worker around a handler source, and asking it one batch."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from sandbox.failures import SandboxError, SandboxLimits
from sandbox.jobs import jobs_root
from sandbox.worker import Sandbox
from tests.evaluator.models import write_folder

if TYPE_CHECKING:
    from sandbox.zygote import Zygote


def make_sandbox(
    tmp_path: Path,
    source: str,
    *,
    timeout: float = 5.0,
    memory_mb: int = 300,
    python: str | None = None,
    zygote: Zygote | None = None,
    threads: int | None = None,
    **constants: object,
) -> Sandbox:
    """The handler (with module constants such as LABELS) in a model folder, batch size 4.

    The folder lies in the jobs folder (where the builder and evaluator put models, and the
    only place the warm interpreter forks workers for); the log and workdir in tmp_path."""
    folder = write_folder(job_folder(tmp_path) / "model", source, **constants)
    return Sandbox(
        model_dir=folder,
        handler="handler.py",
        manifest={"model": {"modelName": "m", "handler": "handler.py"}},
        workdir=tmp_path / "work",
        log_path=tmp_path / "log",
        limits=SandboxLimits(timeout_seconds=timeout, memory_mb=memory_mb),
        batch_size=4,
        python=python,
        zygote=zygote,
        threads=threads,
    )


# A handler that needs POSIX semaphores (a multiprocessing pool): each sandbox's own /dev/shm.
POOL_HANDLER = """
import multiprocessing

def square(x):
    return x * x

def handle(data, context):
    if data is None:
        return None
    with multiprocessing.get_context("fork").Pool(2) as pool:
        return [{"label": s} for s in pool.map(square, [item["body"]["x"] for item in data])]
"""


def job_folder(tmp_path: Path) -> Path:
    """A folder in the jobs folder (named after the test), removed when the tests end."""
    folder = Path(tempfile.mkdtemp(prefix=f"test-{tmp_path.name[:40]}-", dir=jobs_root()))
    atexit.register(shutil.rmtree, folder, True)
    return folder


async def answer(sandbox: Sandbox, data: list[dict] | None = None) -> list:
    """Start the worker, send one batch (x = 1 unless given), return its outputs, close."""
    try:
        await sandbox.start()
        return (await sandbox.infer(data or [{"body": {"x": 1}}])).outputs
    finally:
        await sandbox.close()


async def answer_together(sandboxes: list[Sandbox]) -> list:
    """Start every sandbox (all alive at once), ask each one batch (x = 1), close them all;
    the first output of each, in order."""
    seen: list = []
    try:
        for sandbox in sandboxes:
            await sandbox.start()
        for sandbox in sandboxes:
            seen.extend((await sandbox.infer([{"body": {"x": 1}}])).outputs)
    finally:
        for sandbox in sandboxes:
            await sandbox.close()
    return seen


async def failure(sandbox: Sandbox, data: list[dict] | None = None) -> SandboxError:
    """The SandboxError that `answer` raises."""
    with pytest.raises(SandboxError) as caught:
        await answer(sandbox, data)
    return caught.value
