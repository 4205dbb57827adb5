"""Delivering the outbox: file and SMTP mailers (a real aiosmtpd server), leases and retries."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from email import message_from_bytes
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from core.boards import rebuild_leaderboard
from core.context import Services
from core.errors import WeighbridgeError
from core.mailers import FileMailer, SmtpMailer, mailer_from_url
from core.models import Notification
from core.notifications import deliver_pending, queue_submission_email, run_mailer
from tests.conftest import free_port
from tests.notifications.conftest import make_owner, make_scored_submission, task_row


class Inbox:
    """An aiosmtpd handler that keeps what it receives, or answers DATA with `refuse`."""

    def __init__(self, refuse: str | None = None) -> None:
        self.refuse = refuse
        self.received: list[tuple[str, list[str], bytes]] = []
        self.attempts = 0

    async def handle_DATA(self, server, session, envelope) -> str:  # aiosmtpd calls it by this name
        self.attempts += 1
        if self.refuse:
            return self.refuse
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"

    def message_ids(self) -> list[str]:
        return [message_from_bytes(content)["Message-ID"] for _, _, content in self.received]


@pytest.fixture
def smtp_server() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


async def queue_emails(services: Services, count: int = 1) -> list[Notification]:
    notes = []
    async with services.db.session() as session:
        owner = await make_owner(session)
        task = await task_row(session, "toy")
        submissions = [
            await make_scored_submission(
                session,
                owner,
                task,
                {"test": {"accuracy": 0.5 + i / 100, "macro_f1": 0.5}},
                name=f"model-{i}",
            )
            for i in range(count)
        ]
        # Ranked on the stored board, so no email waits for its rank (core.notifications).
        await rebuild_leaderboard(session, task, storage=None)
        for submission in submissions:
            notes.append(
                await queue_submission_email(
                    session, services.storage, submission, settings=services.settings
                )
            )
    return notes


async def rows(services: Services) -> list[Notification]:
    async with services.db.session() as session:
        return list(await session.scalars(sa.select(Notification).order_by(Notification.id)))


async def test_file_mailer_writes_parseable_eml(services: Services, tmp_path: Path) -> None:
    (note,) = await queue_emails(services)
    mailer = FileMailer(tmp_path / "outbox")
    assert await deliver_pending(services, mailer) == 1

    path = tmp_path / "outbox" / f"{note.message_id}.eml"
    message = BytesParser(policy=default_policy).parsebytes(path.read_bytes())
    assert message.get_content_type() == "multipart/alternative"
    assert message["Message-ID"] == f"<{note.message_id}@weighbridge.local>"
    assert message["To"] == "ada@example.org"
    assert message["From"] == services.settings.email_from
    assert "model-0" in message["Subject"]
    assert message["Date"]
    plain = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert plain is not None and "Toy classification" in plain.get_content()
    assert html is not None and "<html" in html.get_content()
    assert not list((tmp_path / "outbox").glob(".*.part"))

    (row,) = await rows(services)
    assert row.status == "sent" and row.sent_at is not None and row.attempts == 1
    stamp = path.stat().st_mtime_ns
    assert await deliver_pending(services, mailer) == 0  # nothing sent twice
    assert path.stat().st_mtime_ns == stamp


async def test_smtp_delivery_to_a_real_server(
    services: Services, smtp_server: tuple[Inbox, int]
) -> None:
    inbox, port = smtp_server
    notes = await queue_emails(services, 2)
    mailer = mailer_from_url(f"smtp://127.0.0.1:{port}?starttls=0")
    assert await deliver_pending(services, mailer) == 2
    assert len(inbox.received) == 2
    mail_from, rcpt, content = inbox.received[0]
    assert mail_from == "noreply@weighbridge.local" and rcpt == ["ada@example.org"]
    parsed = BytesParser(policy=default_policy).parsebytes(content)
    assert parsed["Message-ID"] == f"<{notes[0].message_id}@weighbridge.local>"
    assert parsed.get_body(preferencelist=("html",)) is not None
    assert {r.status for r in await rows(services)} == {"sent"}
    assert await deliver_pending(services, mailer) == 0
    assert len(inbox.received) == 2


async def test_smtp_with_login(services: Services) -> None:
    inbox = Inbox()
    seen: list[tuple[str, str]] = []

    def authenticator(server, session, envelope, mechanism, auth_data) -> AuthResult:
        seen.append((auth_data.login.decode(), auth_data.password.decode()))
        return AuthResult(success=auth_data.password == b"p@ss word")

    port = free_port()
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=port,
        authenticator=authenticator,
        auth_require_tls=False,
    )
    controller.start()
    try:
        await queue_emails(services)
        mailer = mailer_from_url(f"smtp://mailer:p%40ss%20word@127.0.0.1:{port}?starttls=0")
        assert await deliver_pending(services, mailer) == 1
    finally:
        controller.stop()
    assert seen == [("mailer", "p@ss word")]
    assert len(inbox.received) == 1


async def test_two_mailers_never_send_the_same_row(
    services: Services, smtp_server: tuple[Inbox, int]
) -> None:
    inbox, port = smtp_server
    notes = await queue_emails(services, 6)
    first = mailer_from_url(f"smtp://127.0.0.1:{port}")
    second = mailer_from_url(f"smtp://127.0.0.1:{port}")
    sent = await asyncio.gather(deliver_pending(services, first), deliver_pending(services, second))
    assert sum(sent) == 6
    assert sorted(inbox.message_ids()) == sorted(
        f"<{n.message_id}@weighbridge.local>" for n in notes
    )
    assert all(r.attempts == 1 and r.status == "sent" for r in await rows(services))


async def test_a_refusing_server_leads_to_retries_then_failed(services: Services) -> None:
    inbox = Inbox(refuse="451 4.3.0 mailbox busy, try again later")
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        await queue_emails(services)
        mailer = mailer_from_url(f"smtp://127.0.0.1:{port}")
        backoff = services.settings.retry_backoff_seconds
        assert await deliver_pending(services, mailer, max_attempts=3) == 0
        (row,) = await rows(services)
        assert row.status == "pending" and row.attempts == 1
        assert "451" in (row.last_error or "")
        assert row.available_at > time.time()  # backing off
        assert await deliver_pending(services, mailer, max_attempts=3) == 0
        assert inbox.attempts == 1  # not due yet
        for _ in range(2):
            await asyncio.sleep(backoff * 4 + 0.05)
            await deliver_pending(services, mailer, max_attempts=3)
    finally:
        controller.stop()
    (row,) = await rows(services)
    assert inbox.attempts == 3
    assert row.status == "failed" and row.attempts == 3 and row.sent_at is None
    assert "451" in (row.last_error or "") and "try again later" in (row.last_error or "")


async def test_a_permanent_refusal_fails_at_once(services: Services) -> None:
    inbox = Inbox(refuse="550 5.1.1 no such user")
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        await queue_emails(services)
        await deliver_pending(services, mailer_from_url(f"smtp://127.0.0.1:{port}"))
    finally:
        controller.stop()
    (row,) = await rows(services)
    assert row.status == "failed" and row.attempts == 1
    assert "550" in (row.last_error or "")


async def test_an_unreachable_server_is_retried(services: Services) -> None:
    await queue_emails(services)
    mailer = mailer_from_url(f"smtp://127.0.0.1:{free_port()}?timeout=2")
    assert await deliver_pending(services, mailer) == 0
    (row,) = await rows(services)
    assert row.status == "pending" and row.attempts == 1 and row.last_error


async def test_a_crash_after_the_claim_is_redelivered_after_the_lease(
    services: Services, tmp_path: Path
) -> None:
    (note,) = await queue_emails(services)

    class Crashing:
        url = "crash://"

        async def send(self, message: EmailMessage) -> None:
            raise asyncio.CancelledError  # the process stops mid-send

        async def close(self) -> None:
            return None

    with pytest.raises(asyncio.CancelledError):
        await deliver_pending(services, Crashing(), lease_seconds=0.2)
    (row,) = await rows(services)
    assert row.status == "pending" and row.attempts == 1  # claimed, not sent, not failed
    mailer = FileMailer(tmp_path)
    assert await deliver_pending(services, mailer) == 0  # still leased
    await asyncio.sleep(0.3)
    assert await deliver_pending(services, mailer) == 1
    assert (tmp_path / f"{note.message_id}.eml").exists()


async def test_run_mailer_delivers_until_stopped(services: Services, tmp_path: Path) -> None:
    stop = asyncio.Event()
    mailer = FileMailer(tmp_path)
    task = asyncio.create_task(run_mailer(services, stop, mailer=mailer, poll_seconds=0.05))
    try:
        (note,) = await queue_emails(services)
        for _ in range(100):
            if (tmp_path / f"{note.message_id}.eml").exists():
                break
            await asyncio.sleep(0.05)
        assert (tmp_path / f"{note.message_id}.eml").exists()
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    (row,) = await rows(services)
    assert row.status == "sent"


def test_mailer_urls() -> None:
    file_mailer = mailer_from_url("file:///tmp/outbox")
    assert isinstance(file_mailer, FileMailer) and file_mailer.folder == Path("/tmp/outbox")
    smtp = mailer_from_url("smtp://u:p%2Fq@mail.example.org:2525?starttls=1&timeout=5")
    assert isinstance(smtp, SmtpMailer)
    assert (smtp.hostname, smtp.port, smtp.username, smtp.password) == (
        "mail.example.org",
        2525,
        "u",
        "p/q",
    )
    assert smtp.start_tls is True and smtp.timeout == 5.0
    assert "p/q" not in smtp.url  # no password in what gets logged
    assert mailer_from_url("smtp://mail.example.org?starttls=1").port == 587  # type: ignore[attr-defined]
    assert mailer_from_url("smtps://mail.example.org").use_tls  # type: ignore[attr-defined]
    assert mailer_from_url("ses://").url == "ses://?region=us-east-1"  # SES: test_ses_mailer.py
    with pytest.raises(WeighbridgeError, match="unknown email URL scheme"):
        mailer_from_url("pigeon://coop")
