"""Where `weighbridge login` keeps the server URL and token: the user's config dir, mode 0600.

`$XDG_CONFIG_HOME/weighbridge/config.json` (or `~/.config/weighbridge/config.json`);
WEIGHBRIDGE_URL and WEIGHBRIDGE_TOKEN in the environment override what is stored.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from cli.errors import CliError, UsageError

FILE_MODE = 0o600
DIR_MODE = 0o700


class ClientSettings(BaseSettings):
    """The environment a client command reads (the server's settings live in core.settings)."""

    model_config = SettingsConfigDict(env_prefix="WEIGHBRIDGE_", extra="ignore")

    url: str = ""
    token: str = ""
    # XDG's variable, without our prefix; relative values are ignored, as the spec says.
    config_home: str = Field(default="", validation_alias="XDG_CONFIG_HOME")

    def config_path(self) -> Path:
        base = Path(self.config_home) if self.config_home else None
        if base is None or not base.is_absolute():
            base = Path.home() / ".config"
        return base / "weighbridge" / "config.json"


@dataclass(frozen=True)
class Login:
    """The server and token a client command talks to, and where each came from."""

    url: str
    token: str
    url_from: str
    token_from: str


def normalize_url(url: str) -> str:
    """`host:8000/api/v1/` -> `http://host:8000` (the client adds the API prefix itself)."""
    url = url.strip().rstrip("/")
    if not url:
        raise UsageError("the server URL is empty")
    if "://" not in url:
        url = "http://" + url
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"{url!r} is not an http(s) URL")
    url = url.removesuffix("/api/v1")
    return url.rstrip("/")


def read_config(path: Path) -> dict[str, str]:
    """The stored login ({} when nobody logged in yet)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise CliError(
            f"{path} is not valid JSON",
            hint="log in again with `weighbridge login --url URL --token TOKEN`",
        ) from None
    if not isinstance(data, dict):
        raise CliError(f"{path} does not hold a JSON object")
    return {k: v for k, v in data.items() if isinstance(v, str)}


def write_config(path: Path, *, url: str, token: str) -> Path:
    """Store url + token atomically; the file is created 0600 so no one else can read it."""
    path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    try:
        data = {**read_config(path), "url": url, "token": token}
    except CliError:  # a broken file is replaced, not a reason to refuse a fresh login
        data = {"url": url, "token": token}
    fd, tmp = tempfile.mkstemp(prefix=".config-", suffix=".json", dir=path.parent)
    try:
        # mkstemp already opens the file 0600; chmod is for umasks and filesystems that ignore it.
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def resolve_login(settings: ClientSettings | None = None, *, need_token: bool = True) -> Login:
    """The URL and token to use: the environment first, then the stored login."""
    settings = settings or ClientSettings()
    path = settings.config_path()
    stored = read_config(path)
    url, url_from = settings.url, "WEIGHBRIDGE_URL"
    if not url:
        url, url_from = stored.get("url", ""), str(path)
    token, token_from = settings.token, "WEIGHBRIDGE_TOKEN"
    if not token:
        token, token_from = stored.get("token", ""), str(path)
    hint = "run `weighbridge login --url URL --token TOKEN` (or set WEIGHBRIDGE_URL)"
    if not url:
        raise UsageError("not logged in: no server URL", hint=hint)
    if need_token and not token:
        raise UsageError("not logged in: no API token", hint=hint)
    return Login(url=normalize_url(url), token=token, url_from=url_from, token_from=token_from)
