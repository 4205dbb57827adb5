"""The submission page over the real app: performance in its own table, a cancelled
submission's runs say cancelled, another's private submission is a 404, no label or hidden
example reaches the page, the receipt, the failure with its log tail for the owner only, the
live stream, and re-running (API and the page's CSRF-checked form)."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
import sqlalchemy as sa

from core.accounts import create_user, hash_token, issue_token
from core.context import Services
from core.models import ApiToken, Event, QueueMessage, Run, Score, Submission, Task, User
from core.presign import secret_key
from core.states import cancel, record_event
from tests.web.conftest import make_done_submission
from web.auth import SESSION_COOKIE, TOKEN_KIND, session_value

RECEIPT: dict[str, Any] = {
    "submission_id": None,
    "bundle_sha256": "b" * 64,
    "mar_sha256": "c" * 64,
    "mar_key": "submissions/x/build/model.mar",
    "requirements_sha256": None,
    "datasets": [{"name": "test", "sha256": "d" * 64, "n_examples": 100}],
    "packages": {"torch": "2.4.0", "weighbridge": "0.1.0"},
    "hardware": {"node": "eval-7", "cpu_model": "Test CPU 3000", "cores": 4, "gpu": None},
    "hwinfo": {"test": "submissions/x/results/test/hwinfo.json"},
    "runner": "local",
    "evaluator": {"fleet": "toy-fleet", "host": "eval-7", "pid": 42},
    "sandbox": {"backend": "bwrap", "network": False, "limits": {"memory_mb": 2048}},
    "timings": {},
    "deltas": [],
}


async def _user(services: Services, name: str) -> tuple[User, str]:
    async with services.db.session() as session:
        user, token = await create_user(session, name, email=f"{name}@example.org")
    return user, token


async def _owner_token(services: Services) -> str:
    async with services.db.session() as session:
        user = await session.scalar(sa.select(User).where(User.name == "ada"))
        assert user is not None
        return await issue_token(session, user, label="test")


async def _done_with_performance(services: Services) -> str:
    sub_id = await make_done_submission(services)
    async with services.db.session() as session:
        session.add(
            Run(
                submission_id=sub_id,
                name="test",
                status="done",
                attempt=1,
                summary={"performance": {"examples_per_second": 1234.5, "peak_memory_mb": 321.0}},
            )
        )
        for metric, value in (("examples_per_second", 1234.5), ("latency_p90_ms", 7.25)):
            session.add(
                Score(
                    submission_id=sub_id,
                    dataset="test",
                    metric=metric,
                    value=value,
                    extra={"kind": "performance"},
                )
            )
        s = await session.get(Submission, sub_id)
        assert s is not None
        record_event(session, s, "receipt", service="evaluator", message="receipt", payload=RECEIPT)
    return sub_id


def _table(html: str, table_id: str) -> str:
    match = re.search(rf'<table id="{table_id}".*?</table>', html, re.S)
    assert match, f"no table #{table_id}"
    return match.group(0)


async def test_performance_sits_in_its_own_table(
    services: Services, client: httpx.AsyncClient
) -> None:
    sub_id = await _done_with_performance(services)
    html = (await client.get(f"/submissions/{sub_id}")).text
    performance = _table(html, "performance")
    assert ("Examples/s" in performance and "1,234" in performance) or "1234" in performance
    assert "Latency p90 (ms)" in performance and "7.2500" in performance
    assert "Peak memory (MiB)" in performance and "321.0000" in performance
    scores = _table(html, "scores")
    assert "accuracy" in scores and "0.9300" in scores and "0.9000 \u2013 0.9600" in scores
    assert "examples_per_second" not in scores and "1234" not in scores
    runs = _table(html, "runs")
    assert "Examples/s" not in runs and "Error" not in runs


async def test_receipt_shows_hashes_versions_hardware_and_sandbox(
    services: Services, client: httpx.AsyncClient
) -> None:
    sub_id = await _done_with_performance(services)
    html = (await client.get(f"/submissions/{sub_id}")).text
    receipt = re.search(r'<dl id="receipt".*?</dl>', html, re.S)
    assert receipt, html
    text = receipt.group(0)
    for expected in ("b" * 64, "c" * 64, "d" * 64, "torch 2.4.0", "Test CPU 3000", "bwrap"):
        assert expected in text
    assert "toy-fleet" in text
    # Storage keys stay off the page.
    assert "model.mar" not in html and "hwinfo.json" not in html


async def test_a_cancelled_submissions_runs_say_cancelled(
    services: Services, client: httpx.AsyncClient
) -> None:
    sub_id = await make_done_submission(services, name="stopped")
    async with services.db.session() as session:
        s = await session.get(Submission, sub_id)
        assert s is not None
        s.status = "evaluating"
        await session.execute(sa.delete(Score).where(Score.submission_id == sub_id))
        # One dataset started, the other never did (no run row yet).
        session.add(Run(submission_id=sub_id, name="examples", status="running", attempt=1))
        await session.flush()
        await cancel(session, s, service="api", message="cancelled by ada")
    html = (await client.get(f"/submissions/{sub_id}")).text
    runs = _table(html, "runs")
    statuses = re.findall(r'<span class="status (\w+)">', runs)
    assert statuses == ["cancelled", "cancelled"], runs
    assert "queued" not in runs and "failed" not in runs
    assert "not started: the submission was cancelled" in runs


async def test_another_users_private_submission_is_a_404_page(
    services: Services, client: httpx.AsyncClient
) -> None:
    sub_id = await make_done_submission(services, name="secret-model")
    async with services.db.session() as session:
        await session.execute(
            sa.update(Submission).where(Submission.id == sub_id).values(private=True)
        )
    _, bob = await _user(services, "bob")
    owner = await _owner_token(services)
    for headers in ({}, {"Authorization": f"Bearer {bob}"}):
        for path in ("", "/live", "/log", "/log.txt"):
            r = await client.get(f"/submissions/{sub_id}{path}", headers=headers)
            assert r.status_code == 404, (path, r.status_code)
            assert "secret-model" not in r.text and "0.93" not in r.text
        assert r.headers["content-type"].startswith("text/html")
    r = await client.get(f"/submissions/{sub_id}", headers={"Authorization": f"Bearer {owner}"})
    assert r.status_code == 200 and "secret-model" in r.text


async def test_no_label_or_hidden_example_reaches_the_page(
    services: Services, client: httpx.AsyncClient
) -> None:
    sub_id = await _done_with_performance(services)
    # What the evaluator keeps beside the scores: the model's answers and the hidden rows.
    prefix = f"submissions/{sub_id}/results/test"
    await services.storage.write_bytes(
        f"{prefix}/predictions.jsonl",
        b'{"uid": "hidden-uid-4711", "label": "HIDDEN-LABEL-XYZZY", "x": "HIDDEN-INPUT"}\n',
    )
    await services.storage.write_bytes(f"{prefix}/log", b"model loaded\nanswered 100 examples\n")
    owner = await _owner_token(services)
    headers = {"Authorization": f"Bearer {owner}"}
    pages = [
        (await client.get(f"/submissions/{sub_id}", headers=headers)).text,
        (await client.get(f"/submissions/{sub_id}/live", headers=headers)).text,
        (await client.get(f"/submissions/{sub_id}/log", headers=headers)).text,
        (await client.get(f"/submissions/{sub_id}/log.txt", headers=headers)).text,
    ]
    assert "answered 100 examples" in pages[3]  # the owner reads the job's own output
    for text in pages:
        for secret in ("hidden-uid-4711", "HIDDEN-LABEL-XYZZY", "HIDDEN-INPUT"):
            assert secret not in text


async def test_a_failure_shows_its_reason_and_the_log_tail_to_the_owner_only(
    services: Services, client: httpx.AsyncClient
) -> None:
    sub_id = await make_done_submission(services, name="broken")
    key = f"submissions/{sub_id}/results/test/log"
    lines = [f"line {n}" for n in range(100)]
    lines.append(f"Traceback: File {services.settings.home}/jobs/3/handler.py, line 9")
    await services.storage.write_bytes(key, ("\n".join(lines) + "\n").encode())
    async with services.db.session() as session:
        await session.execute(sa.delete(Score).where(Score.submission_id == sub_id))
        await session.execute(
            sa.update(Submission)
            .where(Submission.id == sub_id)
            .values(
                status="failed",
                failed_stage="evaluate",
                error="the handler raised ZeroDivisionError",
                error_log_key=key,
            )
        )
    owner = await _owner_token(services)
    mine = (
        await client.get(f"/submissions/{sub_id}", headers={"Authorization": f"Bearer {owner}"})
    ).text
    assert "Failed at evaluate" in mine and "ZeroDivisionError" in mine
    tail = re.search(r'<pre id="log-tail"><code>(.*?)</code></pre>', mine, re.S)
    assert tail, mine
    assert "line 99" in tail.group(1) and "line 10\n" not in tail.group(1)
    assert "handler.py" in tail.group(1) and str(services.settings.home) not in mine
    assert f'href="/submissions/{sub_id}/log?part=test"' in mine
    theirs = (await client.get(f"/submissions/{sub_id}")).text
    assert "ZeroDivisionError" in theirs  # the reason is public, the log is not
    assert 'id="log-tail"' not in theirs and "line 99" not in theirs
    assert (await client.get(f"/submissions/{sub_id}/log.txt?part=test")).status_code == 404
    whole = await client.get(
        f"/submissions/{sub_id}/log.txt?part=test", headers={"Authorization": f"Bearer {owner}"}
    )
    assert whole.status_code == 200 and "line 0\n" in whole.text
    assert whole.headers["x-complete"] == "1"
    assert str(services.settings.home) not in whole.text
    # A task whose config makes logs public shows them to everyone (its public submissions).
    async with services.db.session() as session:
        task = await session.scalar(sa.select(Task).where(Task.slug == "toy"))
        assert task is not None
        task.config = {**task.config, "logs": {"public": True}}
        session.add(task)
    public = (await client.get(f"/submissions/{sub_id}")).text
    assert 'id="log-tail"' in public and "line 99" in public
    assert (await client.get(f"/submissions/{sub_id}/log.txt?part=test")).status_code == 200


async def test_the_live_stream_of_a_finished_submission_sends_its_parts_and_ends(
    services: Services, client: httpx.AsyncClient
) -> None:
    sub_id = await _done_with_performance(services)
    r = await client.get(f"/submissions/{sub_id}/live")
    assert r.headers["content-type"].startswith("text/event-stream")
    events = re.findall(r"^event: (\w+)$", r.text, re.M)
    assert events[0] == "timeline" and events[-2:] == ["parts", "end"], events
    assert '"status": "done"' in r.text and 'id=\\"performance\\"' in r.text
    after = await client.get(f"/submissions/{sub_id}/live", headers={"Last-Event-ID": "999999"})
    assert "event: timeline" not in after.text  # a reconnect resumes after what it had


async def _queued_builds(services: Services, sub_id: str) -> int:
    async with services.db.session() as session:
        rows = await session.scalars(sa.select(QueueMessage).where(QueueMessage.queue == "build"))
        return sum(1 for m in rows if m.body.get("action_id") == sub_id)


async def test_rerun_by_the_owner_queues_a_new_attempt(
    services: Services, client: httpx.AsyncClient
) -> None:
    sub_id = await _done_with_performance(services)
    owner = await _owner_token(services)
    _, bob = await _user(services, "bob")
    before = await _queued_builds(services, sub_id)
    r = await client.post(
        f"/api/v1/submissions/{sub_id}/rerun", headers={"Authorization": f"Bearer {bob}"}
    )
    assert r.status_code == 403, r.text
    r = await client.post(
        f"/api/v1/submissions/{sub_id}/rerun", headers={"Authorization": f"Bearer {owner}"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "uploaded"
    async with services.db.session() as session:
        assert list(await session.scalars(sa.select(Score))) == []
        assert list(await session.scalars(sa.select(Run))) == []
        last = await session.scalar(sa.select(Event).order_by(Event.id.desc()).limit(1))
        assert last is not None and "run again by ada: attempt 2" in last.message
        assert last.envelope["payload"]["previous_status"] == "done"
    assert await _queued_builds(services, sub_id) == before + 1
    again = await client.post(
        f"/api/v1/submissions/{sub_id}/rerun", headers={"Authorization": f"Bearer {owner}"}
    )
    assert again.status_code == 409 and "still uploaded" in again.json()["error"]["message"]


async def test_the_pages_rerun_form_needs_its_csrf_token(
    services: Services, client: httpx.AsyncClient
) -> None:
    sub_id = await make_done_submission(services)
    owner = await _owner_token(services)
    async with services.db.session() as session:
        row = await session.scalar(
            sa.select(ApiToken).where(ApiToken.token_sha256 == hash_token(owner))
        )
        assert row is not None and row.id is not None
        # The session cookie /signin sets for this token (web.auth's own format).
        cookie = session_value(
            secret_key(services.settings),
            token_id=row.id,
            user_id=row.user_id,
            kind=TOKEN_KIND,
            now=time.time(),
        )
    client.cookies.set(SESSION_COOKIE, cookie)
    page = (await client.get(f"/submissions/{sub_id}")).text
    match = re.search(
        r'action="/submissions/[0-9a-f]+/rerun".*?name="csrf" value="([^"]+)"', page, re.S
    )
    assert match, page
    bare = await client.post(f"/submissions/{sub_id}/rerun", data={}, follow_redirects=False)
    assert bare.status_code == 403 and "<h1>" in bare.text and "security token" in bare.text
    ok = await client.post(
        f"/submissions/{sub_id}/rerun", data={"csrf": match.group(1)}, follow_redirects=False
    )
    assert ok.status_code == 303 and ok.headers["location"] == f"/submissions/{sub_id}"
    async with services.db.session() as session:
        s = await session.get(Submission, sub_id)
        assert s is not None and s.status == "uploaded"
    # Signed out, nobody can re-run it (and the button is gone).
    client.cookies.clear()
    assert 'action="/submissions/' not in (await client.get(f"/submissions/{sub_id}")).text


async def test_the_live_stream_of_a_running_submission_ends_in_time_for_a_reconnect(
    services: Services, client: httpx.AsyncClient, monkeypatch
) -> None:
    from web import submission_pages

    monkeypatch.setattr(submission_pages, "STREAM_SECONDS", 1.0)
    monkeypatch.setattr(submission_pages, "POLL_SECONDS", 0.1)
    sub_id = await make_done_submission(services, name="busy")
    async with services.db.session() as session:
        await session.execute(
            sa.update(Submission).where(Submission.id == sub_id).values(status="evaluating")
        )
    r = await client.get(f"/submissions/{sub_id}/live")
    assert r.text.startswith("retry: 1000")
    assert re.findall(r"^event: (\w+)$", r.text, re.M) == ["parts"]  # once: nothing changed
    assert '"status": "evaluating"' in r.text


async def test_a_rank_only_task_shows_no_scores_but_to_admins(
    services: Services, client: httpx.AsyncClient
) -> None:
    sub_id = await _done_with_performance(services)
    async with services.db.session() as session:
        task = await session.scalar(sa.select(Task).where(Task.slug == "toy"))
        s = await session.get(Submission, sub_id)
        assert task is not None and s is not None
        task.config = {**task.config, "leaderboard": {"rank_only": True}}
        session.add(task)
        record_event(
            session,
            s,
            "dataset.finished",
            service="evaluator",
            message="test: accuracy 0.93, 1234.5 examples/s on 100 examples",
            payload={"values": {"accuracy": 0.93}},
        )
    admin, admin_token = await _user(services, "root-admin")
    async with services.db.session() as session:
        await session.execute(sa.update(User).where(User.id == admin.id).values(is_admin=True))
    owner = await _owner_token(services)
    for headers in ({}, {"Authorization": f"Bearer {owner}"}):
        for path in ("", "/live"):
            text = (await client.get(f"/submissions/{sub_id}{path}", headers=headers)).text
            assert "0.93" not in text and "0.9300" not in text, (headers, path)
            assert "ranks only" in text
    seen = (
        await client.get(
            f"/submissions/{sub_id}", headers={"Authorization": f"Bearer {admin_token}"}
        )
    ).text
    assert "0.9300" in seen and "accuracy 0.93" in seen


async def test_moderation_is_said_on_the_page(
    services: Services, client: httpx.AsyncClient
) -> None:
    sub_id = await make_done_submission(services)
    async with services.db.session() as session:
        await session.execute(
            sa.update(Submission)
            .where(Submission.id == sub_id)
            .values(flagged=True, flag_reason="trained on the test set", hidden=True)
        )
    html = (await client.get(f"/submissions/{sub_id}")).text
    assert "Flagged by an admin: trained on the test set" in html
    assert "hidden from the leaderboard by an admin" in html
