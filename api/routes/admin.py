"""Admin routes: moderate a submission (hide, flag with a reason, mark baseline) and redrive
dead letters."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from api.deps import require_user, services_of
from core.dead_letters import list_dead_letters, redrive_dead_letter
from core.errors import Forbidden
from core.models import User
from core.moderation import moderate_submission, moderation_json

router = APIRouter(prefix="/api/v1/admin", tags=["admin"])


class Moderation(BaseModel):
    hidden: bool | None = Field(default=None, description="Off the public boards.")
    flagged: bool | None = Field(default=None, description="Marked; needs flag_reason.")
    flag_reason: str | None = Field(default=None, description="Shown with a flagged row.")
    baseline: bool | None = Field(default=None, description="An organiser's reference model.")


def _admin(user: User) -> User:
    if not user.is_admin:
        raise Forbidden("this is for admins only")
    return user


@router.post("/submissions/{submission_id}/moderation")
async def moderate(submission_id: str, body: Moderation, request: Request) -> dict:
    async with services_of(request).db.session() as session:
        admin = _admin(await require_user(session, request))
        s = await moderate_submission(
            session,
            submission_id,
            by=admin,
            hidden=body.hidden,
            flagged=body.flagged,
            flag_reason=body.flag_reason,
            baseline=body.baseline,
        )
        return moderation_json(s)


@router.get("/dead-letters")
async def read_dead_letters(request: Request) -> dict:
    services = services_of(request)
    async with services.db.session() as session:
        _admin(await require_user(session, request))
    return {"dead_letters": await list_dead_letters(services.queue)}


@router.post("/dead-letters/{message_id}/redrive")
async def redrive(message_id: str, request: Request) -> dict:
    services = services_of(request)
    async with services.db.session() as session:
        _admin(await require_user(session, request))
    return {
        "message_id": message_id,
        "queue": await redrive_dead_letter(services.queue, message_id),
    }
