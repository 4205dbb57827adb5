"""Attacks at build time: a handler's import and a bundle's requirements run sandboxed.

Each test is an attack as a hostile bundle would write it. The check must fail with a reason
(or pass harmlessly), and afterwards nothing outside the sandbox has changed.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.environments import ensure_env, pip_environment
from builder.handlers import check_handler
from builder.processes import BuildLog
from core.errors import JobFailed
from sandbox.zygote import Zygote
from tests.builder.bundles import HANDLER, write_model_folder
from tests.sandbox.workers import job_folder


@pytest.fixture(scope="module")
def zygote() -> Iterator[Zygote | None]:
    """The builder's checks fork from a warm interpreter, as in `weighbridge up`."""
    import asyncio
    import threading

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    warm = Zygote()
    assert asyncio.run_coroutine_threadsafe(warm.ensure(), loop).result(180)
    yield warm
    asyncio.run_coroutine_threadsafe(warm.close(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


@pytest.fixture(params=["exec", "forked"])
def path(request: pytest.FixtureRequest, zygote: Zygote) -> Zygote | None:
    return zygote if request.param == "forked" else None


def attack(tmp_path: Path, source: str, zygote: Zygote | None) -> tuple[JobFailed | None, str]:
    """Check a handler whose import is `source` + a valid handler; (the failure, the log)."""
    folder = write_model_folder(job_folder(tmp_path) / "model", handler=source + HANDLER)
    log = BuildLog(tmp_path / "log")
    failure = None
    try:
        check_handler(
            folder,
            "handler.py",
            python=sys.executable,
            timeout=30,
            log=log,
            zygote=zygote,  # None: no warm interpreter, a fresh one in the sandbox
        )
    except JobFailed as exc:
        failure = exc
    finally:
        log.close()
    text = (tmp_path / "log").read_text()
    if zygote is not None and failure is None:
        assert "forked from the warm interpreter" in text
    return failure, text


def test_import_time_reads_of_the_evaluators_data_find_nothing(
    tmp_path: Path, path: Zygote | None
) -> None:
    home = tmp_path / "home"
    (home / "storage" / "datasets").mkdir(parents=True)
    (home / "storage" / "datasets" / "labels.jsonl").write_text('{"label": 7}\n')
    source = (
        "import os\n"
        f"HOME = {str(home)!r}\n"
        "found = [os.path.join(r, f) for r, _, fs in os.walk(HOME) for f in fs]\n"
        "print('FOUND', found)\n"
        "open(os.path.join(HOME, 'storage', 'datasets', 'labels.jsonl')).read()\n"
    )
    failure, log = attack(tmp_path, source, path)
    assert failure is not None and "FileNotFoundError" in failure.reason
    assert "FOUND []" in log  # the walk saw nothing: the folder is not in its filesystem


def test_import_time_database_writes_cannot_make_an_admin(
    tmp_path: Path, path: Zygote | None
) -> None:
    db = tmp_path / "home" / "weighbridge.db"
    db.parent.mkdir()
    with sqlite3.connect(db) as conn:
        conn.execute("create table users (name text, is_admin integer)")
        conn.execute("insert into users values ('mallory', 0)")
    source = (
        "import sqlite3\n"
        f"c = sqlite3.connect({str(db)!r})\n"
        "c.execute(\"update users set is_admin = 1 where name = 'mallory'\")\n"
        "c.commit()\n"
    )
    failure, _ = attack(tmp_path, source, path)
    assert failure is not None and "failed to import" in failure.reason
    with sqlite3.connect(db) as conn:
        assert conn.execute("select is_admin from users").fetchall() == [(0,)]


def test_import_time_network_use_is_refused(tmp_path: Path, path: Zygote | None) -> None:
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    port = server.getsockname()[1]
    source = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
    failure, _ = attack(tmp_path, source, path)
    assert failure is not None and "Address family not supported" in failure.reason
    with pytest.raises(TimeoutError):
        server.accept()
    server.close()


def test_import_time_memory_hogs_are_stopped(tmp_path: Path, path: Zygote | None) -> None:
    failure, _ = attack(tmp_path, "hoard = bytearray(6 << 30)\n", path)
    assert failure is not None and "MemoryError" in failure.reason


def test_import_time_secrets_are_not_in_the_environment(
    tmp_path: Path, path: Zygote | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEIGHBRIDGE_DATABASE_URL", "postgresql://admin:hunter2@db/wb")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2")
    source = "import os, json\nprint('ENV', json.dumps(dict(os.environ)))\n"
    failure, log = attack(tmp_path, source, path)
    assert failure is None
    [line] = [line for line in log.splitlines() if line.startswith("ENV ")]
    env = json.loads(line[4:])
    assert "hunter2" not in json.dumps(env)
    assert not [k for k in env if k.startswith(("WEIGHBRIDGE", "AWS"))]


def test_a_hostile_build_backend_in_requirements_cannot_reach_the_builders_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A requirements line naming a package 'uploaded earlier' (a path on the builder's
    disk) whose setup.py would read secrets and write outside: the install sandbox does not
    even see the path, so nothing of it runs."""
    monkeypatch.setenv("WEIGHBRIDGE_DATABASE_URL", "postgresql://admin:hunter2@db/wb")
    evil = tmp_path / "storage" / "evil"
    evil.mkdir(parents=True)
    sentinel = tmp_path / "pwned"
    (evil / "setup.py").write_text(
        "import os\n"
        f"open({str(sentinel)!r}, 'w').write(os.environ.get('WEIGHBRIDGE_DATABASE_URL', ''))\n"
        "from setuptools import setup\nsetup(name='evil', version='1')\n"
    )
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"{evil}\n")
    log = BuildLog(tmp_path / "log")
    try:
        with pytest.raises(JobFailed) as caught:
            ensure_env(requirements, envs_root=tmp_path / "envs", log=log, timeout=120)
    finally:
        log.close()
    assert "pip could not install requirements.txt" in caught.value.reason
    assert not sentinel.exists()


def test_the_install_environment_holds_pip_settings_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEIGHBRIDGE_DATABASE_URL", "postgresql://admin:hunter2@db/wb")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA")
    monkeypatch.setenv("PIP_FIND_LINKS", "/opt/wheels")
    env = pip_environment()
    assert env["PIP_FIND_LINKS"] == "/opt/wheels"
    assert not [k for k in env if not k.startswith(("PIP_", "PYTHON"))]


def test_an_installed_environment_is_not_writable_by_later_sandboxes(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# nothing to install\n")
    log = BuildLog(tmp_path / "log")
    try:
        env = ensure_env(requirements, envs_root=tmp_path / "envs", log=log, timeout=120)
    finally:
        log.close()
    owners = {(p.stat().st_uid) for p in [env.path, *env.path.rglob("*")] if not p.is_symlink()}
    assert owners == {os.geteuid()}  # given back to the builder's user after pip ran
