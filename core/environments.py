"""Virtual environments for bundles with a requirements.txt: one per requirements sha256, reused.

An env is named in messages by its storage-style key `envs/<requirements sha256>`, never by
path; each host resolves the key under its own envs root. The builder builds them for the local
evaluator (builder/builds.py), and a remote evaluator worker builds its own under its home
(evaluator/remote_worker.py), both with `ensure_env` below.

`envs/<sha256>/` is built once, under an exclusive `fcntl` lock on `envs/<sha256>.lock`, and
marked usable only at the end by an atomically renamed marker file: a crash part-way leaves no
marker, and the next build removes the remains and starts again.

The env is created with `python -m venv --system-site-packages` and, because the service itself
runs in a virtualenv (whose packages `--system-site-packages` does not reach), a `.pth` file
that adds the service's own site-packages after the env's. So torch and the rest are inherited,
a requirement they already satisfy costs no download, and anything pip installs in the env
takes precedence.

`pip install` runs user-chosen code (build backends, setup.py), so it runs in the sandbox:
with network (it needs the package index) but a clean environment (no WEIGHBRIDGE_* values,
no cloud credentials, no tokens: only pip's own index settings), its own unprivileged uid,
and no view of Weighbridge's home, storage or database; only the new environment is
writable. Once built, the environment is owned by root again and mounted read-only into the
jobs that use it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import site
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from core.errors import JobFailed
from core.processes import BuildLog, last_line
from core.storage import Storage
from sandbox.jail import Job, Limits, current_jail
from sandbox.rootfs import Mount

MARKER = ".weighbridge-ready.json"
ENV_KEY = re.compile(r"^envs/([0-9a-f]{64})$")


def envs_root(storage: Storage, home: Path) -> Path:
    """`envs/` of the local storage folder, or `<home>/envs` on remote storage."""
    local = storage.local_path("envs")
    return local if local is not None else home / "envs"


def env_python(env_dir: Path) -> Path:
    return env_dir / "bin" / "python"


def is_ready(env_dir: Path) -> bool:
    return (env_dir / MARKER).is_file() and env_python(env_dir).exists()


def local_env_python(env_key: str, *, storage: Storage, home: Path) -> Path | None:
    """The interpreter of the ready env `env_key` on this host; None when it is not here."""
    match = ENV_KEY.match(env_key)
    if match is None:
        raise ValueError(f"{env_key!r} is not an environment key (envs/<sha256>)")
    env_dir = envs_root(storage, home) / match.group(1)
    return env_python(env_dir) if is_ready(env_dir) else None


PTH = "_weighbridge_base.pth"


@dataclass(frozen=True)
class PythonEnv:
    """A ready environment: its interpreter and whether this build reused it."""

    sha256: str
    path: Path
    python: Path
    key: str  # envs/<sha256>
    reused: bool
    seconds: float


def requirements_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextlib.contextmanager
def _locked(lock_path: Path, *, timeout: float, log: BuildLog) -> Iterator[None]:
    """An exclusive lock across processes; waits up to `timeout` for another builder."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                if time.monotonic() > deadline:
                    raise JobFailed(
                        "build",
                        f"another build held the environment lock {lock_path.name} for more "
                        f"than {timeout:g} s; try again later",
                    ) from None
                if not announced:
                    log.write("waiting for another build of the same environment…\n")
                    announced = True
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _base_site_packages() -> list[str]:
    """The builder's own site-packages folders (a virtualenv's, not the base interpreter's)."""
    paths = [p for p in site.getsitepackages() if os.path.isdir(p)]
    return list(dict.fromkeys(paths))


def _write_marker(env_dir: Path, info: dict) -> None:
    tmp = env_dir / f".{MARKER}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(info, indent=2), encoding="utf-8")
    os.replace(tmp, env_dir / MARKER)


