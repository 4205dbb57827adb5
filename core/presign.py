"""Presigned links: a URL that reads (GET) or writes (PUT) one storage key, without any other
credentials, until it expires.

A storage that can sign links itself (S3) makes them; for one that cannot (the local folder)
the API serves the object at `/api/v1/blobs/<key>?expires=…&method=…&signature=…`, where the
signature is HMAC-SHA256 over `"<method>\\n<key>\\n<expires>"` with the service's secret key
(`WEIGHBRIDGE_SECRET_KEY`, else a random key kept in `$WEIGHBRIDGE_HOME/secret_key`).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlencode

from core.errors import Forbidden, WeighbridgeError
from core.settings import Settings
from core.storage import Storage, check_key

Method = Literal["GET", "PUT"]
METHODS: tuple[str, ...] = ("GET", "PUT")
BLOBS_PATH = "/api/v1/blobs"
SECRET_FILE = "secret_key"
MAX_SECONDS = 7 * 24 * 3600  # S3's own limit for a presigned URL


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise WeighbridgeError(
            f"a presigned link is for GET or PUT, not {method!r}", field="method"
        )
    return method


def _check_seconds(seconds: int) -> int:
    if not 1 <= seconds <= MAX_SECONDS:
        raise WeighbridgeError(
            f"a presigned link lasts 1 to {MAX_SECONDS} seconds, not {seconds}", field="seconds"
        )
    return seconds


def sign(secret: str, *, method: str, key: str, expires: int) -> str:
    """The hex HMAC-SHA256 of `method`, `key` and `expires` under `secret`."""
    if not secret:
        raise WeighbridgeError(
            "no secret key to sign links with; set WEIGHBRIDGE_SECRET_KEY",
            field="WEIGHBRIDGE_SECRET_KEY",
        )
    text = f"{method}\n{key}\n{expires}".encode()
    return hmac.new(secret.encode(), text, hashlib.sha256).hexdigest()


def signed_url(public_url: str, key: str, *, method: str, expires: int, secret: str) -> str:
    """The API-served link for `key` (the folder storage's presigned URL)."""
    check_key(key)
    query = urlencode(
        {
            "expires": expires,
            "method": method,
            "signature": sign(secret, method=method, key=key, expires=expires),
        }
    )
    return f"{public_url.rstrip('/')}{BLOBS_PATH}/{quote(key, safe='/')}?{query}"


async def presigned_url(
    storage: Storage,
    key: str,
    *,
    method: Method = "GET",
    seconds: int = 900,
    public_url: str,
    secret: str,
) -> str:
    """A link that reads (GET) or writes (PUT) `key` for `seconds`: the storage's own (S3),
    else one the API at `public_url` serves and checks against `secret`."""
    check_key(key)
    _check_method(method)
    _check_seconds(seconds)
    own = await storage.presigned_url(key, method=method, seconds=seconds)
    if own is not None:
        return own
    expires = int(time.time()) + seconds
    return signed_url(public_url, key, method=method, expires=expires, secret=secret)


def verify_signature(
    secret: str,
    *,
    method: str,
    key: str,
    expires: str | int | None,
    signature: str | None,
    now: float | None = None,
) -> None:
    """Refuse (403) a link whose signature does not match or whose time is up."""
    check_key(key)
    if method not in METHODS:
        raise Forbidden(f"a signed link is for GET or PUT, not {method}", field="method")
    text = str(expires if expires is not None else "")
    if not text.isdigit() or not signature:
        raise Forbidden(
            "this link is incomplete (it needs expires and signature): ask for a new one",
            code="bad_signature",
            field="signature",
        )
    expected = sign(secret, method=method, key=key, expires=int(text))
    if not hmac.compare_digest(expected, signature.strip().lower()):
        raise Forbidden(
            "the link's signature does not match its key and method: ask for a new link",
            code="bad_signature",
            field="signature",
        )
    if int(text) < (time.time() if now is None else now):
        raise Forbidden(
            "this link has expired: ask for a new one", code="link_expired", field="expires"
        )


def secret_key(settings: Settings) -> str:
    """WEIGHBRIDGE_SECRET_KEY, else the key in `$WEIGHBRIDGE_HOME/secret_key` (made once, mode
    0600, shared by every process with that home)."""
    if settings.secret_key:
        return settings.secret_key
    return _home_secret(settings.home / SECRET_FILE)


def _home_secret(path: Path) -> str:
    try:
        kept = path.read_text().strip()
    except FileNotFoundError:
        kept = ""
    if kept:
        return kept
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        # A link never replaces: the first process to make the key wins, the rest read it.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    kept = path.read_text().strip()
    if not kept:
        raise WeighbridgeError(
            f"the secret key file {path} is empty: delete it (a new key is made) or set "
            "WEIGHBRIDGE_SECRET_KEY",
            field="WEIGHBRIDGE_SECRET_KEY",
        )
    return kept
