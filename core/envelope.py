"""The event envelope every message and stored event uses (fat, traceable, versioned)."""

from __future__ import annotations

import socket
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from core.models.base import new_id, utcnow
from core.version import __version__


class Visit(BaseModel):
    """A stamp a service appends when it handles the message."""

    service: str
    version: str = __version__
    node: str = Field(default_factory=socket.gethostname)
    at: datetime = Field(default_factory=utcnow)


class Envelope(BaseModel):
    """message_id for dedupe, action_id = the submission, payload holds all a receiver needs."""

    message_id: str = Field(default_factory=new_id)
    action_id: str
    parent_action_id: str | None = None
    client_id: str | None = None
    type: str
    created_at: datetime = Field(default_factory=utcnow)
    visited: list[Visit] = Field(default_factory=list)
    payload: dict[str, Any] = Field(default_factory=dict)

    def stamped(self, service: str) -> Envelope:
        """A copy with this service's visit appended."""
        return self.model_copy(update={"visited": [*self.visited, Visit(service=service)]})

    def follow(self, type: str, payload: dict[str, Any], *, service: str) -> Envelope:
        """The next event of the same action: new message id, same lineage, visits carried."""
        return Envelope(
            action_id=self.action_id,
            parent_action_id=self.parent_action_id,
            client_id=self.client_id,
            type=type,
            visited=[*self.visited, Visit(service=service)],
            payload=payload,
        )
