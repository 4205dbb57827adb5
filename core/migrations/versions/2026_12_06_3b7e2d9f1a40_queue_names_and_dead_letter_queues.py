"""queue names valid for SQS, dead letters in dead-letter queues

Revision ID: 3b7e2d9f1a40
Revises: c96abd069aaf
Create Date: 2026-12-06 09:20:00

Data only. Evaluator fleets' queues are renamed `eval.<id>` -> `eval-<id>` (SQS allows no
dot). Dead letters move to their queue's dead-letter queue `<queue>-dlq`, waiting to be
recorded: before this revision the failure a dead letter stood for could be lost (it was
kept only in memory), and recording it again is harmless (the consumers' on_dead is
idempotent), so every old dead letter gets its turn.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "3b7e2d9f1a40"
down_revision: str | None = "c96abd069aaf"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As core.queue.DEAD_LETTER_TRIES when this revision was written.
DEAD_LETTER_TRIES = 10

messages = sa.table(
    "queue_messages",
    sa.column("queue", sa.String()),
    sa.column("dead", sa.Boolean()),
    sa.column("attempts", sa.Integer()),
    sa.column("max_attempts", sa.Integer()),
    sa.column("lease_token", sa.String()),
)


def _names() -> list[str]:
    return list(op.get_bind().execute(sa.select(messages.c.queue).distinct()).scalars())


def upgrade() -> None:
    for name in _names():
        if name.startswith("eval."):
            op.execute(
                messages.update()
                .where(messages.c.queue == name)
                .values(queue="eval-" + name.removeprefix("eval."))
            )
    for name in _names():
        if name.endswith("-dlq"):
            continue
        op.execute(
            messages.update()
            .where(messages.c.queue == name, messages.c.dead == sa.true())
            .values(
                queue=name + "-dlq",
                dead=False,
                lease_token=None,
                max_attempts=messages.c.attempts + DEAD_LETTER_TRIES,
            )
        )


def downgrade() -> None:
    for name in _names():
        if name.endswith("-dlq"):
            op.execute(
                messages.update()
                .where(messages.c.queue == name)
                .values(queue=name.removesuffix("-dlq"), dead=True, lease_token=None)
            )
    for name in _names():
        if name.startswith("eval-"):
            op.execute(
                messages.update()
                .where(messages.c.queue == name)
                .values(queue="eval." + name.removeprefix("eval-"))
            )
