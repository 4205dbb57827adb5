"""Where the builder's virtualenvs live on a host, and how a receiver finds one by its key.

An env is named in messages by its storage-style key `envs/<requirements sha256>`, never by
path; each host resolves the key under its own envs root (builder/environments.py builds them).
"""

from __future__ import annotations

import re
from pathlib import Path

from core.storage import Storage

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
