"""A sandboxed handler worker around a handler source, and asking it one batch."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from evaluator.sandbox import Sandbox, SandboxError, SandboxLimits, SandboxPolicy
from tests.evaluator.models import write_folder

if TYPE_CHECKING:
    from evaluator.zygote import Zygote


def make_sandbox(
    tmp_path: Path,
    source: str,
    *,
    policy: SandboxPolicy = SandboxPolicy(),
    timeout: float = 5.0,
    memory_mb: int = 300,
    python: str | None = None,
    zygote: Zygote | None = None,
    threads: int | None = None,
    **constants: object,
) -> Sandbox:
    """The handler (with module constants such as LABELS) in tmp_path/model, batch size 4."""
    folder = write_folder(tmp_path / "model", source, **constants)
    return Sandbox(
        model_dir=folder,
        handler="handler.py",
        manifest={"model": {"modelName": "m", "handler": "handler.py"}},
        workdir=tmp_path / "work",
        log_path=tmp_path / "log",
        limits=SandboxLimits(timeout_seconds=timeout, memory_mb=memory_mb),
        policy=policy,
        batch_size=4,
        python=python,
        zygote=zygote,
        threads=threads,
    )


async def answer(sandbox: Sandbox, data: list[dict] | None = None) -> list:
    """Start the worker, send one batch (x = 1 unless given), return its outputs, close."""
    try:
        await sandbox.start()
        return (await sandbox.infer(data or [{"body": {"x": 1}}])).outputs
    finally:
        await sandbox.close()


async def failure(sandbox: Sandbox, data: list[dict] | None = None) -> SandboxError:
    """The SandboxError that `answer` raises."""
    with pytest.raises(SandboxError) as caught:
        await answer(sandbox, data)
    return caught.value
