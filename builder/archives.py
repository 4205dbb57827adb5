"""Model archives: a checked model folder turned into `model.mar` by torch-model-archiver.

torch-model-archiver runs as a subprocess from the builder's own bin folder, with a private
TMPDIR (it stages files in `$TMPDIR/<model name>`, which concurrent builds would otherwise
share). Files other than the handler, the weights and requirements.txt go in through one
staging folder given to `--extra-files`, which keeps sub-folders intact (the archiver flattens
a sub-folder named directly) and survives file names with commas.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import sys
import zipfile
from pathlib import Path

from builder.bundle import MANIFEST
from builder.processes import BuildLog, last_line
from core.errors import JobFailed

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".onnx", ".pkl", ".joblib")
REQUIREMENTS = "requirements.txt"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-.]*$")


def safe_model_name(name: str, *, fallback: str = "model") -> str:
    """A name torch-model-archiver accepts (`^[A-Za-z0-9][A-Za-z0-9_\\-.]*$`), ≤ 64 chars."""
    cleaned = re.sub(r"[^A-Za-z0-9_\-.]+", "-", name).strip("-._")[:64].rstrip("-._")
    return cleaned if _NAME.match(cleaned) else fallback


def archiver_version() -> str | None:
    try:
        return importlib.metadata.version("torch-model-archiver")
    except importlib.metadata.PackageNotFoundError:
        return None


def archiver_command() -> list[str]:
    """torch-model-archiver from the interpreter's bin folder (the builder's venv)."""
    script = Path(sys.executable).parent / "torch-model-archiver"
    if script.exists():
        return [str(script)]
    found = shutil.which("torch-model-archiver")
    if found:
        return [found]
    return [sys.executable, "-m", "model_archiver.model_packaging"]


def find_serialized_file(model_dir: Path) -> str | None:
    """The top-level weights file, if any: `model.*` first, then the largest."""
    weights = [
        p for p in model_dir.iterdir() if p.is_file() and p.name.lower().endswith(WEIGHT_SUFFIXES)
    ]
    if not weights:
        return None
    weights.sort(key=lambda p: (not p.name.lower().startswith("model"), -p.stat().st_size, p.name))
    return weights[0].name


def read_manifest(mar: Path) -> dict:
    """A .mar's MAR-INF/MANIFEST.json."""
    with zipfile.ZipFile(mar) as archive, archive.open(MANIFEST) as fh:
        return json.loads(fh.read(1024 * 1024))


def archive_model(
    model_dir: Path,
    *,
    model_name: str,
    handler: str,
    work: Path,
    log: BuildLog,
    timeout: float,
    version: str = "1.0",
) -> tuple[Path, dict, str | None]:
    """Run torch-model-archiver; returns (model.mar, its manifest, the serialized file)."""
    serialized = find_serialized_file(model_dir)
    handler_file = handler.split(":", 1)[0]
    kept_out = {handler_file, REQUIREMENTS, serialized}
    staging = work / "extra-files"
    export = work / "export"
    tmp = work / "archiver-tmp"
    for folder in (staging, export, tmp):
        folder.mkdir(parents=True)
    extras = 0
    for entry in sorted(model_dir.iterdir()):
        if entry.name in kept_out:
            continue
        _link_or_copy(entry, staging / entry.name)
        extras += 1
    command = [
        *archiver_command(),
        "--model-name",
        model_name,
        "--version",
        version,
        "--handler",
        handler,
        "--export-path",
        str(export),
        "--force",
    ]
    if serialized:
        command += ["--serialized-file", serialized]
    if extras:
        command += ["--extra-files", str(staging)]
    if (model_dir / REQUIREMENTS).is_file():
        command += ["--requirements-file", REQUIREMENTS]
    log.step("torch-model-archiver")
    run = log.run(
        command,
        cwd=model_dir,
        timeout=timeout,
        env={**os.environ, "TMPDIR": str(tmp), "PYTHONDONTWRITEBYTECODE": "1"},
    )
    produced = export / f"{model_name}.mar"
    if run.timed_out:
        raise JobFailed(
            "build",
            f"torch-model-archiver did not finish within {timeout:g} s",
            log_tail=run.tail,
        )
    if not run.ok or not produced.is_file():
        raise JobFailed(
            "build",
            f"torch-model-archiver failed (exit status {run.returncode}): "
            f"{last_line(run.tail) or 'no output'}",
            log_tail=run.tail,
        )
    mar = work / "model.mar"
    os.replace(produced, mar)
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        manifest = read_manifest(mar)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise JobFailed(
            "build", f"torch-model-archiver wrote an unreadable archive: {exc}"
        ) from None
    named = manifest.get("model", {}).get("handler")
    if named != handler:
        raise JobFailed(
            "build",
            f"the archive's manifest names the handler {named!r}, not {handler!r}",
        )
    log.write(f"wrote model.mar ({mar.stat().st_size} bytes)\n")
    return mar, manifest, serialized


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard-link files (same filesystem, no copy), copying where a link is not possible."""
    if source.is_dir():
        shutil.copytree(source, target, copy_function=_link_file)
    else:
        _link_file(source, target)


def _link_file(source: str | Path, target: str | Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
