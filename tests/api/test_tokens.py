"""Token lifecycle over the API: list, create (named, expiring), revoke; a revoked or expired
token is refused at once, saying when; an admin moderates and redrives; logs obey the task."""

from __future__ import annotations

from datetime import timedelta

import httpx
import sqlalchemy as sa

from core.context import Services
from core.models import ApiToken, Submission, Task, utcnow
from tests.api.conftest import auth, make_user


async def test_tokens_are_listed_created_named_and_revoked(
    client: httpx.AsyncClient, token: str
) -> None:
    listed = (await client.get("/api/v1/tokens", headers=auth(token))).json()["tokens"]
    assert [(t["name"], t["status"], t["expires_at"]) for t in listed] == [
        ("default", "active", None)
    ]
    assert "token" not in listed[0] and listed[0]["last_used_at"] is not None

    made = await client.post(
        "/api/v1/tokens", json={"name": "ci runner", "expires": "30d"}, headers=auth(token)
    )
    assert made.status_code == 201
    new = made.json()
    assert new["token"].startswith("wb_") and new["name"] == "ci runner"
    assert new["status"] == "active" and new["expires_at"] is not None
    # The new token works, and is listed first (newest first) without its secret.
    mine = await client.get("/api/v1/tokens", headers=auth(new["token"]))
    assert [t["name"] for t in mine.json()["tokens"]] == ["ci runner", "default"]

    renamed = await client.patch(
        f"/api/v1/tokens/{new['id']}", json={"name": "ci runner 2"}, headers=auth(token)
    )
    assert renamed.status_code == 200 and renamed.json()["name"] == "ci runner 2"
    bad = await client.patch(f"/api/v1/tokens/{new['id']}", json={"name": ""}, headers=auth(token))
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "name"
    revoked = await client.delete(f"/api/v1/tokens/{new['id']}", headers=auth(token))
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    refused = await client.get("/api/v1/tokens", headers=auth(new["token"]))
    assert refused.status_code == 401
    error = refused.json()["error"]
    assert error["code"] == "token_revoked"
    assert error["message"].startswith("this token was revoked on 20")
    # Every route refuses it, not only the token routes.
    cancel = await client.post(
        "/api/v1/submissions/" + "0" * 32 + "/cancel", headers=auth(new["token"])
    )
    assert cancel.status_code == 401 and "revoked" in cancel.json()["error"]["message"]


async def test_bad_token_input_names_the_field(client: httpx.AsyncClient, token: str) -> None:
    bad = await client.post("/api/v1/tokens", json={"expires": "soon"}, headers=auth(token))
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "expires"
    assert "30d" in bad.json()["error"]["message"]
    bad = await client.post("/api/v1/tokens", json={"name": "<script>"}, headers=auth(token))
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "name"
    anon = await client.get("/api/v1/tokens")
    assert anon.status_code == 401


async def test_an_expired_token_is_refused_saying_when(
    client: httpx.AsyncClient, services: Services, token: str
) -> None:
    async with services.db.session() as session:
        await session.execute(
            sa.update(ApiToken).values(expires_at=utcnow() - timedelta(minutes=1))
        )
    refused = await client.get("/api/v1/tokens", headers=auth(token))
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "token_expired"
    assert refused.json()["error"]["message"].startswith("this token expired on 20")


async def test_a_user_revokes_only_their_own_tokens_an_admin_anyones(
    client: httpx.AsyncClient, services: Services, token: str
) -> None:
    bob = await make_user(services, "bob")
    admin = await make_user(services, "root-admin", admin=True)
    bobs = (await client.get("/api/v1/tokens", headers=auth(bob))).json()["tokens"][0]
    stranger = await client.delete(f"/api/v1/tokens/{bobs['id']}", headers=auth(token))
    assert stranger.status_code == 404
    assert (await client.get("/api/v1/tokens", headers=auth(bob))).status_code == 200
    by_admin = await client.delete(f"/api/v1/tokens/{bobs['id']}", headers=auth(admin))
    assert by_admin.status_code == 200
    assert (await client.get("/api/v1/tokens", headers=auth(bob))).status_code == 401


