"""core.scrub: server paths never reach a user (logs, errors, the timeline, emails), and the
job's own output is kept."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from core.context import Services
from core.models import Submission
from core.notifications import queue_submission_email
from core.scrub import scrub_text, service_paths
from core.states import fail, transition
from core.submissions import read_logs
from tests.notifications.conftest import make_owner, task_row

VENV = sys.prefix


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (
            f'  File "{VENV}/lib/python3.11/site-packages/torch/nn/module.py", line 5, in f',
            '  File "<site-packages>/torch/nn/module.py", line 5, in f',
        ),
        ("saved /root/.cache/hub/model.bin", "saved …/model.bin"),
        ("cd /tmp && run /tmp/pytest-of-ci/pytest-7/bundle/model.py", "cd … && run …/model.py"),
        ("at /home/ada/work/predict.py:3", "at …/predict.py:3"),
        ("wrote s3://wb/submissions/01HXYZABCDEF/results/test/log", "wrote …/results/test/log"),
        ("key submissions/0123456789abcdef/build/log", "key …/build/log"),
        ("file:///srv/wb/storage/x/y.jsonl", "…/y.jsonl"),
        (f"python {VENV}/bin/python", "python …/python"),
    ],
)
def test_server_paths_are_taken_out(text: str, shown: str) -> None:
    assert scrub_text(text) == shown


@pytest.mark.parametrize(
    "text",
    [
        "epoch 3/10 accuracy 0.93 (loss 0.21)",
        "GET /api/v1/submissions/0123456789abcdef/logs 200",
        "see https://weighbridge.example.org/submissions/0123456789abcdef",
        "labels a/b/c and ratio 1/2",
        "",
    ],
)
def test_the_jobs_own_output_is_kept(text: str) -> None:
    assert scrub_text(text) == text


def test_the_services_own_folders_are_taken_out(tmp_path: Path) -> None:
    home = "/weighbridge-data/home"
    paths = service_paths(home, "file:///bucket-folder/storage")
    text = f"read {home}/outbox/1.eml and /bucket-folder/storage/a/b.bin"
    assert scrub_text(text, paths=paths) == "read …/1.eml and …/b.bin"
    assert "/weighbridge-data" in scrub_text(text)  # only named folders beyond the usual ones


async def test_logs_errors_timeline_and_emails_carry_no_server_path(
    services: Services,
) -> None:
    home = str(services.settings.home)
    async with services.db.session() as session:
        owner = await make_owner(session)
        task = await task_row(session, "toy")
        s = Submission(user_id=owner.id, task_id=task.id, name="m", status="uploaded")
        session.add(s)
        await session.flush()
        log = (
            "step 1 ok\n"
            f'  File "{home}/storage/submissions/{s.id}/bundle/model.py", line 9\n'
            "ModuleNotFoundError: No module named 'transformers'\n"
        )
        await services.storage.write_bytes(f"submissions/{s.id}/build/log", log.encode())
        transition(session, s, "building", service="builder")
        await fail(
            session,
            s,
            service="builder",
            stage="build",
            error=f"pip failed in {VENV}/lib/python3.11/site-packages/pip: see {home}/x.log",
            log_key=f"submissions/{s.id}/build/log",
        )
        note = await queue_submission_email(
            session, services.storage, s, settings=services.settings
        )
        await session.flush()
        from core.submissions import list_events

        events = await list_events(session, s.id)
    logs = await read_logs(services.storage, s.id)
    assert "step 1 ok" in logs and "No module named 'transformers'" in logs
    assert '"…/model.py", line 9' in logs
    assert s.error is not None and "pip failed in <site-packages>/pip" in s.error
    shown = [logs, s.error, note.body_text, note.body_html, *(e.message for e in events)]
    for text in shown:
        for leak in (home, "/tmp/", VENV, f"submissions/{s.id}/", "/root"):
            assert leak not in text, (leak, text)
    assert "transformers" in note.body_text
