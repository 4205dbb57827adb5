"""Remote evaluator workers run models that have a requirements.txt: the worker builds the
environment itself with the builder's code (pip in the sandbox), under its own envs folder, once
per requirements sha256, and runs the handler with it; a requirement it cannot install fails
the job with pip's message. Packages come from a package index the tests serve on 127.0.0.1
(tests/evaluator/package_index.py), never from the internet."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from core.context import Services
from core.environments import MARKER, ensure_env, envs_root, is_ready
from core.errors import JobFailed
from core.models import RemoteJob
from core.processes import BuildLog
from core.settings import Settings
from evaluator.remote_runner import requirements_key
from evaluator.remote_worker import RemoteWorker
from tests.conftest import make_settings
from tests.evaluator.factories import (
    get_submission,
    make_built_submission,
    make_user,
    store_dataset,
    toy_rows,
    wait_terminal,
)
from tests.evaluator.models import pack_mar, write_folder
from tests.evaluator.package_index import requirements_for, serve_wheels, wheel
from tests.evaluator.test_remote_worker import remote_worker, task_scores
from tests.evaluator.test_worker import evaluator

PACKAGE = "weighbridge-test-parity"
# The handler's answers come from the package: without its environment it cannot even import.
USES_PACKAGE = """
import weighbridge_test_parity


def handle(data, context):
    if data is None:
        return None
    return [{"label": weighbridge_test_parity.label(item["body"]["x"])} for item in data]
