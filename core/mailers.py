"""Mailers: how an email leaves (an outbox folder, SMTP), chosen by URL; the RFC 5322 message.

`mailer_from_url(WEIGHBRIDGE_EMAIL_URL)` picks the backend: `file:///dir` writes
`<message id>.eml` atomically, `smtp://user:pass@host:port?starttls=1` (or `smtps://`) sends
through aiosmtplib. A mailer raises when the message was not sent; PermanentMailError says
the server refused it for good (5xx), so it is not retried.
"""

from __future__ import annotations

import asyncio
import os
import re
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import format_datetime, parseaddr
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, unquote, urlparse

from core.errors import WeighbridgeError
from core.models import Notification, utcnow


def _domain(sender: str) -> str:
    address = parseaddr(sender)[1]
    return address.rpartition("@")[2] or "weighbridge.local"


def build_email(notification: Notification, *, sender: str) -> EmailMessage:
    """The RFC 5322 message of a notification: multipart/alternative, deterministic Message-ID."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = notification.to_address
    message["Subject"] = notification.subject
    message["Date"] = format_datetime(notification.created_at or utcnow())
    message["Message-ID"] = f"<{notification.message_id}@{_domain(sender)}>"
    message["Auto-Submitted"] = "auto-generated"
    if notification.submission_id:
        message["X-Weighbridge-Submission"] = notification.submission_id
    message.set_content(notification.body_text)
    if notification.body_html:
        message.add_alternative(notification.body_html, subtype="html")
    return message


class Mailer(Protocol):
    """Sends one message; raising means it was not sent (it will be retried)."""

    url: str

    async def send(self, message: EmailMessage) -> None: ...
    async def close(self) -> None: ...


class PermanentMailError(Exception):
    """The mail server refused the message for good (5xx): retrying cannot help."""


class FileMailer:
    """Writes each message to `<folder>/<message id>.eml` (atomically); the local outbox."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder.absolute()
        self.url = f"file://{self.folder}"

    def path_for(self, message: EmailMessage) -> Path:
        raw = str(message["Message-ID"] or "").strip("<>").partition("@")[0]
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", raw) or "message"
        return self.folder / f"{name}.eml"

    def _write(self, target: Path, data: bytes) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{id(data)}.part")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    async def send(self, message: EmailMessage) -> None:
        data = message.as_bytes(policy=SMTP_POLICY)
        await asyncio.to_thread(self._write, self.path_for(message), data)

    async def close(self) -> None:
        return None


class SmtpMailer:
    """SMTP through aiosmtplib: `smtp://user:pass@host:port?starttls=1`, `smtps://` for TLS."""

    def __init__(
        self,
        hostname: str,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
        start_tls: bool | None = None,
        use_tls: bool = False,
        validate_certs: bool = True,
        timeout: float = 30.0,
        url: str = "",
    ) -> None:
        self.hostname = hostname
        self.port = port
        self.username = username
        self.password = password
        self.start_tls = start_tls
        self.use_tls = use_tls
        self.validate_certs = validate_certs
        self.timeout = timeout
        self.url = url or f"smtp://{hostname}:{port}"

    async def send(self, message: EmailMessage) -> None:
        import aiosmtplib

        try:
            await aiosmtplib.send(
                message,
                hostname=self.hostname,
                port=self.port,
                username=self.username,
                password=self.password,
                start_tls=self.start_tls,
                use_tls=self.use_tls,
                validate_certs=self.validate_certs,
                timeout=self.timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            if codes and all(500 <= c < 600 for c in codes):
                raise PermanentMailError(f"recipients refused: {exc}") from exc
            raise
        except aiosmtplib.SMTPResponseException as exc:
            if 500 <= exc.code < 600 and not isinstance(exc, aiosmtplib.SMTPAuthenticationError):
                raise PermanentMailError(f"{exc.code} {exc.message}") from exc
            raise

    async def close(self) -> None:
        return None


def _flag(query: dict[str, list[str]], name: str) -> bool | None:
    values = query.get(name)
    if not values:
        return None
    return values[-1].strip().lower() in ("1", "true", "yes", "on")


def mailer_from_url(url: str) -> Mailer:
    """The mailer for WEIGHBRIDGE_EMAIL_URL: `file:///dir`, `smtp://…` or `smtps://…`."""
    parsed = urlparse(url)
    scheme = parsed.scheme
    if scheme == "file":
        return FileMailer(Path(unquote(parsed.netloc + parsed.path)))
    if scheme in ("smtp", "smtps"):
        if not parsed.hostname:
            raise WeighbridgeError(
                f"email URL {url!r} names no host; use smtp://user:pass@host:port?starttls=1",
                field="WEIGHBRIDGE_EMAIL_URL",
            )
        query = parse_qs(parsed.query)
        use_tls = scheme == "smtps"
        start_tls = _flag(query, "starttls")
        default_port = 465 if use_tls else (587 if start_tls else 25)
        timeout = float(query.get("timeout", ["30"])[-1])
        validate = _flag(query, "validate_certs")
        safe = f"{scheme}://{parsed.hostname}:{parsed.port or default_port}"
        return SmtpMailer(
            parsed.hostname,
            parsed.port or default_port,
            username=unquote(parsed.username) if parsed.username else None,
            password=unquote(parsed.password) if parsed.password else None,
            start_tls=start_tls,
            use_tls=use_tls,
            validate_certs=True if validate is None else validate,
            timeout=timeout,
            url=safe,
        )
    if scheme == "ses":
        raise WeighbridgeError(
            "the SES email backend is not part of this build; use smtp:// (SES offers an SMTP "
            "interface) or file://",
            field="WEIGHBRIDGE_EMAIL_URL",
        )
    raise WeighbridgeError(
        f"unknown email URL scheme {scheme!r}; use file:///dir, smtp://user:pass@host:port"
        "?starttls=1 or smtps://…",
        field="WEIGHBRIDGE_EMAIL_URL",
    )