def ensure_env(
    requirements: Path,
    *,
    envs_root: Path,
    log: BuildLog,
    timeout: float,
    base_python: str | None = None,
    verify: bool = False,
) -> PythonEnv:
    """The env for these requirements, built now or reused; JobFailed when pip fails.

    With `verify`, a new env is marked ready only once every requirement it names imports
    in the sandbox (a remote worker's check; the builder imports the handler instead)."""
    started = time.monotonic()
    sha = requirements_sha256(requirements)
    env_dir = envs_root / sha
    key = f"envs/{sha}"
    log.step(f"environment for requirements.txt (sha256 {sha[:12]}…)")
    if is_ready(env_dir):
        log.write(f"reusing {env_dir}\n")
        return PythonEnv(sha, env_dir, env_python(env_dir), key, True, time.monotonic() - started)
    with _locked(envs_root / f"{sha}.lock", timeout=timeout, log=log):
        if is_ready(env_dir):  # built by another builder while we waited
            log.write(f"reusing {env_dir} (built while this build waited)\n")
            return PythonEnv(
                sha, env_dir, env_python(env_dir), key, True, time.monotonic() - started
            )
        if env_dir.exists():
            log.write(f"removing the remains of an unfinished build at {env_dir}\n")
            shutil.rmtree(env_dir)
        try:
            deadline = time.monotonic() + timeout
            _build(requirements, env_dir, log=log, timeout=timeout, base_python=base_python)
            if verify:
                verify_env(
                    requirements, env_dir, log=log, timeout=max(1.0, deadline - time.monotonic())
                )
        except BaseException:
            shutil.rmtree(env_dir, ignore_errors=True)
            raise
        _write_marker(
            env_dir,
            {
                "requirements_sha256": sha,
                "created_at": datetime.now(UTC).isoformat(),
                "base_site_packages": _base_site_packages(),
                "python": sys.version.split()[0],
            },
        )
    log.write(f"environment ready at {env_dir}\n")
    return PythonEnv(sha, env_dir, env_python(env_dir), key, False, time.monotonic() - started)


def _build(
    requirements: Path, env_dir: Path, *, log: BuildLog, timeout: float, base_python: str | None
) -> None:
    deadline = time.monotonic() + timeout
    python = base_python or sys.executable
    env_dir.parent.mkdir(parents=True, exist_ok=True)
    # pip comes from the builder's site-packages through the .pth below: no ensurepip needed.
    made = log.run(
        [python, "-m", "venv", "--system-site-packages", "--without-pip", str(env_dir)],
        cwd=env_dir.parent,
        timeout=max(1.0, deadline - time.monotonic()),
    )
    if not made.ok:
        raise JobFailed(
            "build",
            f"could not create a virtual environment: {last_line(made.tail) or 'no output'}",
            log_tail=made.tail,
        )
    purelib = _env_purelib(env_dir)
    lines = [f"import site; site.addsitedir({p!r})" for p in _base_site_packages()]
    (purelib / PTH).write_text("\n".join(lines) + "\n", encoding="utf-8")
    shutil.copyfile(requirements, env_dir / "requirements.txt")
    argv = [
        str(env_python(env_dir)),
        "-m",
        "pip",
        "install",
        "--progress-bar",
        "off",
        "--no-warn-script-location",
        "--no-cache-dir",
        "-r",
        str(env_dir / "requirements.txt"),
    ]
    job = Job(
        python=str(env_python(env_dir)),
        mounts=(Mount(str(env_dir), str(env_dir), writable=True),),
        network=True,
        limits=INSTALL_LIMITS,
        env=pip_environment(),
        cwd=str(env_dir),
    )
    jail = current_jail()
    with jail.cell(job) as cell:
        _chown_tree(env_dir, cell.uid, cell.gid)
        try:
            pip = log.run(
                cell.command(argv),
                cwd=env_dir,
                timeout=max(1.0, deadline - time.monotonic()),
                env=cell.env() if not jail.isolated else {},
                pass_fds=cell.pass_fds,
                preexec_fn=cell.preexec,
                shown=argv,
            )
        finally:
            _chown_tree(env_dir, os.geteuid(), os.getegid())
    if pip.timed_out:
        raise JobFailed(
            "build",
            f"pip install -r requirements.txt did not finish within {timeout:g} s; pin "
            "versions with wheels, or drop packages the base image already has",
            log_tail=pip.tail,
        )
    if not pip.ok:
        raise JobFailed(
            "build",
            "pip could not install requirements.txt: "
            f"{_pip_error(pip.tail) or f'exit status {pip.returncode}'}",
            log_tail=pip.tail,
        )


