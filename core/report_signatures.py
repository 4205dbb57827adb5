"""Signed reports of remote workers: `X-Weighbridge-Signature: hex(HMAC-SHA256(secret, body))`.

Shared by the API (core.remote_jobs checks) and the worker (evaluator.remote_worker signs),
which imports nothing of the database.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Weighbridge-Signature"


def sign_report(secret: str, body: bytes) -> str:
    """What a worker sends in X-Weighbridge-Signature with `body`."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_matches(secret: str, body: bytes, signature: str | None) -> bool:
    return bool(signature) and hmac.compare_digest(
        sign_report(secret, body), str(signature).strip().lower()
    )
