"""Real Weighbridge processes for the robustness tests: a task config folder, servers started
as an operator would (free port, own home, short queue settings), uploads over HTTP, and a
look at the database the processes share (SQLite, Postgres or MariaDB)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from tests.cli.conftest import FIXTURES, WEIGHBRIDGE, clean_env

# A handler for the toy task (parity of x) that answers at once: the tests weigh the pipeline
# under crashes, not a model.
PARITY_HANDLER = (
    b"def handle(data, context):\n"
    b"    if data is None:  # TorchServe's initialisation call\n"
    b"        return None\n"
    b"    return [{'label': int(item['body']['x']) % 2} for item in data]\n"
)
TERMINAL = ("done", "failed", "cancelled")


def write_task(folder: Path, slug: str, *, fleet: str, limit: int = 100) -> Path:
    """A copy of the toy task under `slug`, evaluated by `fleet`, with room for `limit` uploads."""
    text = (FIXTURES / "task_configs" / "toy.toml").read_text()
    text = text.replace('name = "Toy classification"', f'name = "Toy {slug}"', 1)
    text = text.replace("submissions_per_window = 3", f"submissions_per_window = {limit}", 1)
    text = text.replace('eval_server_id = "toy-fleet"', f'eval_server_id = "{fleet}"', 1)
    assert f'"{fleet}"' in text and f"= {limit}" in text, "toy.toml changed shape"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{slug}.toml"
    path.write_text(text)
    return path


def stack_env(root: Path, task_configs: Path, url: str, **extra: str) -> dict[str, str]:
    """A fresh home with short leases and polls, so crashes are noticed within seconds."""
    settings = {
        "WEIGHBRIDGE_TASK_CONFIGS": str(task_configs),
        "WEIGHBRIDGE_PUBLIC_URL": url,
        "WEIGHBRIDGE_LEASE_SECONDS": "3",
        "WEIGHBRIDGE_RETRY_BACKOFF_SECONDS": "0.2",
        "WEIGHBRIDGE_POLL_SECONDS": "0.1",
        "WEIGHBRIDGE_EVALUATOR_CONCURRENCY": "4",
    }
    return clean_env(root, **{**settings, **extra})


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """A `weighbridge` process in its own process group (its sandboxes and pool with it)."""
    with open(log, "a") as out:
        return subprocess.Popen(
            [WEIGHBRIDGE, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=log.parent,
            start_new_session=True,
        )


def kill(process: subprocess.Popen, sig: int = signal.SIGKILL, *, group: bool = True) -> None:
    """Send `sig` to the process and everything it started (`group`: as when its container
    dies), or to the process alone (as the OOM killer does); wait for the process."""
    with contextlib.suppress(ProcessLookupError):
        if group:
            os.killpg(process.pid, sig)
        else:
            os.kill(process.pid, sig)
    process.wait(timeout=30)


def _parents() -> dict[int, tuple[int, str]]:
    """Every live process: its parent and its command line (zombies left out)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if fields[0] != "Z":  # a zombie has ended; it waits for its parent to reap it
            found[int(entry.name)] = (int(fields[1]), cmdline.strip())
    return found


def descendants(pid: int) -> dict[int, str]:
    """The processes `pid` started, and theirs (pool workers, sandboxes, handler workers)."""
    live = _parents()
    found: dict[int, str] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, cmdline) in live.items():
            if ppid == parent and child not in found:
                found[child] = cmdline
                frontier.append(child)
    return found


def wait_gone(processes: dict[int, str], timeout: float = 15) -> None:
    """Every one of `processes` ended within `timeout`: a dead server leaves nothing running."""
    deadline = time.monotonic() + timeout
    while True:
        live = _parents()
        # A pid reused since by an unrelated process does not count: compare command lines
        # (a process caught mid-exec has an empty one; gone, it is gone).
        left = [
            f"{pid}: {cmd}" for pid, cmd in processes.items() if pid in live and live[pid][1] == cmd
        ]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not left, f"still running {timeout}s after their server died:\n" + "\n".join(left)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it lingers; also when it already exited."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            kill(process)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # leftovers of the group


def wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"exited with {process.returncode}:\n{tail(log)}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    raise AssertionError(f"{url}/healthz did not answer in {timeout}s:\n{tail(log)}")


def tail(log: Path, lines: int = 60) -> str:
    if not log.exists():
        return "(no log)"
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def create_token(env: dict[str, str], cwd: Path, name: str) -> str:
    result = subprocess.run(
        [
            WEIGHBRIDGE,
            "admin",
            "create-user",
            name,
            "--email",
            f"{name}@example.org",
            "--token-only",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def bundle(handler: bytes = PARITY_HANDLER) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("handler.py")
        info.size = len(handler)
        tar.addfile(info, io.BytesIO(handler))
    return buf.getvalue()


def upload(url: str, token: str, *, task: str, name: str) -> str:
    response = httpx.post(
        f"{url}/api/v1/submissions",
        headers={"Authorization": f"Bearer {token}"},
        data={"task": task, "name": name},
        files={"file": (f"{name}.tar.gz", bundle())},
        timeout=60,
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def submission(url: str, token: str, sid: str) -> dict:
    response = httpx.get(
        f"{url}/api/v1/submissions/{sid}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def wait_settled(
    url: str,
    token: str,
    ids: list[str],
    *,
    timeout: float,
    watch: list[tuple[subprocess.Popen, Path]],
) -> dict[str, dict]:
    """Each submission's record once all of them are done, failed or cancelled."""
    deadline = time.monotonic() + timeout
    states: dict[str, dict] = {}
    while time.monotonic() < deadline:
        for process, log in watch:
            assert process.poll() is None, f"a process exited ({process.returncode}):\n{tail(log)}"
        states = {sid: submission(url, token, sid) for sid in ids}
        if all(s["status"] in TERMINAL for s in states.values()):
            return states
        time.sleep(0.25)
    stuck = {sid: s["status"] for sid, s in states.items() if s["status"] not in TERMINAL}
    logs = "\n".join(tail(log, 30) for _, log in watch)
    raise AssertionError(f"still not settled after {timeout}s: {stuck}\n{logs}")


def query(database_url: str, sql: str) -> list[tuple]:
    """The rows of `sql` on the database the processes share, whichever backend it is on."""

    async def rows() -> list[tuple]:
        # No pool: each look is one short connection, closed before the loop ends.
        engine = create_async_engine(database_url, poolclass=NullPool)
        try:
            async with engine.connect() as conn:
                return [tuple(row) for row in (await conn.execute(sa.text(sql))).all()]
        finally:
            await engine.dispose()

    return asyncio.run(rows())
