"""The queue on SQS (`sqs://?prefix=weighbridge-`), through aioboto3: the same contract as the
database queue (`core.queue.Queue`).

Each logical queue (`build`, `eval-<fleet>`) is one SQS queue named `<prefix><queue>`, with its
dead-letter queue `<prefix><queue>-dlq` and a redrive policy; both are created on first use
(or beforehand by Terraform) with a 14-day retention. A fleet's evaluators receive only their
fleet's queue, so no message ever bounces between fleets.

How the contract maps onto SQS:
- A lease is the visibility timeout; `extend` is ChangeMessageVisibility. Receiving long-polls
  (20 s by default) on the first named queue after a quick look at the others.
- Attempts are counted by SQS (ApproximateReceiveCount) plus the attempts an earlier copy of
  the message spent, carried in the message attribute `wb-attempts`: a retry sends the message
  again with its attempts and last error (`wb-error`) after the backoff (SQS delays at most
  15 minutes) and deletes the one received; a `release` does the same without counting the
  attempt. A message received past its last attempt (its holder died each time) goes to the
  dead-letter queue with the reason, as the database queue's sweep does; SQS's own redrive
  (`maxReceiveCount` one above the attempts) is only a backstop.
- Dead letters carry their reason in `wb-error`. The queue's consumers receive them and record
  them (`on_dead`); `settle` then keeps the dead letter durably in the database's queue table
  (SQS would drop it after its retention), where `dead_letters` lists it and `redrive` sends
  it back to its queue with fresh attempts.
- Messages are envelopes, far below SQS's 256 KiB (large things travel as storage keys); a
  larger one is refused with a clear error instead of failing inside SQS.

`WEIGHBRIDGE_AWS_ENDPOINT_URL` points it at an SQS-compatible server (moto, ElasticMQ).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, urlparse

import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError

from core.aws import AwsClients, error_code
from core.db import Database
from core.envelope import Envelope
from core.errors import WeighbridgeError
from core.models import QueueMessage, new_id, table_of
from core.queue import (
    DEAD_LETTER_TRIES,
    DLQ_SUFFIX,
    DeadLetter,
    Delivery,
    backoff,
    check_queue_name,
    count_messages,
    database_epoch,
    dead_letter_queue,
    is_dead_letter_queue,
)

# SQS's own limits.
MAX_MESSAGE_BYTES = 256 * 1024
MAX_DELAY_SECONDS = 900
MAX_VISIBILITY_SECONDS = 12 * 3600
MAX_WAIT_SECONDS = 20
MAX_BATCH = 10
RETENTION_SECONDS = 14 * 24 * 3600
# A prefix leaves room for the longest queue name (64) within SQS's 80 characters.
PREFIX = re.compile(r"^[A-Za-z0-9_-]{0,16}$")
ATTEMPTS = "wb-attempts"
ERROR = "wb-error"
MISSING_QUEUE = ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist")
LOST_LEASE = (
    "ReceiptHandleIsInvalid",
    "MessageNotInflight",
    "InvalidParameterValue",
    "AWS.SimpleQueueService.MessageNotInflight",
)
EXPIRED = "the lease expired on the last attempt (the worker stopped without an ack)"


class SqsQueue:
    """SQS queues for the logical queues; see the module docstring."""

    # SQS cannot delay a message longer than this: the relay keeps later ones in its table.
    max_delay = float(MAX_DELAY_SECONDS)

    def __init__(
        self,
        database: Database,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        lease_seconds: float = 60.0,
        max_attempts: int = 3,
        backoff_seconds: float = 2.0,
        long_poll_seconds: float = MAX_WAIT_SECONDS,
    ) -> None:
        if not PREFIX.match(prefix):
            raise WeighbridgeError(
                f"SQS queue prefix {prefix!r} is not valid: use at most 16 letters, digits, "
                "'-' or '_' (e.g. sqs://?prefix=weighbridge-)",
                field="WEIGHBRIDGE_QUEUE_URL",
            )
        self.db = database
        self.prefix = prefix
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.long_poll_seconds = max(0.0, min(float(MAX_WAIT_SECONDS), long_poll_seconds))
        self._aws = AwsClients(endpoint_url=endpoint_url, region=region)
        self._urls: dict[str, str] = {}
        self._creating: dict[str, asyncio.Lock] = {}
        # The last error of each message in hand (SQS cannot change a message's attributes):
        # kept for the copy a retry or release sends; dropped when the message is done.
        self._errors: dict[str, str] = {}

    # -- queues ----------------------------------------------------------------------------

    def sqs_name(self, queue: str) -> str:
        return (
            self.prefix
            + check_queue_name(queue.removesuffix(DLQ_SUFFIX))
            + (DLQ_SUFFIX if is_dead_letter_queue(queue) else "")
        )

    async def _client(self) -> Any:
        return await self._aws.client("sqs")

    async def _lookup(self, queue: str) -> str | None:
        """The queue's URL, or None when it does not exist."""
        url = self._urls.get(queue)
        if url is not None:
            return url
        client = await self._client()
        try:
            url = str((await client.get_queue_url(QueueName=self.sqs_name(queue)))["QueueUrl"])
        except Exception as exc:
            if error_code(exc) in MISSING_QUEUE:
                return None
            raise
        self._urls[queue] = url
        return url

    async def ensure(self, queue: str) -> str:
        """The URL of `queue`, creating it and its dead-letter queue (with the redrive
        policy) when they do not exist yet."""
        url = await self._lookup(queue)
        if url is not None:
            return url
        lock = self._creating.setdefault(queue, asyncio.Lock())
        async with lock:
            url = await self._lookup(queue)
            if url is not None:
                return url
            client = await self._client()
            attributes = {
                "MessageRetentionPeriod": str(RETENTION_SECONDS),
                "VisibilityTimeout": str(math.ceil(self.lease_seconds)),
                "ReceiveMessageWaitTimeSeconds": str(MAX_WAIT_SECONDS),
            }
            if not is_dead_letter_queue(queue):
                dlq_url = await self.ensure(dead_letter_queue(queue))
                arn = (
                    await client.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])
                )["Attributes"]["QueueArn"]
                attributes["RedrivePolicy"] = json.dumps(
                    {"deadLetterTargetArn": arn, "maxReceiveCount": str(self.max_attempts + 1)}
                )
            created = await client.create_queue(
                QueueName=self.sqs_name(queue), Attributes=attributes
            )
            self._urls[queue] = str(created["QueueUrl"])
            return self._urls[queue]

    # -- sending ---------------------------------------------------------------------------

    def _entry(
        self, message: Envelope, *, delay: float, attempts: int = 0, error: str | None = None
    ) -> dict[str, Any]:
        body = message.model_dump_json()
        attributes: dict[str, Any] = {
            ATTEMPTS: {"DataType": "Number", "StringValue": str(max(0, attempts))}
        }
        if error:
            attributes[ERROR] = {"DataType": "String", "StringValue": error[-8000:]}
        size = len(body.encode()) + sum(
            len(k) + len(v["DataType"]) + len(v["StringValue"].encode())
            for k, v in attributes.items()
        )
        if size > MAX_MESSAGE_BYTES:
            raise WeighbridgeError(
                f"message {message.message_id} ({message.type}) is {size} bytes, over SQS's "
                f"{MAX_MESSAGE_BYTES}: large things must travel as storage keys",
                field="WEIGHBRIDGE_QUEUE_URL",
            )
        return {
            "MessageBody": body,
            "DelaySeconds": int(min(MAX_DELAY_SECONDS, max(0, math.ceil(delay)))),
            "MessageAttributes": attributes,
        }

    async def send(self, queue: str, message: Envelope, *, delay: float = 0.0) -> None:
        if delay > MAX_DELAY_SECONDS:
            raise WeighbridgeError(
                f"SQS cannot delay a message {delay:.0f} s (at most {MAX_DELAY_SECONDS})",
                field="WEIGHBRIDGE_QUEUE_URL",
            )
        await self._send(queue, message, delay=delay)

    async def _send(
        self,
        queue: str,
        message: Envelope,
        *,
        delay: float = 0.0,
        attempts: int = 0,
        error: str | None = None,
    ) -> None:
        entry = self._entry(message, delay=delay, attempts=attempts, error=error)
        client = await self._client()
        await client.send_message(QueueUrl=await self.ensure(queue), **entry)

    async def send_many(self, queue: str, messages: Sequence[Envelope]) -> None:
        """Send in batches of ten (SQS's batch); a failed entry raises after the others."""
        client = await self._client()
        url = await self.ensure(queue)
        failed: list[str] = []
        for start in range(0, len(messages), MAX_BATCH):
            batch = messages[start : start + MAX_BATCH]
            entries = [{"Id": str(i), **self._entry(m, delay=0.0)} for i, m in enumerate(batch)]
            answer = await client.send_message_batch(QueueUrl=url, Entries=entries)
            failed += [f"{f.get('Code')}: {f.get('Message')}" for f in answer.get("Failed", [])]
        if failed:
            raise WeighbridgeError(f"SQS refused {len(failed)} message(s): {failed[0]}")

    # -- receiving -------------------------------------------------------------------------

    async def receive(
        self,
        queues: Sequence[str],
        *,
        max_messages: int = 1,
        lease_seconds: float | None = None,
        wait_seconds: float = 0.0,
    ) -> list[Delivery]:
        """A quick look at each queue in order, then (when nothing came and the caller may
        wait) one long poll of the first queue."""
        lease = self.lease_seconds if lease_seconds is None else lease_seconds
        got: list[Delivery] = []
        for queue in queues:
            if len(got) >= max_messages:
                break
            got += await self._receive_one(queue, max_messages - len(got), lease, wait=0)
        if not got and queues and wait_seconds >= 1:
            wait = int(min(wait_seconds, self.long_poll_seconds or wait_seconds))
            got += await self._receive_one(queues[0], max_messages, lease, wait=wait)
        return got

    async def _receive_one(
        self, queue: str, limit: int, lease: float, *, wait: int
    ) -> list[Delivery]:
        client = await self._client()
        url = await self.ensure(queue)
        answer = await client.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=max(1, min(MAX_BATCH, limit)),
            VisibilityTimeout=int(min(MAX_VISIBILITY_SECONDS, max(1, math.ceil(lease)))),
            WaitTimeSeconds=max(0, min(MAX_WAIT_SECONDS, wait)),
            MessageAttributeNames=["All"],
            AttributeNames=["ApproximateReceiveCount"],
        )
        deliveries: list[Delivery] = []
        for message in answer.get("Messages", []):
            delivery = await self._delivery(queue, message)
            if delivery is not None:
                deliveries.append(delivery)
        return deliveries

    async def _delivery(self, queue: str, message: dict[str, Any]) -> Delivery | None:
        """The Delivery of a received message; None when it went straight to its dead
        letters (past its last attempt, or not an envelope)."""
        handle = str(message["ReceiptHandle"])
        received = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
        attributes = message.get("MessageAttributes", {})
        earlier = int(attributes.get(ATTEMPTS, {}).get("StringValue", "0") or 0)
        error = attributes.get(ERROR, {}).get("StringValue")
        dead = is_dead_letter_queue(queue)
        receipt = f"{received}:{handle}"
        try:
            envelope = Envelope.model_validate_json(message["Body"])
        except ValidationError as exc:
            # A body no receiver can read can never succeed: kept as a recorded dead letter.
            await self._archive(
                queue,
                # SQS's id is a 36-character UUID; the column holds our 32 hex digits.
                message_id=str(message.get("MessageId") or new_id()).replace("-", "")[:32],
                body=_as_json(message["Body"]),
                attempts=earlier + received,
                error=f"invalid message body, not an event envelope: {exc}",
            )
            await self._delete(queue, handle)
            return None
        if dead:
            return Delivery(
                queue=queue,
                envelope=envelope,
                receipt=receipt,
                attempts=earlier,
                max_attempts=self.max_attempts,
                error=error or EXPIRED,
            )
        attempts = earlier + received
        if attempts > self.max_attempts:
            # The last attempt's lease ran out (the holder died): a dead letter, with the reason.
            why = EXPIRED + (f"; the attempt before failed with: {error}" if error else "")
            await self._send(dead_letter_queue(queue), envelope, attempts=attempts - 1, error=why)
            await self._delete(queue, handle)
            return None
        if error:
            self._remember(handle, error)
        return Delivery(
            queue=queue,
            envelope=envelope,
            receipt=receipt,
            attempts=attempts,
            max_attempts=self.max_attempts,
        )

    def _remember(self, handle: str, error: str) -> None:
        if len(self._errors) > 10_000:  # leases lost without a word: do not grow for ever
            self._errors.clear()
        self._errors[handle] = error

    @staticmethod
    def _parse(receipt: str) -> tuple[int, str]:
        count, handle = receipt.split(":", 1)
        return int(count), handle

    # -- settling a message ----------------------------------------------------------------

    async def _delete(self, queue: str, handle: str) -> bool:
        self._errors.pop(handle, None)
        client = await self._client()
        try:
            await client.delete_message(QueueUrl=await self.ensure(queue), ReceiptHandle=handle)
        except Exception as exc:
            if error_code(exc) in LOST_LEASE:
                return False
            raise
        return True

    async def _visible_in(self, delivery: Delivery, seconds: float) -> bool:
        _, handle = self._parse(delivery.receipt)
        client = await self._client()
        try:
            await client.change_message_visibility(
                QueueUrl=await self.ensure(delivery.queue),
                ReceiptHandle=handle,
                VisibilityTimeout=int(min(MAX_VISIBILITY_SECONDS, max(0, math.ceil(seconds)))),
            )
        except Exception as exc:
            if error_code(exc) in LOST_LEASE:
                return False
            raise
        return True

    async def extend(self, delivery: Delivery, seconds: float) -> bool:
        return await self._visible_in(delivery, seconds)

    async def ack(self, delivery: Delivery) -> bool:
        return await self._delete(delivery.queue, self._parse(delivery.receipt)[1])

    async def ack_many(self, deliveries: Sequence[Delivery]) -> int:
        by_queue: dict[str, list[str]] = {}
        for d in deliveries:
            by_queue.setdefault(d.queue, []).append(self._parse(d.receipt)[1])
        client = await self._client()
        done = 0
        for queue, handles in by_queue.items():
            url = await self.ensure(queue)
            for start in range(0, len(handles), MAX_BATCH):
                batch = handles[start : start + MAX_BATCH]
                for handle in batch:
                    self._errors.pop(handle, None)
                answer = await client.delete_message_batch(
                    QueueUrl=url,
                    Entries=[{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(batch)],
                )
                done += len(answer.get("Successful", []))
        return done

    async def _resend(
        self,
        delivery: Delivery,
        *,
        queue: str,
        delay: float,
        attempts: int,
        error: str | None,
    ) -> bool:
        """Send the message again (to `queue`, with its attempts and error) and delete the one
        held; False, sending nothing, when the lease was already lost."""
        _, handle = self._parse(delivery.receipt)
        # Hold it a little longer first: a lost lease must not send a second copy.
        if not await self._visible_in(delivery, 60):
            return False
        await self._send(
            queue,
            delivery.envelope,
            delay=min(delay, MAX_DELAY_SECONDS),
            attempts=attempts,
            error=error,
        )
        await self._delete(delivery.queue, handle)
        return True

    async def release(self, delivery: Delivery) -> bool:
        _, handle = self._parse(delivery.receipt)
        if delivery.dead:
            return await self._visible_in(delivery, 0)
        return await self._resend(
            delivery,
            queue=delivery.queue,
            delay=0.0,
            attempts=max(0, delivery.attempts - 1),
            error=self._errors.get(handle),
        )

    async def retry(self, delivery: Delivery, *, error: str, delay: float | None = None) -> bool:
        tries, _ = self._parse(delivery.receipt)
        if delivery.dead:
            if tries >= DEAD_LETTER_TRIES:
                # Recording the dead letter failed every time: keep it, with both stories.
                return await self.settle(
                    delivery, error=f"{delivery.error}; recording it failed: {error[-4000:]}"
                )
            await self._visible_in(delivery, backoff(self.backoff_seconds, tries))
            return False
        if delivery.attempts >= self.max_attempts:
            await self.dead_letter(delivery, error=error)
            return True
        if delay is None:
            delay = backoff(self.backoff_seconds, delivery.attempts)
        await self._resend(
            delivery, queue=delivery.queue, delay=delay, attempts=delivery.attempts, error=error
        )
        return False

    async def dead_letter(self, delivery: Delivery, *, error: str) -> bool:
        if delivery.dead:
            return await self.settle(delivery, error=error)
        return await self._resend(
            delivery,
            queue=dead_letter_queue(delivery.queue),
            delay=0.0,
            attempts=delivery.attempts,
            error=error,
        )

    async def settle(self, delivery: Delivery, *, error: str | None = None) -> bool:
        """Keep the dead letter in the database (recorded), then take it off SQS."""
        await self._archive(
            delivery.queue,
            message_id=delivery.envelope.message_id,
            body=delivery.envelope.model_dump(mode="json"),
            attempts=delivery.attempts,
            error=error if error is not None else delivery.error,
        )
        return await self._delete(delivery.queue, self._parse(delivery.receipt)[1])

    # -- dead letters kept in the database --------------------------------------------------

    async def _archive(
        self,
        queue: str,
        *,
        message_id: str,
        body: dict[str, Any],
        attempts: int,
        error: str | None,
    ) -> None:
        qm = table_of(QueueMessage)
        now = database_epoch(self.db.dialect)
        values = {
            "queue": dead_letter_queue(queue),
            "message_id": message_id,
            "body": body,
            "attempts": attempts,
            "max_attempts": self.max_attempts,
            "available_at": now,
            "lease_token": None,
            "dead": True,
            "last_error": (error or "")[-8000:] or None,
            "created_at": now,
        }
        try:
            async with self.db.session() as session:
                await session.execute(sa.insert(qm).values(**values))
        except IntegrityError:
            pass  # kept already (a crash after keeping it, before deleting it from SQS)

    async def dead_letters(self, queue: str) -> list[DeadLetter]:
        qm = table_of(QueueMessage)
        async with self.db.session() as session:
            rows = (
                await session.execute(
                    sa.select(qm).where(qm.c.queue == dead_letter_queue(queue)).order_by(qm.c.id)
                )
            ).all()
        return [
            DeadLetter(
                queue=queue,
                message_id=r.message_id,
                attempts=r.attempts,
                last_error=r.last_error,
                body=r.body,
                settled=True,
            )
            for r in rows
        ]

    async def redrive(self, queue: str, message_id: str) -> bool:
        qm = table_of(QueueMessage)
        where = (qm.c.queue == dead_letter_queue(queue), qm.c.message_id == message_id)
        async with self.db.session() as session:
            row = (await session.execute(sa.select(qm.c.id, qm.c.body).where(*where))).first()
        if row is None:
            return False
        try:
            envelope = Envelope.model_validate(row.body)
        except ValidationError as exc:
            raise WeighbridgeError(
                f"dead letter {message_id} is not an event envelope and cannot be redriven: "
                f"{exc.errors()[0]['msg']}; delete it instead"
            ) from exc
        await self._send(queue.removesuffix(DLQ_SUFFIX), envelope)
        async with self.db.session() as session:
            await session.execute(sa.delete(qm).where(qm.c.id == row.id))
        return True

    # -- what the queues hold ---------------------------------------------------------------

    async def _counts(self, queue: str) -> dict[str, int]:
        url = await self._lookup(queue)
        if url is None:
            return {}
        client = await self._client()
        answer = await client.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
                "ApproximateNumberOfMessagesDelayed",
            ],
        )
        return {k: int(v) for k, v in answer.get("Attributes", {}).items()}

    async def depth(self, queue: str) -> int:
        return sum((await self._counts(queue)).values())

    async def in_flight(self, queue: str) -> int:
        return (await self._counts(queue)).get("ApproximateNumberOfMessagesNotVisible", 0)

    async def queues(self) -> list[str]:
        client = await self._client()
        names: set[str] = set()
        answer = await client.list_queues(QueueNamePrefix=self.prefix, MaxResults=1000)
        for url in answer.get("QueueUrls", []):
            name = str(url).rsplit("/", 1)[-1].removeprefix(self.prefix)
            with contextlib.suppress(ValueError):
                check_queue_name(name.removesuffix(DLQ_SUFFIX))
                self._urls.setdefault(name, str(url))
                if await self.depth(name):
                    names.add(name)
        qm = table_of(QueueMessage)
        async with self.db.session() as session:
            names.update((await session.execute(sa.select(qm.c.queue).distinct())).scalars())
        return sorted(names)

    async def counts(self) -> list[tuple[str, bool, int]]:
        """What each SQS queue holds (its dead-letter queues' unrecorded letters as `dead`
        False: they still wait for their consumers), and the recorded dead letters kept in the
        database."""
        client = await self._client()
        found: list[tuple[str, bool, int]] = []
        answer = await client.list_queues(QueueNamePrefix=self.prefix, MaxResults=1000)
        for url in answer.get("QueueUrls", []):
            name = str(url).rsplit("/", 1)[-1].removeprefix(self.prefix)
            with contextlib.suppress(ValueError):
                check_queue_name(name.removesuffix(DLQ_SUFFIX))
                self._urls.setdefault(name, str(url))
                held = await self.depth(name)
                if held:
                    found.append((name, False, held))
        async with self.db.session() as session:
            found += await count_messages(session)
        return sorted(found)

    async def close(self) -> None:
        await self._aws.close()