# Imports every module each named distribution provides (top_level.txt, else its files);
# run by the env's interpreter in the sandbox, without network.
IMPORT_CHECK = r"""
import importlib, importlib.metadata as md, sys, traceback

def modules(dist):
    text = dist.read_text("top_level.txt")
    if text:
        return [m for m in text.split() if m.isidentifier()]
    found = set()
    for f in dist.files or ():
        parts = f.parts
        if not parts or parts[0].startswith("..") or parts[0] == "__pycache__":
            continue
        if parts[0].endswith((".dist-info", ".data", ".egg-info")):
            continue
        if len(parts) == 1 and parts[0].endswith(".py"):
            found.add(parts[0][:-3])
        elif len(parts) == 2 and parts[1] == "__init__.py":
            found.add(parts[0])
    return sorted(m for m in found if m.isidentifier() and not m.startswith("_"))

bad = 0
for name in sys.argv[1:]:
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        print(f"import check: {name}: not installed"); bad += 1; continue
    for module in modules(dist):
        try:
            importlib.import_module(module)
        except BaseException as exc:
            print(f"import check: {name}: import {module} failed: {type(exc).__name__}: {exc}")
            traceback.print_exc(limit=-3, file=sys.stdout)
            bad += 1
        else:
            print(f"import check: {name} {dist.version}: import {module} ok")
sys.exit(1 if bad else 0)
"""
_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)")


def requirement_names(requirements: Path) -> list[str]:
    """The distributions a requirements file names (options, URLs-only and blank lines left out)."""
    names: list[str] = []
    for raw in requirements.read_text(encoding="utf-8", errors="replace").splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        match = _NAME.match(line)
        if match and "://" not in line.split("@", 1)[0]:
            names.append(match.group(1))
    return list(dict.fromkeys(names))


def verify_env(requirements: Path, env_dir: Path, *, log: BuildLog, timeout: float) -> None:
    """Each requirement's modules import with the env's interpreter, in the sandbox (no network,
    the env read-only); JobFailed naming the first that does not."""
    names = requirement_names(requirements)
    if not names:
        return
    log.step(f"checking that the requirements import: {', '.join(names)}")
    python = str(env_python(env_dir))
    job = Job(
        python=python,
        mounts=(Mount(str(env_dir), str(env_dir)),),
        network=False,
        limits=INSTALL_LIMITS,
        env=pip_environment(),
        cwd=str(env_dir),
    )
    jail = current_jail()
    argv = [python, "-c", IMPORT_CHECK, *names]
    with jail.cell(job) as cell:
        checked = log.run(
            cell.command(argv),
            cwd=env_dir,
            timeout=timeout,
            env=cell.env() if not jail.isolated else {},
            pass_fds=cell.pass_fds,
            preexec_fn=cell.preexec,
            shown=[python, "-c", "<import check>", *names],
        )
    if checked.timed_out:
        raise JobFailed(
            "build",
            f"importing the requirements did not finish within {timeout:g} s",
            log_tail=checked.tail,
        )
    if not checked.ok:
        failed = [
            line.removeprefix("import check: ")
            for line in checked.tail.splitlines()
            if line.startswith("import check: ") and not line.endswith(" ok")
        ]
        raise JobFailed(
            "build",
            "the environment for requirements.txt was installed, but "
            f"{failed[0] if failed else last_line(checked.tail) or 'the import check failed'}",
            log_tail=checked.tail,
        )


# pip's own settings that may pass into the install sandbox (where to find packages); nothing
# else of the builder's environment does.
PIP_SETTINGS = (
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_FIND_LINKS",
    "PIP_TRUSTED_HOST",
    "PIP_CERT",
    "PIP_DEFAULT_TIMEOUT",
    "PIP_CONSTRAINT",
    "PIP_NO_INDEX",
    "PIP_PREFER_BINARY",
)
INSTALL_LIMITS = Limits(memory_mb=4096, pids=512, file_mb=4096, scratch_mb=2048, open_files=4096)


def pip_environment() -> dict[str, str]:
    """The install sandbox's environment: pip's index settings and quiet defaults only."""
    env = {k: os.environ[k] for k in PIP_SETTINGS if k in os.environ}
    env.update(
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    """Hand the environment to the install sandbox's user (and back to us afterwards)."""
    if os.geteuid() != 0:
        return
    os.chown(root, uid, gid, follow_symlinks=False)
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            os.chown(os.path.join(folder, name), uid, gid, follow_symlinks=False)


def _env_purelib(env_dir: Path) -> Path:
    candidates = sorted((env_dir / "lib").glob("python*/site-packages"))
    if not candidates:
        raise JobFailed("build", f"the new environment at {env_dir} has no site-packages")
    return candidates[0]


def _pip_error(tail: str) -> str:
    """pip's own 'ERROR: …' line when there is one (the last line is often a hint)."""
    errors = [line.strip() for line in tail.splitlines() if line.startswith("ERROR:")]
    return errors[0] if errors else last_line(tail)
