"""The SES mailer (`ses://`): the outbox delivered through SES on moto's server over HTTP, a
real refusal (an unverified sender) failing the email at once, the error mapping, the URL."""

from __future__ import annotations

import asyncio
import uuid
from email.parser import BytesParser
from email.policy import default as default_policy
from typing import Any

import pytest
from botocore.exceptions import ClientError

from core.context import Services
from core.errors import WeighbridgeError
from core.mailers import PermanentMailError, SesMailer, build_email, mailer_from_url
from core.models import Notification, new_id
from core.notifications import deliver_pending, run_mailer
from tests.notifications.test_mailer_contract import moto_raw_messages, verify_sender
from tests.notifications.test_mailers import queue_emails, rows


async def test_the_outbox_goes_out_through_ses(services: Services, moto_url: str) -> None:
    """run_mailer builds the SES mailer from the settings (URL, endpoint, region) as `up` does."""
    settings = services.settings
    settings.email_url = "ses://"
    settings.aws_endpoint_url = moto_url
    settings.aws_region = "ap-southeast-2"
    settings.email_from = "Weighbridge <noreply@ses-outbox.test>"
    await verify_sender_address(moto_url, "ap-southeast-2", "noreply@ses-outbox.test")
    notes = await queue_emails(services, 2)
    stop = asyncio.Event()
    task = asyncio.create_task(run_mailer(services, stop, poll_seconds=0.05))
    try:
        for _ in range(200):
            if {r.status for r in await rows(services)} == {"sent"}:
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert {r.status for r in await rows(services)} == {"sent"}
    wanted = {f"<{n.message_id}@ses-outbox.test>": n for n in notes}
    arrived = {}
    for raw in moto_raw_messages(moto_url):
        message = BytesParser(policy=default_policy).parsebytes(raw["raw_data"].encode())
        if message["Message-ID"] in wanted:
            arrived[message["Message-ID"]] = (raw, message)
    assert sorted(arrived) == sorted(wanted)
    for message_id, (raw, message) in arrived.items():
        note = wanted[message_id]
        assert raw["source"] == "noreply@ses-outbox.test"
        assert raw["raw_data"].isascii()  # 7-bit, as SES asks (non-ASCII parts in base64)
        assert raw["destinations"] == ["ada@example.org"] and message["To"] == "ada@example.org"
        assert message["Subject"] == note.subject
        plain = message.get_body(preferencelist=("plain",))
        html = message.get_body(preferencelist=("html",))
        assert plain is not None
        assert plain.get_content().replace("\r\n", "\n").strip() == note.body_text.strip()
        assert html is not None and "<html" in html.get_content()


async def verify_sender_address(moto_url: str, region: str, address: str) -> None:
    from core.aws import AwsClients

    aws = AwsClients(endpoint_url=moto_url, region=region)
    client = await aws.client("sesv2")
    await client.create_email_identity(EmailIdentity=address)
    await aws.close()


def _message(sender: str) -> Any:
    note = Notification(
        message_id=new_id(),
        to_address="ada@example.org",
        subject="done",
        body_text="plain",
        body_html="<p>html</p>",
    )
    return build_email(note, sender=sender)


async def test_an_unverified_sender_is_refused_for_good(services: Services, moto_url: str) -> None:
    """moto, like SES, refuses a sender that is not a verified identity (MessageRejected)."""
    sender = f"noreply@unverified-{uuid.uuid4().hex[:8]}.test"
    mailer = mailer_from_url("ses://?region=eu-west-2", endpoint_url=moto_url)
    with pytest.raises(PermanentMailError, match=r"MessageRejected.*authority to send from"):
        await mailer.send(_message(f"Weighbridge <{sender}>"))
    await verify_sender(moto_url, "eu-west-2")  # another address: still refused
    with pytest.raises(PermanentMailError):
        await mailer.send(_message(f"Weighbridge <{sender}>"))
    await mailer.close()

    services.settings.email_from = f"Weighbridge <{sender}>"
    await queue_emails(services)
    active = mailer_from_url("ses://?region=eu-west-2", endpoint_url=moto_url)
    assert await deliver_pending(services, active) == 0
    await active.close()
    (row,) = await rows(services)
    assert row.status == "failed" and row.attempts == 1  # not retried
    assert "Did not have authority to send from" in (row.last_error or "")


class _Refusing:
    """A stand-in for the sesv2 client that raises the given botocore error: moto cannot be
    made to throttle, fail with a 5xx or pause an account, so these paths use it."""

    def __init__(self, code: str, status: int) -> None:
        self.code, self.status, self.calls = code, status, 0

    async def client(self, service: str) -> _Refusing:
        assert service == "sesv2"
        return self

    async def send_email(self, **params: Any) -> None:
        self.calls += 1
        raise ClientError(
            {
                "Error": {"Code": self.code, "Message": f"{self.code} said SES"},
                "ResponseMetadata": {"HTTPStatusCode": self.status},
            },
            "SendEmail",
        )

    async def close(self) -> None:
        return None


@pytest.mark.parametrize(
    ("code", "status", "permanent"),
    [
        ("MessageRejected", 400, True),
        ("MailFromDomainNotVerifiedException", 400, True),
        ("SendingPausedException", 400, True),
        ("AccountSuspendedException", 400, True),
        ("TooManyRequestsException", 429, False),
        ("Throttling", 400, False),
        ("LimitExceededException", 400, False),
        ("InternalFailure", 500, False),
        ("ServiceUnavailable", 503, False),
    ],
)
async def test_permanent_refusals_and_passing_faults(code: str, status: int, permanent: bool):
    mailer = SesMailer(region="eu-west-1")
    refusing = _Refusing(code, status)
    mailer._aws = refusing  # type: ignore[assignment]
    expected = PermanentMailError if permanent else ClientError
    with pytest.raises(expected) as caught:
        await mailer.send(_message("Weighbridge <noreply@weighbridge.test>"))
    assert refusing.calls == 1
    if permanent:
        assert type(caught.value) is PermanentMailError
        assert f"{code}: {code} said SES" in str(caught.value)


def test_ses_urls() -> None:
    default = mailer_from_url("ses://", region="eu-central-1", endpoint_url="http://127.0.0.1:9")
    assert isinstance(default, SesMailer) and default.region == "eu-central-1"
    assert default._aws.endpoint_url == "http://127.0.0.1:9"
    assert default.url == "ses://?region=eu-central-1"
    chosen = mailer_from_url("ses://?region=eu-west-1&configuration_set=weighbridge")
    assert isinstance(chosen, SesMailer)
    assert (chosen.region, chosen.configuration_set) == ("eu-west-1", "weighbridge")
    assert chosen.url == "ses://?region=eu-west-1&configuration_set=weighbridge"
    for bad in ("ses://email.eu-west-1.amazonaws.com", "ses://?regoin=eu-west-1", "ses:///x"):
        with pytest.raises(WeighbridgeError, match="SES takes only") as caught:
            mailer_from_url(bad)
        assert caught.value.field == "WEIGHBRIDGE_EMAIL_URL"
