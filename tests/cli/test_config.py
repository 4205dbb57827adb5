"""Where the login is stored, who can read it, and what overrides it."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from cli.config import ClientSettings, normalize_url, resolve_login, write_config
from cli.errors import USAGE, CliError


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ClientSettings:
    for name in ("WEIGHBRIDGE_URL", "WEIGHBRIDGE_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    return ClientSettings()


def test_login_is_written_to_the_xdg_config_dir_readable_only_by_the_user(
    settings: ClientSettings, tmp_path: Path
) -> None:
    path = write_config(settings.config_path(), url="http://h:1", token="wb_secret")

    assert path == tmp_path / "xdg" / "weighbridge" / "config.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert json.loads(path.read_text()) == {"url": "http://h:1", "token": "wb_secret"}
    login = resolve_login(settings)
    assert (login.url, login.token) == ("http://h:1", "wb_secret")


def test_without_xdg_config_home_the_file_is_under_dot_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert ClientSettings().config_path() == tmp_path / ".config" / "weighbridge" / "config.json"


def test_environment_overrides_the_stored_login(
    settings: ClientSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(settings.config_path(), url="http://stored:1", token="wb_stored")
    monkeypatch.setenv("WEIGHBRIDGE_TOKEN", "wb_env")
    login = resolve_login(ClientSettings())
    assert (login.url, login.token, login.token_from) == (
        "http://stored:1",
        "wb_env",
        "WEIGHBRIDGE_TOKEN",
    )
    monkeypatch.setenv("WEIGHBRIDGE_URL", "other:9/api/v1/")
    assert resolve_login(ClientSettings()).url == "http://other:9"


def test_not_logged_in_is_a_usage_error(settings: ClientSettings) -> None:
    with pytest.raises(CliError) as caught:
        resolve_login(settings)
    assert caught.value.exit_code == USAGE
    assert "weighbridge login" in (caught.value.hint or "")


def test_a_corrupt_config_is_replaced_by_the_next_login(settings: ClientSettings) -> None:
    path = settings.config_path()
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(CliError, match="not valid JSON"):
        resolve_login(settings)
    write_config(path, url="http://h:2", token="t")
    assert resolve_login(settings).url == "http://h:2"


@pytest.mark.parametrize("bad", ["", "ftp://host"])
def test_normalize_url_refuses_what_is_not_http(bad: str) -> None:
    with pytest.raises(CliError):
        normalize_url(bad)
