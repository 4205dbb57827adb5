"""A built model archive (.mar, a zip) fetched from storage and extracted for the runner."""

from __future__ import annotations

import asyncio
import json
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from core.errors import JobFailed
from core.storage import Storage
from evaluator.runner import ModelSpec, file_sha256

MANIFEST = "MAR-INF/MANIFEST.json"


def extract_mar(archive: Path, target: Path) -> dict[str, Any]:
    """Unzip `archive` into `target` (refusing paths that leave it); returns the manifest."""
    try:
        with zipfile.ZipFile(archive) as mar:
            for member in mar.infolist():
                path = PurePosixPath(member.filename)
                if path.is_absolute() or ".." in path.parts:
                    raise JobFailed(
                        "evaluate",
                        f"the model archive holds an unsafe path {member.filename!r}",
                    )
            mar.extractall(target)
    except zipfile.BadZipFile as exc:
        raise JobFailed(
            "evaluate", f"the model archive is not a valid .mar (a zip file): {exc}"
        ) from None
    manifest_path = target / MANIFEST
    if not manifest_path.is_file():
        return {}
    try:
        return json.loads(manifest_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise JobFailed("evaluate", f"{MANIFEST} in the model archive is not JSON: {exc}") from None


async def fetch_model(
    storage: Storage,
    *,
    mar_key: str,
    scratch: Path,
    python: str | None,
    handler: str | None,
    name: str,
) -> tuple[ModelSpec, str]:
    """Download and extract the archive; returns how to run it and the archive's sha256."""
    archive = scratch / "model.mar"
    await storage.download(mar_key, archive)
    sha256 = await asyncio.to_thread(file_sha256, archive)
    model_dir = scratch / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    manifest = await asyncio.to_thread(extract_mar, archive, model_dir)
    archive.unlink()
    raw = manifest.get("model")
    model: dict[str, Any] = raw if isinstance(raw, dict) else {}
    spec = ModelSpec(
        model_dir=model_dir,
        handler=str(model.get("handler") or handler or "handler.py"),
        manifest=manifest,
        python=python,
        name=str(model.get("modelName") or name or "model"),
    )
    return spec, sha256
