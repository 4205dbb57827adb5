"""The build of a benchmark or an inspection: descriptor, scripts, environment and data made
ready, then the run handed to the default fleet.

What a build does, each step in the build log (stored at `submissions/<id>/build/log`):

1. the descriptor, read back from storage and checked against the sha256 it was stored with,
   parsed again, and its range values (a child of a `[ranges]` family) applied; the result is
   stored as `build/descriptor.toml`, the descriptor this run uses;
2. the scripts archive (script mode) unpacked under the bundle limits (no links out, no
   devices, sizes bounded) and packed again as a normalised tar (sorted, owner 0, times 0,
   modes 0644/0755), `build/scripts.tar`, so its sha256 names its contents;
3. the Python environment: `[environment] python_packages` (or the `requirements` file inside
   the scripts) installed once per requirements sha256, by the same sandboxed pip as a
   model's requirements.txt;
4. every `[[data.sources]]` fetched once, verified and cached under `datasets/<sha256>/`
   (core.fetcher), shared with every later job;
5. what this machine cannot honour (a docker image, horovod, a zone, native packages...)
   written in the timeline as warnings, never dropped in silence.
Then `built`, and the `benchmark` message staged on `eval-default` in the same transaction.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import tarfile
import time
from pathlib import Path
from typing import Any

import tomli_w

from builder.bundle import open_bundle
from builder.environments import ensure_env
from builder.extraction import BundleLimits
from builder.processes import BuildLog
from core.context import Services
from core.descriptor import Descriptor, DescriptorError, apply_range, parse_descriptor
from core.environments import envs_root
from core.errors import JobFailed
from core.fetcher import FetchError, FetchPolicy, fetch_source
from core.messages import BenchmarkMessage, BenchmarkRef, DataRef, payload_of
from core.models import new_id
from core.queue import Delivery, eval_queue
from core.states import Status, record_event, transition
from sandbox.jail import current_jail
from sandbox.jobs import jobs_root
from sandbox.rootfs import gpu_devices

STAGE = "build"
SERVICE = "builder"
# Benchmarks and inspections run on the default fleet (per-hardware fleets: the cloud issue).
FLEET = "default"
PIP_TIMEOUT_SECONDS = 1800.0
# A timeline event about a long download at most this often.
PROGRESS_EVERY_SECONDS = 5.0
PROGRESS_MIN_BYTES = 8 * 1024 * 1024


def build_key(submission_id: str, name: str) -> str:
    return f"submissions/{submission_id}/build/{name}"


def resolved_descriptor(text: bytes, filename: str, values: dict[str, Any]) -> Descriptor:
    descriptor = parse_descriptor(text, filename=filename)
    return apply_range(descriptor, values) if values else descriptor


def descriptor_toml(descriptor: Descriptor) -> bytes:
    """The descriptor as TOML again: what was given, with range values filled in."""
    document = descriptor.model_dump(mode="json", exclude_unset=True, exclude_none=True)
    if not document.get("ranges"):
        document.pop("ranges", None)
    return tomli_w.dumps(document).encode()


def normalised_tar(root: Path, target: Path) -> str:
    """Pack the files under `root` reproducibly into `target`; its sha256."""

    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        info.mode = 0o755 if info.isdir() or info.mode & 0o111 else 0o644
        return info

    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(root.rglob("*")):
            if path.is_symlink() or not (path.is_file() or path.is_dir()):
                continue  # the unpacking already refused or resolved links
            tar.add(path, arcname=path.relative_to(root).as_posix(), recursive=False, filter=clean)
    digest = hashlib.sha256()
    with target.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def requirements_text(descriptor: Descriptor, scripts: Path | None) -> str | None:
    """The pip requirements of `[environment]` (None: nothing to install)."""
    env = descriptor.environment
    if env.python_packages:
        return "".join(f"{line}\n" for line in env.python_packages)
    if env.requirements:
        if scripts is None:
            raise JobFailed(
                STAGE,
                f"environment.requirements names {env.requirements!r}, but no scripts were "
                "sent: submit with --script DIR holding that file",
            )
        path = (scripts / env.requirements).resolve()
        if not path.is_relative_to(scripts.resolve()) or not path.is_file():
            raise JobFailed(
                STAGE,
                f"environment.requirements: {env.requirements!r} is not a file in the scripts",
            )
        return path.read_text(encoding="utf-8", errors="replace")
    return None


class BenchmarkBuild:
    """One build of a benchmark/inspection submission (see the module docstring)."""

    def __init__(self, services: Services, delivery: Delivery, payload: Any) -> None:
        self.services = services
        self.delivery = delivery
        self.payload = payload
        self.ref = payload.submission
        self.id = self.ref.id
        self.work = jobs_root() / "builds" / f"{self.id}-{new_id()[:8]}"
        self.log = BuildLog(self.work / "build" / "log")
        self.warnings: list[str] = []

    async def event(self, kind: str, message: str, payload: dict[str, Any] | None = None) -> None:
        from core.models import Submission

        async with self.services.db.session() as session:
            submission = await session.get(Submission, self.id)
            if submission is not None:
                record_event(
                    session,
                    submission,
                    kind,
                    service=SERVICE,
                    message=message,
                    payload=payload or {},
                    parent=self.delivery.envelope,
                )

    async def descriptor(self) -> tuple[Descriptor, bytes]:
        ref = self.ref
        self.log.step(f"reading the descriptor {ref.upload_filename}")
        try:
            text = await self.services.storage.read_bytes(ref.upload_key)
        except FileNotFoundError:
            raise JobFailed(
                STAGE, f"the descriptor {ref.upload_key} is no longer in storage"
            ) from None
        if ref.upload_sha256 and hashlib.sha256(text).hexdigest() != ref.upload_sha256:
            raise JobFailed(STAGE, f"the stored descriptor {ref.upload_key} changed since upload")
        values = dict(ref.meta.get("values") or {})
        try:
            descriptor = resolved_descriptor(text, ref.upload_filename or "descriptor", values)
        except DescriptorError as exc:
            raise JobFailed(STAGE, exc.message) from None
        if values:
            self.log.write(f"range values: {values}\n")
        return descriptor, descriptor_toml(descriptor)

    async def scripts(self) -> tuple[Path | None, Path | None, str | None]:
        """The unpacked scripts folder, the normalised tar and its sha256 (Nones without)."""
        meta = self.ref.meta.get("scripts")
        if not meta:
            return None, None, None
        source = self.work / "upload" / Path(meta["key"]).name
        self.log.step(f"fetching the scripts {meta['key']}")
        try:
            await self.services.storage.download(meta["key"], source)
        except FileNotFoundError:
            raise JobFailed(STAGE, f"the scripts {meta['key']} are no longer in storage") from None
        limits = BundleLimits(max_archive_bytes=self.services.settings.max_upload_bytes)
        bundle = await asyncio.to_thread(
            open_bundle, source, self.work, name=source.name, limits=limits, strip_folder=False
        )
        self.log.write(f"scripts: {len(bundle.files)} files\n")
        tar = self.work / "build" / "scripts.tar"
        sha = await asyncio.to_thread(normalised_tar, bundle.root, tar)
        return bundle.root, tar, sha

    def environment(self, descriptor: Descriptor, scripts: Path | None) -> tuple[Any, str | None]:
        text = requirements_text(descriptor, scripts)
        if text is None:
            return None, None
        requirements = self.work / "requirements.txt"
        requirements.write_text(text, encoding="utf-8")
        root = envs_root(self.services.storage, self.services.settings.home)
        env = ensure_env(requirements, envs_root=root, log=self.log, timeout=PIP_TIMEOUT_SECONDS)
        shutil.copyfile(requirements, self.work / "build" / "requirements.txt")
        return env, env.sha256

    def _progress(self, src: str) -> Any:
        """A fetch's progress, told in the timeline now and then for a large file."""
        last = [0.0]

        async def progress(done: int, total: int | None) -> None:
            now = time.monotonic()
            if (total or done) < PROGRESS_MIN_BYTES or now - last[0] < PROGRESS_EVERY_SECONDS:
                return
            last[0] = now
            share = f" of {total}" if total else ""
            await self.event(
                "data.progress",
                f"fetching {src}: {done}{share} bytes",
                {"src": src, "bytes": done, "total": total},
            )

        return progress

    async def data(self, descriptor: Descriptor) -> list[DataRef]:
        refs = []
        for index, source in enumerate(descriptor.data.sources):
            where = f"data.sources[{index}]"
            self.log.step(f"fetching {source.src}")
            try:
                fetched = await fetch_source(
                    self.services.db,
                    self.services.storage,
                    source.fetch_spec(),
                    policy=FetchPolicy(allow_hosts=self.services.settings.data_allow_host_names()),
                    progress=self._progress(source.src),
                )
            except FetchError as exc:
                raise JobFailed(STAGE, f"{where}: {exc}") from None
            how = "from the cache" if fetched.cached else "downloaded"
            self.log.write(f"{source.src}: {fetched.size} bytes, sha256 {fetched.sha256} ({how})\n")
            await self.event(
                "data.fetched",
                f"{source.src}: {fetched.size} bytes, {how}",
                {"src": source.src, "key": fetched.key, "cached": fetched.cached},
            )
            refs.append(
                DataRef(
                    key=fetched.key,
                    sha256=fetched.sha256,
                    size=fetched.size,
                    path=source.path,
                    src=source.src,
                )
            )
        return refs

    async def run(self) -> BenchmarkMessage | None:
        """Prepare everything; the message for the evaluator (None: failed, recorded)."""
        descriptor, toml = await self.descriptor()
        storage = self.services.storage
        stored = await storage.write_bytes(build_key(self.id, "descriptor.toml"), toml)
        scripts, tar, scripts_sha = await self.scripts()
        env, requirements_sha = await asyncio.to_thread(self.environment, descriptor, scripts)
        data = await self.data(descriptor)
        isolated = current_jail().isolated
        self.warnings = descriptor.local_warnings(
            docker=False,
            gpus=len(gpu_devices()),
            sagemaker=self.services.settings.runner == "sagemaker",
        )
        if descriptor.environment.native_packages:
            self.warnings.append(
                "environment.native_packages: not installed on a local run (the machine's own "
                f"packages are used): {', '.join(descriptor.environment.native_packages)}"
            )
        for warning in self.warnings:
            self.log.write(f"warning: {warning}\n")
            await self.event("benchmark.warning", warning, {"isolated": isolated})
        scripts_key = None
        if tar is not None:
            scripts_key = build_key(self.id, "scripts.tar")
            await storage.write_file(scripts_key, tar)
        self.log.close()
        log_key = build_key(self.id, "log")
        await storage.write_file(log_key, self.log.path)
        return BenchmarkMessage(
            submission=self.ref,
            owner=self.payload.owner,
            benchmark=BenchmarkRef(
                descriptor_key=stored.key,
                descriptor_sha256=stored.sha256,
                scripts_key=scripts_key,
                scripts_sha256=scripts_sha,
                env_key=env.key if env is not None else None,
                requirements_sha256=requirements_sha,
                log_key=log_key,
                warnings=self.warnings,
            ),
            data=data,
            values=dict(self.ref.meta.get("values") or {}),
        )


