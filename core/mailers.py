"""Mailers: how an email leaves (an outbox folder, SMTP, SES), chosen by URL; the RFC 5322
message.

`mailer_from_url(WEIGHBRIDGE_EMAIL_URL)` picks the backend: `file:///dir` writes
`<message id>.eml` atomically, `smtp://user:pass@host:port?starttls=1` (or `smtps://`) sends
through aiosmtplib, `ses://?region=…` sends the same raw message through SES's API (aioboto3).
A mailer raises when the message was not sent; PermanentMailError says the server refused it
for good (SMTP 5xx, SES MessageRejected and the like), so it is not retried.
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


# SES asks for 7-bit content: parts with other characters go base64-encoded (same text).
SES_POLICY = SMTP_POLICY.clone(cte_type="7bit")
# SES errors that say the message (or this account or sender) is refused for good: retrying
# the same message cannot help. Throttling, quotas, 5xx and network faults are retried.
SES_PERMANENT = frozenset(
    {
        "MessageRejected",
        "MailFromDomainNotVerifiedException",
        "MailFromDomainNotVerified",
        "AccountSuspendedException",
        "SendingPausedException",
        "AccountSendingPausedException",
        "ConfigurationSetSendingPausedException",
        "BadRequestException",
        "NotFoundException",
        "InvalidParameterValue",
    }
)


class SesMailer:
    """Amazon SES (API v2) through aioboto3: `ses://`, `ses://?region=eu-west-1`, optionally
    `&configuration_set=NAME`; the raw RFC 5322 message goes as it is (same parts, same
    Message-ID; non-ASCII parts base64-encoded, as SES asks), its sender and recipients taken
    from its From and To headers."""

    def __init__(
        self,
        *,
        region: str = "us-east-1",
        endpoint_url: str | None = None,
        configuration_set: str | None = None,
    ) -> None:
        from core.aws import AwsClients

        self.region = region
        self.configuration_set = configuration_set
        self._aws = AwsClients(endpoint_url=endpoint_url, region=region)
        self.url = f"ses://?region={region}" + (
            f"&configuration_set={configuration_set}" if configuration_set else ""
        )

    async def send(self, message: EmailMessage) -> None:
        from core.aws import error_code, error_message

        client = await self._aws.client("sesv2")
        extra = {"ConfigurationSetName": self.configuration_set} if self.configuration_set else {}
        try:
            await client.send_email(
                Content={"Raw": {"Data": message.as_bytes(policy=SES_POLICY)}}, **extra
            )
        except Exception as exc:
            if error_code(exc) in SES_PERMANENT:
                raise PermanentMailError(f"SES refused the message: {error_message(exc)}") from exc
            raise

    async def close(self) -> None:
        await self._aws.close()


def _flag(query: dict[str, list[str]], name: str) -> bool | None:
    values = query.get(name)
    if not values:
        return None
    return values[-1].strip().lower() in ("1", "true", "yes", "on")


def mailer_from_url(
    url: str, *, endpoint_url: str | None = None, region: str = "us-east-1"
) -> Mailer:
    """The mailer for WEIGHBRIDGE_EMAIL_URL: `file:///dir`, `smtp://…`, `smtps://…` or `ses://`
    (in `region`, or the URL's `?region=`, at `endpoint_url` when set: moto, LocalStack)."""
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
        query = parse_qs(parsed.query)
        unknown = sorted(set(query) - {"region", "configuration_set"})
        if parsed.netloc or parsed.path.strip("/") or unknown:
            raise WeighbridgeError(
                f"email URL {url!r}: SES takes only ?region=…&configuration_set=… "
                "(e.g. ses://?region=eu-west-1); the sender is WEIGHBRIDGE_EMAIL_FROM",
                field="WEIGHBRIDGE_EMAIL_URL",
            )
        return SesMailer(
            region=query.get("region", [region])[-1].strip() or region,
            endpoint_url=endpoint_url,
            configuration_set=query.get("configuration_set", [""])[-1].strip() or None,
        )
    raise WeighbridgeError(
        f"unknown email URL scheme {scheme!r}; use file:///dir, smtp://user:pass@host:port"
        "?starttls=1, smtps://… or ses://",
        field="WEIGHBRIDGE_EMAIL_URL",
    )