async def _submission(services: Services, name: str = "ada") -> str:
    async with services.db.session() as session:
        task = await session.scalar(sa.select(Task).where(Task.slug == "toy"))
        from core.accounts import get_user

        user = await get_user(session, name)
        assert task is not None and user is not None
        s = Submission(task_id=task.id, user_id=user.id, name="m1", status="done")
        session.add(s)
        await session.flush()
        return s.id


async def test_admin_moderates_a_submission_and_others_may_not(
    client: httpx.AsyncClient, services: Services, token: str
) -> None:
    admin = await make_user(services, "boss", admin=True)
    sid = await _submission(services)
    route = f"/api/v1/admin/submissions/{sid}/moderation"
    denied = await client.post(route, json={"hidden": True}, headers=auth(token))
    assert denied.status_code == 403
    no_reason = await client.post(route, json={"flagged": True}, headers=auth(admin))
    assert no_reason.status_code == 400 and no_reason.json()["error"]["field"] == "flag_reason"
    done = await client.post(
        route,
        json={"hidden": True, "flagged": True, "flag_reason": "trained on test", "baseline": True},
        headers=auth(admin),
    )
    assert done.status_code == 200
    assert done.json() == {
        "id": sid,
        "hidden": True,
        "flagged": True,
        "flag_reason": "trained on test",
        "baseline": True,
    }
    async with services.db.session() as session:
        s = await session.get(Submission, sid)
        assert s is not None and (s.hidden, s.flagged, s.baseline) == (True, True, True)
    unflag = await client.post(route, json={"flagged": False}, headers=auth(admin))
    assert unflag.json()["flagged"] is False and unflag.json()["flag_reason"] is None
    events = (await client.get(f"/api/v1/submissions/{sid}/events", headers=auth(admin))).json()
    assert any("moderated by boss" in e["message"] for e in events["events"])
    missing = await client.get("/api/v1/admin/dead-letters", headers=auth(token))
    assert missing.status_code == 403
    letters = await client.get("/api/v1/admin/dead-letters", headers=auth(admin))
    assert letters.status_code == 200 and letters.json() == {"dead_letters": []}
    nothing = await client.post("/api/v1/admin/dead-letters/nope/redrive", headers=auth(admin))
    assert nothing.status_code == 404 and nothing.json()["error"]["field"] == "message_id"


async def test_logs_are_the_owners_unless_the_task_makes_them_public_and_are_scrubbed(
    client: httpx.AsyncClient, services: Services, token: str
) -> None:
    bob = await make_user(services, "bob")
    sid = await _submission(services)
    home = str(services.settings.home)
    log = (
        f"loading {home}/storage/submissions/{sid}/bundle/model.py\n"
        'File "/root/.venv/lib/python3.11/site-packages/torch/nn/module.py", line 1\n'
        "epoch 1 accuracy 0.93\n"
    )
    await services.storage.write_bytes(f"submissions/{sid}/build/log", log.encode())
    own = await client.get(f"/api/v1/submissions/{sid}/logs", headers=auth(token))
    assert own.status_code == 200
    text = own.json()["text"]
    assert "epoch 1 accuracy 0.93" in text  # the job's own output is kept
    assert "<site-packages>/torch/nn/module.py" in text and "…/model.py" in text
    for leak in (home, "/root", f"submissions/{sid}/", ".venv"):
        assert leak not in text
    link = await client.get(f"/api/v1/submissions/{sid}/logs/link", headers=auth(token))
    assert link.status_code == 200
    url = httpx.URL(link.json()["url"])
    linked = (await client.get(url.raw_path.decode())).text  # the folder storage's own link
    assert "epoch 1 accuracy 0.93" in linked and "<site-packages>/torch" in linked
    assert home not in linked and "/root" not in linked
    other = await client.get(f"/api/v1/submissions/{sid}/logs", headers=auth(bob))
    anon = await client.get(f"/api/v1/submissions/{sid}/logs")
    assert other.status_code == anon.status_code == 403
    assert "does not make logs public" in anon.json()["error"]["message"]
    async with services.db.session() as session:
        task = await session.scalar(sa.select(Task).where(Task.slug == "toy"))
        assert task is not None
        task.config = {**task.config, "logs": {"public": True}}
    anon = await client.get(f"/api/v1/submissions/{sid}/logs")
    assert anon.status_code == 200 and "epoch 1 accuracy" in anon.json()["text"]