async def build_benchmark_submission(
    services: Services,
    delivery: Delivery,
    payload: Any,
    config: Any,
    *,
    builder: Any,
    options: Any,
) -> None:
    """A benchmark or inspection: build it (see the module docstring), hand it to its fleet."""
    from builder.worker import _fail, _locked_submission

    build = BenchmarkBuild(services, delivery, payload)
    build.work.mkdir(parents=True, exist_ok=True)
    try:
        try:
            message = await build.run()
        except JobFailed as exc:
            build.log.step(f"build failed: {exc.reason}")
            build.log.close()
            log_key = build_key(build.id, "log")
            await services.storage.write_file(log_key, build.log.path)
            await _fail(services, build.id, exc.reason, delivery=delivery, log_key=log_key)
            return
        if message is None:
            return
        async with services.db.session() as session:
            submission = await _locked_submission(session, build.id)
            if submission is None or submission.status != Status.BUILDING:
                return
            transition(
                session,
                submission,
                Status.BUILT,
                service=SERVICE,
                message=(
                    f"ready: {len(message.data)} data source(s), "
                    f"{'an environment' if message.benchmark.env_key else 'the service python'}"
                    f"{', scripts' if message.benchmark.scripts_key else ''}"
                ),
                payload=message.benchmark.model_dump(mode="json"),
                parent=delivery.envelope,
            )
            envelope = delivery.envelope.follow(
                BenchmarkMessage.TYPE, payload_of(message), service=SERVICE
            )
            await services.outbox.stage(session, eval_queue(FLEET), envelope)
    finally:
        build.log.close()
        await asyncio.to_thread(shutil.rmtree, build.work, True)
