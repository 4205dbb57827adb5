"""The error hierarchy: what the caller did wrong, what may pass, and the rest."""

from __future__ import annotations


class WeighbridgeError(Exception):
    """A mistake of the caller's; rendered once as `{"error": {code, message, field}}`."""

    status: int = 400
    code: str = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        field: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.field = field
        self.headers = headers or {}
        self.extra = extra or {}

    def to_dict(self) -> dict:
        body: dict = {"code": self.code, "message": self.message}
        if self.field:
            body["field"] = self.field
        body.update(self.extra)
        return {"error": body}


class NotFound(WeighbridgeError):
    status = 404
    code = "not_found"


class Unauthorized(WeighbridgeError):
    status = 401
    code = "unauthorized"


class Forbidden(WeighbridgeError):
    status = 403
    code = "forbidden"


class Conflict(WeighbridgeError):
    status = 409
    code = "conflict"


class TooLarge(WeighbridgeError):
    status = 413
    code = "too_large"


class RateLimited(WeighbridgeError):
    status = 429
    code = "rate_limited"


class InvalidConfig(WeighbridgeError):
    """A task config or descriptor that cannot be used: names the file, field and reason."""

    status = 422
    code = "invalid_config"

    def __init__(self, path: str, field: str, reason: str) -> None:
        super().__init__(f"{path}: {field}: {reason}", field=field)
        self.path = path
        self.reason = reason


class RetryableError(Exception):
    """A passing fault (network, throttling): the message is retried with backoff."""


class JobFailed(Exception):
    """Work that cannot succeed as submitted; fails the submission with a stage and reason."""

    def __init__(self, stage: str, reason: str, *, log_tail: str = "", log_key: str = "") -> None:
        super().__init__(reason)
        self.stage = stage
        self.reason = reason
        self.log_tail = log_tail
        self.log_key = log_key