def _as_json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {"raw": text[:8000]}
    return value if isinstance(value, dict) else {"raw": value}


def sqs_queue_from_url(
    url: str,
    *,
    database: Database,
    endpoint_url: str | None = None,
    region: str = "us-east-1",
    **options: Any,
) -> SqsQueue:
    """`sqs://?prefix=weighbridge-&region=eu-west-1&wait=20`: the prefix of every queue name,
    the region (default WEIGHBRIDGE_AWS_REGION) and the long poll in seconds (at most 20)."""
    parsed = urlparse(url)
    if parsed.netloc or parsed.path.strip("/"):
        raise WeighbridgeError(
            f"queue URL {url!r}: an SQS URL names no host or path; use sqs://?prefix=weighbridge-"
            " (the endpoint comes from WEIGHBRIDGE_AWS_ENDPOINT_URL)",
            field="WEIGHBRIDGE_QUEUE_URL",
        )
    query = {k: v[-1] for k, v in parse_qs(parsed.query, keep_blank_values=True).items()}
    unknown = sorted(set(query) - {"prefix", "region", "wait"})
    if unknown:
        raise WeighbridgeError(
            f"queue URL {url!r}: unknown option(s) {', '.join(unknown)}; "
            "use prefix=, region= or wait=",
            field="WEIGHBRIDGE_QUEUE_URL",
        )
    try:
        wait = float(query.get("wait", MAX_WAIT_SECONDS))
    except ValueError:
        raise WeighbridgeError(
            f"queue URL {url!r}: wait= must be seconds (0-20)", field="WEIGHBRIDGE_QUEUE_URL"
        ) from None
    if not 0 <= wait <= MAX_WAIT_SECONDS:
        raise WeighbridgeError(
            f"queue URL {url!r}: wait= must be 0-20 seconds (SQS's longest poll)",
            field="WEIGHBRIDGE_QUEUE_URL",
        )
    options.pop("poll_seconds", None)  # SQS long-polls instead
    return SqsQueue(
        database,
        prefix=query.get("prefix", ""),
        endpoint_url=endpoint_url,
        region=query.get("region") or region,
        long_poll_seconds=wait,
        **options,
    )
