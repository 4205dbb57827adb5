"""A benchmark's job folder and command: what one benchmark or inspection run is given.

From a BenchmarkMessage: the descriptor (read from storage, its sha256 checked, parsed), the
scripts archive (sha256 checked, extracted with tarfile's "data" filter, so no absolute path,
`..`, link out of the folder or device file gets in), each data file (sha256 checked), and the
interpreter wrappers. Inside the sandbox the job sees, read-only:

- `/scripts`: the scripts (script mode), also named by `$WEIGHBRIDGE_SCRIPTS_PATH` and, for
  Anubis's scripts, `$BAI_SCRIPTS_PATH`;
- `/data/<path>`: each `[[data.sources]]` file at its descriptor path (a leading `/` or `~/`
  dropped; a path ending in `/` is a folder and the file keeps its own name in it);
- `/opt/weighbridge/bin`: `python3` and `python`, the build's interpreter (first on PATH);
- `/run/weighbridge/pythonpath` (on PYTHONPATH): `emit()`, as `weighbridge_metrics` and as
  Anubis's `benchmarkai`.

The command is `ml.benchmark_code` then `ml.args`, run by `/bin/sh -c`, after Kubernetes' own
expansion of `$(NAME)` (Anubis ran it as a Kubernetes container command): a name the job's
environment defines is replaced by its value, an undefined one is left as written, and `$$(`
stands for a literal `$(`. Unlike Kubernetes, a `$$` not followed by `(` is left alone, so the
shell still sees `$$` (its process id).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import re
import shlex
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from core.descriptor import Descriptor, DescriptorError, parse_descriptor
from core.environments import local_env_python
from core.errors import JobFailed
from core.messages import BenchmarkMessage, DataRef
from core.storage import Storage
from sandbox.jail import DEFAULT_PATH, Jail
from sandbox.rootfs import HOST_FILES, HOST_SOURCE, Mount

STAGE = "evaluate"
SCRIPTS = "/scripts"
DATA = "/data"
BIN = "/opt/weighbridge/bin"
PYTHONPATH = "pythonpath"  # sandbox/host/pythonpath: the emit() modules
COPY_CHUNK = 1 << 20
ENV_NAME = re.compile(r"[^A-Za-z0-9_]")


@dataclass(frozen=True)
class BenchmarkJob:
    """Everything one benchmark's runs share: the parsed descriptor, the command, the
    sandbox's mounts and environment (without the run number), and what identifies it."""

    descriptor: Descriptor
    command: str
    python: str
    mounts: tuple[Mount, ...]
    env: dict[str, str]
    script_sha256: str
    folder: Path
    scratch: Path  # /scratch's stand-in when there is no sandbox
    files: dict[str, str] = field(default_factory=dict)  # data path inside -> sha256

    def run_env(self, n: int, count: int) -> dict[str, str]:
        return {**self.env, "WEIGHBRIDGE_RUN": str(n), "WEIGHBRIDGE_RUN_COUNT": str(count)}

    def argv(self, n: int, count: int) -> list[str]:
        """`/bin/sh -c` and the command, its `$(NAME)`s expanded from run n's environment."""
        return ["/bin/sh", "-c", expand_references(self.command, self.run_env(n, count))]


