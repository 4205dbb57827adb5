"""Dead letters across the queues, for an admin: list them and send one back (redrive)."""

from __future__ import annotations

from typing import Any

from core.errors import NotFound
from core.queue import Queue, is_dead_letter_queue


async def main_queues(queue: Queue) -> list[str]:
    names = await queue.queues()
    return sorted({n.removesuffix("-dlq") if is_dead_letter_queue(n) else n for n in names})


async def list_dead_letters(queue: Queue) -> list[dict[str, Any]]:
    """Every dead letter: its queue, message id, submission, type, attempts and last error."""
    letters: list[dict[str, Any]] = []
    for name in await main_queues(queue):
        letters += [
            {
                "queue": name,
                "message_id": d.message_id,
                "submission_id": d.body.get("action_id"),
                "type": d.body.get("type"),
                "attempts": d.attempts,
                "recorded": d.settled,
                "error": d.last_error or "",
            }
            for d in await queue.dead_letters(name)
        ]
    return letters


async def redrive_dead_letter(queue: Queue, message_id: str) -> str:
    """Send dead letter `message_id` back to its queue with fresh attempts; the queue's name."""
    for name in await main_queues(queue):
        if await queue.redrive(name, message_id):
            return name
    raise NotFound(f"no dead letter {message_id!r} in any queue", field="message_id")