"""


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(
        tmp_path, database_url, public_url="http://testserver", worker_lease_seconds=3.0
    )


@pytest.fixture
def index(tmp_path: Path) -> Iterator[str]:
    """The test package index: weighbridge-test-parity 1.0 (right on about half the toy
    examples) and weighbridge-test-broken 1.0 (installs, but raises on import)."""
    wheels = tmp_path / "wheels"
    wheel(
        wheels,
        PACKAGE,
        "1.0",
        {"weighbridge_test_parity": "def label(x):\n    return (x // 3) % 2\n"},
    )
    wheel(
        wheels,
        "weighbridge-test-broken",
        "1.0",
        {"weighbridge_test_broken": "raise RuntimeError('broken at import time')\n"},
    )
    with serve_wheels(wheels) as url:
        yield url


async def built_with_requirements(
    services: Services, tmp_path: Path, requirements: bytes, *, name: str, env_key: str | None
) -> str:
    """A built submission of the USES_PACKAGE model whose build kept `requirements` (as the
    builder stores a bundle's requirements.txt) and names its env by `env_key`."""
    user = await make_user(services)
    mar = pack_mar(write_folder(tmp_path / name, USES_PACKAGE), tmp_path / f"{name}.mar")
    dataset = await store_dataset(services, toy_rows(40))
    sid, _ = await make_built_submission(
        services, user, mar, [dataset], name=name, build={"env_key": env_key}
    )
    await services.storage.write_bytes(requirements_key(sid), requirements)
    return sid


def ready_envs(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("*") if p.is_dir() and is_ready(p))


async def test_a_model_with_requirements_runs_on_a_remote_worker_as_it_runs_locally(
    services: Services, tmp_path: Path, index: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The local runner uses the env the builder made (built here with the builder's code, as
    the local builder would); the remote worker builds its own from the requirements.txt the
    claim links to, once: a second job with the same requirements reuses it."""
    caplog.set_level(logging.INFO, logger="evaluator.remote_worker")
    requirements = requirements_for(index, f"{PACKAGE}==1.0")
    source = tmp_path / "requirements.txt"
    source.write_bytes(requirements)
    log = BuildLog(tmp_path / "builder.log")
    builder_envs = envs_root(services.storage, services.settings.home)
    env = await asyncio.to_thread(ensure_env, source, envs_root=builder_envs, log=log, timeout=300)
    log.close()
    local_sid = await built_with_requirements(
        services, tmp_path, requirements, name="local", env_key=env.key
    )
    async with evaluator(services):
        await wait_terminal(services, [local_sid], within=120)

    services.settings.runner = "remote"
    worker_envs = tmp_path / "worker-home" / "envs"
    remote_sids = []
    async with evaluator(services), remote_worker(services, tmp_path, envs=worker_envs) as worker:
        for name in ("remote", "again"):
            sid = await built_with_requirements(
                services, tmp_path, requirements, name=name, env_key=env.key
            )
            await wait_terminal(services, [sid], within=180)
            remote_sids.append(sid)
        assert worker.jobs_done == 2

    local = await get_submission(services, local_sid)
    assert local.status == "done", local.error
    expected = await task_scores(services, local_sid)
    assert 0.2 < expected[("test", "accuracy")][0] < 0.8  # the package's answers, not a stub
    for sid in remote_sids:
        remote = await get_submission(services, sid)
        assert remote.status == "done", remote.error
        assert await task_scores(services, sid) == expected

    # The worker's env is its own (under its envs folder, not the builder's), built once.
    built = ready_envs(worker_envs)
    assert [p.name for p in built] == [env.sha256]
    assert built[0] != env.path
    assert json.loads((built[0] / MARKER).read_text())["requirements_sha256"] == env.sha256
    said = [r.getMessage() for r in caplog.records if r.name == "evaluator.remote_worker"]
    assert sum("(built in" in m for m in said) == 1, said
    assert sum("(reused in" in m for m in said) == 1, said
    assert any("pip install" in m for m in said)  # the build's progress, in the worker's log
    async with services.db.session() as session:
        jobs = list(await session.scalars(sa.select(RemoteJob)))
    assert {j.spec["model"]["requirements"]["sha256"] for j in jobs} == {env.sha256}


async def test_a_requirement_the_worker_cannot_install_fails_the_job_with_pips_message(
    services: Services, tmp_path: Path, index: str
) -> None:
    services.settings.runner = "remote"
    requirements = requirements_for(index, "weighbridge-no-such-package==9.9.9")
    sid = await built_with_requirements(services, tmp_path, requirements, name="bad", env_key=None)
    worker_envs = tmp_path / "worker-envs"
    async with evaluator(services), remote_worker(services, tmp_path, envs=worker_envs) as worker:
        await wait_terminal(services, [sid], within=120)
        assert worker.jobs_done == 0
    submission = await get_submission(services, sid)
    assert submission.status == "failed"
    error = submission.error or ""
    assert "could not run dataset test" in error
    assert "could not be built from its requirements.txt on this worker" in error
    assert "pip could not install requirements.txt: ERROR:" in error
    assert "weighbridge-no-such-package" in error
    assert "Traceback" not in error
    # pip's whole output is the dataset's log, for the owner.
    log = (await services.storage.read_bytes(f"submissions/{sid}/results/test/log")).decode()
    assert "pip install" in log and "weighbridge-no-such-package" in log
    assert ready_envs(worker_envs) == []


async def test_a_requirement_that_installs_but_does_not_import_is_refused(
    tmp_path: Path, index: str
) -> None:
    """The worker checks a new env as it would run it: each requirement's modules import in
    the sandbox; an env that fails is never marked ready."""
    requirements = tmp_path / "requirements.txt"
    requirements.write_bytes(requirements_for(index, "weighbridge-test-broken==1.0"))
    log = BuildLog(tmp_path / "log")
    with pytest.raises(JobFailed) as caught:
        await asyncio.to_thread(
            ensure_env, requirements, envs_root=tmp_path / "envs", log=log, timeout=300, verify=True
        )
    log.close()
    reason = caught.value.reason
    assert "installed, but weighbridge-test-broken: import weighbridge_test_broken failed" in reason
    assert "RuntimeError: broken at import time" in reason
    assert ready_envs(tmp_path / "envs") == []


async def test_two_jobs_with_the_same_requirements_build_the_env_once(
    tmp_path: Path, index: str
) -> None:
    """Two jobs at once on one worker machine (two workers sharing a home): one builds, the
    other waits on the env's lock and reuses it."""
    requirements = requirements_for(index, f"{PACKAGE}==1.0")
    served = tmp_path / "served" / "requirements.txt"
    served.parent.mkdir()
    served.write_bytes(requirements)
    sha = hashlib.sha256(requirements).hexdigest()
    envs = tmp_path / "envs"

    def job(n: int) -> dict[str, Any]:
        return {
            "job_id": f"job-{n}",
            "model": {"requirements": {"url": "file", "sha256": sha, "timeout_seconds": 300}},
        }

    class Local(RemoteWorker):
        async def _download(self, url: str, path: Path, sha256: str, stage: str, what: str) -> None:
            # The presigned GET, without an API.
            await asyncio.to_thread(shutil.copyfile, served, path)

    workers = [Local("http://unused", "wbw_x", "f", envs=envs) for _ in range(2)]
    scratch = [tmp_path / f"job{n}" for n in range(2)]
    for folder in scratch:
        folder.mkdir()
    try:
        pythons = await asyncio.gather(
            *(
                w.environment(job(n), {"log_url": "unused"}, scratch[n], "evaluate:test")
                for n, w in enumerate(workers)
            )
        )
    finally:
        for w in workers:
            await w.close()
    assert pythons[0] == pythons[1] == str(envs / sha / "bin" / "python")
    logs = [(folder / "environment.log").read_text() for folder in scratch]
    assert sum("pip install" in text for text in logs) == 1
    assert sum("reusing" in text for text in logs) == 1