def expand_references(text: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(NAME)` expansion: defined names replaced, undefined ones kept as
    written, `$$(` read as a literal `$(`."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$$(", i):
            out.append("$(")
            i += 3
            continue
        if text.startswith("$(", i):
            end = text.find(")", i + 2)
            if end != -1:
                name = text[i + 2 : end]
                if name in env:
                    out.append(env[name])
                    i = end + 1
                    continue
        out.append(text[i])
        i += 1
    return "".join(out)


def data_path(path: str) -> PurePosixPath:
    """A descriptor's data path below /data: `/` and `~/` dropped, `..` refused."""
    text = path.strip()
    if text.startswith("~/"):
        text = text[2:]
    elif text == "~":
        text = ""
    parts = [p for p in PurePosixPath(text.lstrip("/")).parts if p not in ("", ".")]
    if ".." in parts:
        raise JobFailed(
            STAGE,
            f"data.sources path {path!r} climbs out of /data with '..'; give a path below it "
            "(e.g. 'data/train.csv')",
        )
    return PurePosixPath(*parts) if parts else PurePosixPath()


def data_target(ref: DataRef) -> PurePosixPath:
    """Where the job sees one data file, relative to /data."""
    relative = data_path(ref.path)
    name = PurePosixPath(ref.key).name
    if ref.path.rstrip().endswith("/") or relative == PurePosixPath():
        return relative / name
    return relative


def param_name(name: str) -> str:
    return "WEIGHBRIDGE_PARAM_" + ENV_NAME.sub("_", name).upper()


def _value_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


async def read_verified(storage: Storage, key: str, sha256: str, *, what: str) -> bytes:
    try:
        data = await storage.read_bytes(key)
    except FileNotFoundError:
        raise JobFailed(STAGE, f"internal error: {what} {key} is not in storage") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise JobFailed(
            STAGE,
            f"internal error: {what} {key} has sha256 {actual}, the message says {sha256}; "
            "it changed after the build: submit again",
        )
    return data


async def copy_verified(storage: Storage, ref: DataRef, path: Path) -> None:
    """Stream a data file to `path`, refusing it (and removing the copy) on a sha256 mismatch."""
    digest = hashlib.sha256()
    fh = await asyncio.to_thread(_create, path)
    try:
        async for chunk in storage.read_stream(ref.key):
            digest.update(chunk)
            await asyncio.to_thread(fh.write, chunk)
    except FileNotFoundError:
        raise JobFailed(
            STAGE, f"internal error: data file {ref.key} (from {ref.src}) is not in storage"
        ) from None
    finally:
        fh.close()
    if digest.hexdigest() != ref.sha256:
        await asyncio.to_thread(path.unlink)
        raise JobFailed(
            STAGE,
            f"data file {ref.path} (from {ref.src}, stored at {ref.key}) has sha256 "
            f"{digest.hexdigest()}, expected {ref.sha256}; it changed in storage since it was "
            "fetched: submit again",
        )


def _create(path: Path) -> IO[bytes]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("wb")


def extract_scripts(data: bytes, into: Path) -> None:
    """The scripts tar, through tarfile's "data" filter (refuses what would escape `into`)."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(into, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise JobFailed(
            STAGE,
            f"the scripts archive cannot be extracted safely ({exc}); pack the scripts folder "
            "again (only files and folders below it, no links out of it)",
        ) from None


def open_up(folder: Path) -> None:
    """Readable by the sandbox's own uid (it owns nothing here): o+rX throughout."""
    for root, dirs, files in os.walk(folder):
        os.chmod(root, 0o755)
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o755)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, (os.stat(path).st_mode & 0o111) | 0o644)


def _make_folders(folder: Path, *inside: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o755)
    for path in inside:
        path.mkdir()


def write_wrappers(folder: Path, python: str) -> None:
    """`python3` and `python` that run the build's interpreter (by its path, which the sandbox
    binds where it is on the host, so a virtualenv finds its pyvenv.cfg)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("python3", "python"):
        wrapper = folder / name
        wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(python)} "$@"\n')
        wrapper.chmod(0o755)


def interpreter(message: BenchmarkMessage, *, storage: Storage, home: Path) -> str:
    """The env's interpreter on this host (env_key), else the service's own."""
    key = message.benchmark.env_key
    if key is None:
        return sys.executable
    try:
        python = local_env_python(key, storage=storage, home=home)
    except ValueError as exc:
        raise JobFailed(STAGE, f"internal error: benchmark.env_key: {exc}") from None
    if python is None:
        raise JobFailed(
            STAGE,
            f"the benchmark's environment {key} is not on this evaluator's host; it is built "
            "by a builder sharing the host's storage",
        )
    return str(python)


def command_of(descriptor: Descriptor) -> str:
    code = descriptor.ml.benchmark_code.strip()
    if not code:
        raise JobFailed(
            STAGE,
            "ml.benchmark_code is empty: there is no command to run (a local run does not use "
            "the docker image's entrypoint); set it, e.g. "
            'benchmark_code = "python3 $(BAI_SCRIPTS_PATH)/run.py"',
        )
    args = descriptor.ml.args.strip()
    return f"{code} {args}" if args else code


async def prepare_job(
    message: BenchmarkMessage,
    *,
    storage: Storage,
    home: Path,
    folder: Path,
    jail: Jail,
    on_sagemaker: bool = False,
) -> BenchmarkJob:
    """Fetch, verify and lay out everything in `folder` (in the jobs folder); JobFailed
    names what is wrong. `on_sagemaker`: this evaluator runs `aws.sagemaker` descriptors as
    SageMaker training jobs, whose container installs the environment itself (no local one)."""
    ref = message.benchmark
    text = await read_verified(
        storage, ref.descriptor_key, ref.descriptor_sha256, what="descriptor"
    )
    try:
        descriptor = parse_descriptor(text, filename=PurePosixPath(ref.descriptor_key).name)
    except DescriptorError as exc:
        raise JobFailed(STAGE, f"internal error: the stored descriptor is invalid: {exc}") from None
    command = command_of(descriptor)
    if on_sagemaker and descriptor.info.execution_engine == "aws.sagemaker":
        python = sys.executable  # not used: the run is a SageMaker training job
    else:
        python = interpreter(message, storage=storage, home=home)

    scripts, data, bin_folder, scratch = (folder / n for n in ("scripts", "data", "bin", "scratch"))
    await asyncio.to_thread(_make_folders, folder, scripts, data, scratch)
    if ref.scripts_key is not None:
        if ref.scripts_sha256 is None:
            raise JobFailed(STAGE, "internal error: benchmark.scripts_key comes without its sha256")
        archive = await read_verified(
            storage, ref.scripts_key, ref.scripts_sha256, what="scripts archive"
        )
        await asyncio.to_thread(extract_scripts, archive, scripts)
        script_sha256 = ref.scripts_sha256
    else:
        script_sha256 = hashlib.sha256(command.encode()).hexdigest()
    files: dict[str, str] = {}
    for item in message.data:
        target = data_target(item)
        inside = f"{DATA}/{target}"
        if inside in files:
            raise JobFailed(
                STAGE,
                f"two data sources land at {inside} (data.sources path {item.path!r}); give "
                "each its own path",
            )
        await copy_verified(storage, item, data.joinpath(*target.parts))
        files[inside] = item.sha256
    await asyncio.to_thread(write_wrappers, bin_folder, python)
    await asyncio.to_thread(open_up, folder)

    isolated = jail.isolated
    paths = {
        "scripts": SCRIPTS if isolated else str(scripts),
        "data": DATA if isolated else str(data),
        "bin": BIN if isolated else str(bin_folder),
        "pythonpath": f"{HOST_FILES}/{PYTHONPATH}" if isolated else str(HOST_SOURCE / PYTHONPATH),
    }
    env = dict(descriptor.env.vars)
    env.update({param_name(k): _value_text(v) for k, v in message.values.items()})
    env.update(
        WEIGHBRIDGE_SCRIPTS_PATH=paths["scripts"],
        BAI_SCRIPTS_PATH=paths["scripts"],
        WEIGHBRIDGE_DATA_PATH=paths["data"],
        PATH=f"{paths['bin']}:{DEFAULT_PATH}",
        PYTHONPATH=paths["pythonpath"],
    )
    mounts = (
        Mount(str(scripts), SCRIPTS),
        Mount(str(data), DATA),
        Mount(str(bin_folder), BIN),
    )
    return BenchmarkJob(
        descriptor=descriptor,
        command=command,
        python=python,
        mounts=mounts,
        env=env,
        script_sha256=script_sha256,
        folder=folder,
        scratch=scratch,
        files=files,
    )
