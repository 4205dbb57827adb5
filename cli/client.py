"""The HTTP client every remote command uses: base URL + token, errors turned into messages."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import httpx

from cli.config import Login, resolve_login
from cli.errors import CliError
from cli.render import fmt_seconds, fmt_time, parse_time

API = "/api/v1"
TIMEOUT = httpx.Timeout(30.0, connect=10.0)


class ApiError(CliError):
    """The server answered with an error: its message, shown as is, and exit code 1."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str = "",
        field: str | None = None,
        body: dict[str, Any] | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.code = code
        self.field = field
        self.body = body or {}


def error_from_response(response: httpx.Response) -> ApiError:
    """`{"error": {"code", "message", "field"?}}` -> ApiError; anything else still reads well."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        message = str(error["message"])
        code = str(error.get("code", ""))
        field = error.get("field")
    else:
        text = " ".join(response.text.split())[:200] or response.reason_phrase
        message = f"the server answered HTTP {status}: {text}"
        code, field, error = "", None, {}
    hint = None
    if status == 401:
        hint = "log in with `weighbridge login --url URL --token TOKEN`"
    elif status == 429 and error and "opens in" not in message:
        # Servers that do not say when in words get it said here.
        hint = _retry_hint(error)
    return ApiError(message, status=status, code=code, field=field, body=error, hint=hint)


def _retry_hint(error: dict[str, Any]) -> str | None:
    """ "try again in 23 h 58 min (at 2026-12-07 08:01 UTC)" from a 429's extra fields."""
    wait = error.get("retry_after_seconds")
    at = error.get("next_slot_at")
    when = f"at {fmt_time(at)}" if parse_time(at) is not None else None
    if isinstance(wait, int | float) and not isinstance(wait, bool):
        return f"try again in {fmt_seconds(wait)}" + (f" ({when})" if when else "")
    return f"try again {when}" if when else None


class Client:
    """A thin synchronous client for /api/v1 (one process, one user, short-lived)."""

    def __init__(
        self,
        url: str,
        token: str = "",
        *,
        timeout: httpx.Timeout | float = TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        from cli import __version__

        headers = {"User-Agent": f"weighbridge-cli/{__version__}", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.url = url
        self.http = httpx.Client(
            base_url=url, headers=headers, timeout=timeout, transport=transport
        )

    @classmethod
    def from_login(cls, login: Login | None = None, *, need_token: bool = True) -> Client:
        login = login or resolve_login(need_token=need_token)
        return cls(login.url, login.token)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        content: Iterable[bytes] | bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: httpx.Timeout | float | None = None,
    ) -> httpx.Response:
        """The raw answer (any status); connection faults become a CliError."""
        kwargs: dict[str, Any] = {"params": params, "json": json, "headers": headers}
        if content is not None:
            kwargs["content"] = content
        if timeout is not None:
            kwargs["timeout"] = timeout
        try:
            return self.http.request(method, API + path, **kwargs)
        except httpx.TimeoutException:
            raise CliError(f"the server at {self.url} did not answer in time") from None
        except httpx.TransportError as exc:
            raise CliError(
                f"cannot reach the Weighbridge server at {self.url} ({_reason(exc)})",
                hint="is it running? start one with `weighbridge up`, "
                "or log in to another with `weighbridge login`",
            ) from None

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """The decoded JSON answer, or ApiError with the server's message."""
        response = self.send(method, path, **kwargs)
        if response.is_error:
            raise error_from_response(response)
        try:
            return response.json()
        except ValueError:
            raise CliError(
                f"the server at {self.url} answered {method} {API}{path} with something "
                "other than JSON; is this a Weighbridge server?"
            ) from None

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)


def _reason(exc: httpx.TransportError) -> str:
    text = str(exc) or type(exc).__name__
    # httpx repeats the OS error verbatim ("[Errno 111] Connection refused"); keep the words.
    return text.split("] ", 1)[-1]
