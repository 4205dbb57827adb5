"""Human output: tables without raw JSON, durations and times in words, and nobody's text
able to drive the reader's terminal.

The submissions here are scored and ranked, which takes the builder, the evaluator and its
sandbox; the server is therefore a stand-in that answers the API's documents. The records
are made by the API's own serializers (api.serializers) from model rows, the leaderboard in
the shape core.boards.read_leaderboard returns, so the CLI reads what the real server
sends.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import Cli, clean_env

# Retitles the terminal, clears it, then shows the rest of the name backwards.
HOSTILE = "\x1b]0;pwned\x07evil\x1b[2J\u202egnp.exe\r"
SHOWN = "\\x1b]0;pwned\\x07evil\\x1b[2J\\u202egnp.exe\\r"
RAW = ("\x1b", "\x07", "\u202e", "\r")
SID = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
T0 = datetime(2026, 12, 6, 8, 1, 12, 345678, tzinfo=UTC)


def submission_document() -> dict[str, Any]:
    from api.serializers import submission_json
    from core.models import Event, Run, Submission, User

    submission = Submission(
        id=SID,
        user_id=1,
        name=HOSTILE,
        status="done",
        upload_bytes=3_565_158,
        upload_sha256="ab" * 32,
        created_at=T0,
        updated_at=T0 + timedelta(minutes=5),
    )
    owner = User(id=1, name=f"mallory{HOSTILE}", email="m@example.com")
    events = [
        Event(
            id=1,
            submission_id=SID,
            message_id="m1",
            type="status.uploaded",
            status="uploaded",
            message=f"uploaded {HOSTILE}",
            created_at=T0,
        )
    ]
    performance = {
        "examples_per_second": 1234.5678,
        "latency_p50_ms": 2.25,
        "latency_p90_ms": 3.5,
        "latency_p99_ms": 41.0,
        "peak_memory_mb": 45.5,
    }
    runs = [
        Run(
            submission_id=SID,
            name="test",
            status="done",
            started_at=T0 + timedelta(seconds=30),
            finished_at=T0 + timedelta(seconds=30, minutes=4, milliseconds=3300),
            summary={
                "dataset": "test",
                "sha256": "cd" * 32,
                "n_examples": 1000,
                "performance": performance,
                "timings": {"init_seconds": 0.4, "wall_seconds": 243.3},
                "worker": {"sandbox": {"tool": "bwrap"}, "versions": {"torch": "2.4"}},
                "files": {"log": f"submissions/{SID}/results/test/log"},
                "scores": ["accuracy", "macro_f1"],
            },
        ),
        Run(
            submission_id=SID,
            name="test-noisy",
            status="failed",
            started_at=T0 + timedelta(minutes=5),
            finished_at=T0 + timedelta(minutes=5, seconds=1.2),
            summary={},
            error=f"the handler printed {HOSTILE}",
        ),
    ]
    return submission_json(submission, task="toy", owner=owner, events=events, runs=runs)


def results_document() -> dict[str, Any]:
    from api.serializers import score_json
    from core.models import Score

    document = submission_document()
    scores = [
        Score(
            submission_id=SID,
            dataset="test",
            metric="accuracy",
            value=0.9704,
            ci_low=0.955,
            ci_high=0.984,
            n_examples=1000,
        ),
        Score(
            submission_id=SID,
            dataset="test",
            metric="examples_per_second",
            value=1234.5678,
            n_examples=1000,
            extra={"kind": "performance", "unit": "examples/s"},
        ),
    ]
    return {
        "id": SID,
        "status": "done",
        "scores": [score_json(s) for s in scores],
        "runs": document["runs"],
    }


LEADERBOARD = {
    "task": "toy",
    "primary_metric": "accuracy",
    "weights": {"accuracy": 4.0, "macro_f1": 1.0},
    "rows": [
        {
            "rank": 1,
            "model": HOSTILE,
            "submission_id": SID,
            "owner": f"mallory{HOSTILE}",
            "score": 0.8011,
            "metrics": {"accuracy": 0.9704, "macro_f1": 0.9703},
            "ci": [0.955, 0.984],
            "tied": False,
            "pvalue": None,
            "private": False,
            "datasets": {},
            "unsandboxed": False,
        },
        {
            "rank": 2,
            "model": "linear",
            "submission_id": "1" * 32,
            "owner": "erin",
            "score": 0.7381,
            "metrics": {"accuracy": 0.9648, "macro_f1": 0.9611},
            "ci": [0.948, 0.979],
            "tied": True,
            "pvalue": 0.31,
            "private": False,
            "datasets": {},
            "unsandboxed": False,
        },
    ],
    "unranked": [
        {
            "model": f"half{HOSTILE}",
            "submission_id": "2" * 32,
            "owner": "erin",
            "reason": "no scores on dataset 'test'",
        }
    ],
}

LOG = f"build started\n\tstep 1\r\nmodel says {HOSTILE}\x1b[31mred\x9b2J\n"
RATE_LIMITED = {
    "error": {
        "code": "rate_limited",
        "message": "you have used 3 of 3 submissions to 'toy' in 24 hours",
        "field": "task",
        "limit": 3,
        "window_hours": 24,
        "next_slot_at": "2026-12-07T08:01:12.345678+00:00",
        "retry_after_seconds": 86316,
    }
}


def answers() -> dict[tuple[str, str], tuple[int, Any]]:
    base = "/api/v1"
    return {
        ("GET", f"{base}/submissions/{SID}"): (200, submission_document()),
        ("GET", f"{base}/submissions/{SID}/results"): (200, results_document()),
        ("GET", f"{base}/submissions/{SID}/logs"): (
            200,
            {"text": LOG, "next_offset": len(LOG), "complete": True},
        ),
        ("GET", f"{base}/submissions"): (200, {"submissions": [submission_document()]}),
        ("GET", f"{base}/tasks/toy/leaderboard"): (200, LEADERBOARD),
        ("GET", f"{base}/tasks/toy"): (200, {"slug": "toy", "name": "Toy"}),
        ("POST", f"{base}/submissions"): (429, RATE_LIMITED),
    }


class StandIn(BaseHTTPRequestHandler):
    routes: dict[tuple[str, str], tuple[int, Any]] = {}

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        while length > 0:  # read the whole upload before answering, as the API does
            length -= len(self.rfile.read(min(length, 65536)))
        path = self.path.split("?", 1)[0]
        status, body = self.routes.get(
            (self.command, path),
            (404, {"error": {"code": "not_found", "message": f"no submission {HOSTILE!s}"}}),
        )
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def stand_in() -> Iterator[str]:
    StandIn.routes = answers()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def cli(tmp_path: Path, stand_in: str) -> Cli:
    env = clean_env(tmp_path, WEIGHBRIDGE_URL=stand_in, WEIGHBRIDGE_TOKEN="wb_test")
    return Cli(env=env, cwd=tmp_path, in_process=True)


def human(cli: Cli, *args: str, expect: int = 0) -> str:
    result = cli.run(*args)
    assert result.returncode == expect, (result.stdout, result.stderr)
    return result.stdout + result.stderr


def assert_escaped(text: str) -> None:
    for raw in RAW:
        assert raw not in text, f"{raw!r} reached the terminal:\n{text!r}"
    assert SHOWN in text, text


def line_with(lines: list[str], *parts: str) -> str:
    return next(line for line in lines if all(part in line for part in parts))


def end_of(line: str, cell: str) -> int:
    return line.index(cell) + len(cell)


def test_status_shows_the_runs_as_an_aligned_table_without_json(cli: Cli) -> None:
    out = human(cli, "status", SID)
    assert "{" not in out and "}" not in out, out
    lines = out.splitlines()
    runs = lines[lines.index(line_with(lines, "runs")) :]
    header = line_with(runs, "dataset", "status", "took", "examples")
    done = line_with(runs, " test ", "done")
    failed = line_with(runs, "test-noisy", "failed")
    # Names and statuses start where their header does; numbers end where theirs does.
    assert header.index("dataset") == done.index("test") == failed.index("test-noisy")
    assert header.index("status") == done.index("done") == failed.index("failed")
    assert end_of(header, "took") == end_of(done, "4 min 3 s") == end_of(failed, "1.2 s")
    assert end_of(header, "examples ") - 1 == end_of(done, "1,000")
    assert end_of(header, "examples/s") == end_of(done, "1,234.6")
    assert end_of(header, "latency p50") == end_of(done, "2.2 ms")
    assert end_of(header, "peak memory") == end_of(done, "45.5 MiB")
    # The failed run's error, escaped, under the table.
    assert "test-noisy: the handler printed " + SHOWN in out
    # Times in UTC to the minute, sizes with units, no microseconds anywhere.
    assert "2026-12-06 08:01 UTC" in out
    assert "3.4 MiB" in out
    assert not re.search(r"\d{2}:\d{2}:\d{2}\.\d+", out)


def test_a_hostile_name_is_escaped_in_status_results_and_leaderboard(cli: Cli) -> None:
    for args in (["status", SID], ["status"], ["results", SID], ["leaderboard", "toy"]):
        out = human(cli, *args)
        assert_escaped(out)
        if args in (["status", SID], ["leaderboard", "toy"]):
            assert "mallory" + SHOWN in out, out


def test_json_output_stays_the_exact_document(cli: Cli) -> None:
    assert cli.json("status", SID)["name"] == HOSTILE
    assert cli.json("leaderboard", "toy")["rows"][0]["model"] == HOSTILE


def test_logs_keep_lines_and_tabs_and_escape_the_rest(cli: Cli) -> None:
    out = human(cli, "logs", SID)
    assert out.startswith("build started\n\tstep 1\nmodel says ")
    assert_escaped(out)
    assert "\\x1b[31mred\\x9b2J\n" in out
    assert cli.json("logs", SID)["text"] == LOG


def test_the_rate_limit_says_when_in_words(cli: Cli, tmp_path: Path) -> None:
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        handler = b"def handle(data, context):\n    return [{'label': 0} for _ in data]\n"
        info = tarfile.TarInfo("handler.py")
        info.size = len(handler)
        tar.addfile(info, io.BytesIO(handler))
    result = cli.run("upload", str(archive), "--task", "toy", "--name", "m", "--no-check")
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "try again in 23 h 58 min (at 2026-12-07 08:01 UTC)" in result.stderr
    assert "86316" not in result.stderr


def test_an_api_error_message_is_escaped(cli: Cli) -> None:
    out = human(cli, "status", "nope", expect=1)
    assert "no submission " + SHOWN in out
    assert_escaped(out)


def test_the_leaderboard_says_what_its_numbers_mean(cli: Cli) -> None:
    out = human(cli, "leaderboard", "toy")
    text = " ".join(out.split())  # the notes may wrap
    assert "score: the Dynascore, the weighted combination of the task's metrics" in text
    assert "(weights accuracy 4, macro_f1 1, scaled to sum 1)" in text
    assert "95% CI: the confidence interval of accuracy, the primary metric" in text
    assert "2 ≈" in out
    assert "≈: not significantly different from the row above" in text
    assert "paired bootstrap" in text
    assert f"not ranked: half{SHOWN} (erin): no scores on dataset 'test'" in text
