"""The Mailer contract, passed by every implementation chosen by WEIGHBRIDGE_EMAIL_URL: a sent
message arrives whole (the same Message-ID, sender, recipient, subject, both bodies), two
messages arrive as two, and the URL names the implementation. SES runs against moto's server
over HTTP: what moto accepted is read back from its SES backend (the raw messages)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from core.aws import AwsClients
from core.mailers import Mailer, build_email, mailer_from_url
from core.models import Notification, new_id
from tests.conftest import free_port
from tests.notifications.test_mailers import Inbox


@dataclass
class Delivered:
    mailer: Mailer
    received: Callable[[], list[bytes]]  # what reached the other side, as raw messages


def from_folder(folder: Path) -> Callable[[], list[bytes]]:
    return lambda: [p.read_bytes() for p in sorted(folder.glob("*.eml"))]


SENDER = "Weighbridge <noreply@weighbridge.test>"


def moto_raw_messages(moto_url: str) -> list[dict]:
    """Every raw message moto's SES accepted (all accounts and regions), oldest first.

    Read from the backend of the moto server this process runs (the `moto_url` fixture's
    ThreadedMotoServer), not from its /moto-api/data.json: that dumps every service's state
    at once, and the session's other tests leave state (SageMaker, ECR) it cannot always
    serialise (an HTTP 500 seen in CI)."""
    from moto.ses.models import RawMessage, ses_backends

    found = []
    for account in list(ses_backends.keys()):
        regions = ses_backends[account]
        for region in list(regions.keys()):
            for m in list(regions[region].sent_messages):
                if isinstance(m, RawMessage):
                    found.append(
                        {
                            "id": m.id,
                            "source": m.source,
                            "raw_data": m.raw_data,
                            "destinations": m.destinations,
                        }
                    )
    return found


def from_moto(moto_url: str) -> Callable[[], list[bytes]]:
    """The messages moto's SES accepted since now (the server is shared by the session)."""
    before = {m["id"] for m in moto_raw_messages(moto_url)}
    return lambda: [
        m["raw_data"].encode()
        for m in moto_raw_messages(moto_url)
        if m["id"] not in before and m["destinations"] == ["ada@example.org"]
    ]


async def verify_sender(moto_url: str, region: str) -> None:
    """SES sends only from a verified identity (moto checks it too)."""
    aws = AwsClients(endpoint_url=moto_url, region=region)
    client = await aws.client("sesv2")
    await client.create_email_identity(EmailIdentity="noreply@weighbridge.test")
    await aws.close()


@pytest.fixture(params=["file", "smtp", "ses"])
async def delivered(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Delivered]:
    if request.param == "ses":
        moto_url = request.getfixturevalue("moto_url")
        await verify_sender(moto_url, "eu-west-1")
        mailer = mailer_from_url("ses://?region=eu-west-1", endpoint_url=moto_url)
        yield Delivered(mailer, from_moto(moto_url))
        await mailer.close()
        return
    if request.param == "file":
        folder = tmp_path / "outbox"
        mailer = mailer_from_url(f"file://{folder}")
        yield Delivered(mailer, from_folder(folder))
        await mailer.close()
        return
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        mailer = mailer_from_url(f"smtp://127.0.0.1:{port}?timeout=5")
        yield Delivered(mailer, lambda: [content for _, _, content in inbox.received])
        await mailer.close()
    finally:
        controller.stop()


def message(subject: str) -> EmailMessage:
    note = Notification(
        message_id=new_id(),
        submission_id=new_id(),
        to_address="ada@example.org",
        subject=subject,
        body_text=f"plain: {subject}",
        body_html=f"<html><body><p>html: {subject}</p></body></html>",
    )
    return build_email(note, sender=SENDER)


def parsed(raw: bytes) -> EmailMessage:
    return BytesParser(policy=default_policy).parsebytes(raw)  # type: ignore[return-value]


async def test_a_sent_message_arrives_whole(delivered: Delivered) -> None:
    sent = message("résumé of model-7 ✓")
    await delivered.mailer.send(sent)
    [raw] = delivered.received()
    got = parsed(raw)
    for header in ("Message-ID", "From", "To", "Subject", "X-Weighbridge-Submission"):
        assert got[header] == sent[header], header
    plain = got.get_body(preferencelist=("plain",))
    html = got.get_body(preferencelist=("html",))
    assert plain is not None and "plain: résumé of model-7 ✓" in plain.get_content()
    assert html is not None and "html: résumé of model-7 ✓" in html.get_content()


async def test_two_messages_arrive_as_two(delivered: Delivered) -> None:
    first, second = message("one"), message("two")
    await delivered.mailer.send(first)
    await delivered.mailer.send(second)
    ids = sorted(parsed(raw)["Message-ID"] for raw in delivered.received())
    assert ids == sorted([first["Message-ID"], second["Message-ID"]])


async def test_the_url_names_the_implementation(delivered: Delivered) -> None:
    scheme = delivered.mailer.url.split("://", 1)[0]
    assert scheme in ("file", "smtp", "ses")
    assert "@" not in delivered.mailer.url.split("://", 1)[1].split("/", 1)[0]  # no password
