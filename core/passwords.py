"""Password hashes for signing in to the website: scrypt (hashlib), compared in constant time."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from core.errors import WeighbridgeError

# scrypt's cost: 2**14 x 8 x 1 (about 16 MiB and tens of milliseconds a check).
N, R, P = 2**14, 8, 1
MIN_LENGTH = 10
MAX_LENGTH = 1024


def check_password_rules(password: str) -> str:
    if not MIN_LENGTH <= len(password) <= MAX_LENGTH:
        raise WeighbridgeError(
            f"a password must be {MIN_LENGTH} to {MAX_LENGTH} characters long",
            field="password",
        )
    return password


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * 1024 * 1024, dklen=32
    )


def hash_password(password: str) -> str:
    """`scrypt$N$r$p$salt$hash` (base64); the password itself is never kept."""
    check_password_rules(password)
    salt = secrets.token_bytes(16)
    return f"scrypt${N}${R}${P}${_b64(salt)}${_b64(_scrypt(password, salt, N, R, P))}"


# A hash to check against when the user has none, so that a miss costs as long as a hit.
_DUMMY = f"scrypt${N}${R}${P}${_b64(b'0' * 16)}${_b64(b'0' * 32)}"


def verify_password(password: str, stored: str | None) -> bool:
    """Whether `password` matches `stored` (False for no hash or a malformed one)."""
    text = stored or _DUMMY
    try:
        scheme, n, r, p, salt, digest = text.split("$")
        if scheme != "scrypt":
            return False
        got = _scrypt(password[:MAX_LENGTH], base64.b64decode(salt), int(n), int(r), int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, base64.b64decode(digest)) and stored is not None
