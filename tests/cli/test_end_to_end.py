"""The CLI against a real API server (`weighbridge serve api`, SQLite, local storage).

The flow a user follows: create a user, log in, ping, list tasks, upload, watch the status,
cancel, read results, logs and the leaderboard. Only the API runs: no builder races a test
for a submission's state.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
import time
from pathlib import Path

import pytest

from tests.cli.conftest import Cli, Server, clean_env, free_port, stop_server, wait_until_healthy


def make_archive(path: Path, *, size: int = 20_000) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        handler = (
            b"def handle(data, context):\n"
            b"    if data is None:  # TorchServe's initialisation call\n"
            b"        return None\n"
            b"    return [{'label': 0} for _ in data]\n"
        )
        for name, data in (("handler.py", handler), ("weights.bin", os.urandom(size))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="module")
def user(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    """A user logged in with their own config dir (they share the server's home)."""
    created = server.cli.json("admin", "create-user", "erin", "--email", "erin@example.com")
    root = tmp_path_factory.mktemp("erin")
    cli = Cli(
        env={**server.cli.env, "XDG_CONFIG_HOME": str(root / "config")},
        cwd=root,
        server_log=server.cli.server_log,
    )
    # The installed command logs in; the tests then run the same app in-process (faster).
    result = cli.installed("login", "--url", server.url, "--token", created["token"], "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["user"]["name"] == "erin"
    cli.in_process = True
    return cli


def test_login_stores_url_and_token_readable_only_by_the_user(user: Cli, server: Server) -> None:
    path = Path(user.env["XDG_CONFIG_HOME"]) / "weighbridge" / "config.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = json.loads(path.read_text())
    assert stored["url"] == server.url
    assert stored["token"].startswith("wb_")


def test_login_with_a_wrong_token_fails_and_stores_nothing(server: Server, tmp_path: Path) -> None:
    cli = Cli(env=clean_env(tmp_path), cwd=tmp_path)
    result = cli.run("login", "--url", server.url, "--token", "wb_wrong")
    assert result.returncode == 1
    assert "invalid API token" in result.stderr
    assert not (tmp_path / "config" / "weighbridge" / "config.json").exists()


def test_ping_says_who_i_am(user: Cli, server: Server) -> None:
    from cli import __version__

    answer = user.json("ping")
    assert answer["url"] == server.url
    assert answer["version"] == __version__
    assert answer["user"]["name"] == "erin"
    human = user.run("ping")
    assert human.returncode == 0
    assert "reachable" in human.stdout and "erin" in human.stdout


def test_tasks_lists_the_fixture_task(user: Cli) -> None:
    answer = user.json("tasks")
    toy = next(t for t in answer["tasks"] if t["slug"] == "toy")
    assert [m["name"] for m in toy["metrics"]][:2] == ["accuracy", "macro_f1"]
    human = user.run("tasks")
    assert "toy" in human.stdout and "accuracy" in human.stdout


def test_upload_status_cancel_results(user: Cli, tmp_path: Path) -> None:
    archive = make_archive(tmp_path / "parity.tar.gz")

    uploaded = user.json("upload", str(archive), "--task", "toy", "--name", "parity-v1")
    assert uploaded["status"] == "uploaded"
    assert uploaded["name"] == "parity-v1"
    # The bytes arrived whole: the server's hash is the file's.
    assert uploaded["bytes"] == archive.stat().st_size
    assert uploaded["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    sid = uploaded["id"]

    status = user.json("status", sid)
    assert {"id", "kind", "task", "status", "events", "error"} <= status.keys()
    assert (status["id"], status["task"], status["kind"]) == (sid, "toy", "model")
    assert status["events"][0]["status"] == "uploaded"

    listed = user.json("status")
    assert sid in [s["id"] for s in listed["submissions"]]
    assert sid in user.run("status").stdout

    cancelled = user.json("cancel", sid)
    assert cancelled["status"] == "cancelled"
    status = user.json("status", sid)
    assert status["status"] == "cancelled"
    assert [e["status"] for e in status["events"]][-1] == "cancelled"
    human = user.run("status", sid)
    assert human.returncode == 0
    assert "cancelled" in human.stdout and "timeline" in human.stdout

    # Watching a submission that ended badly exits 1, with the final record.
    watched = user.json("status", sid, "--watch", expect=1)
    assert watched["status"] == "cancelled"

    again = user.run("cancel", sid)
    assert again.returncode == 1
    assert "already cancelled" in again.stderr

    results = user.json("results", sid)
    assert results == {"id": sid, "status": "cancelled", "scores": [], "runs": []}
    logs = user.json("logs", sid)
    assert logs["id"] == sid and logs["complete"] is True


def test_upload_a_folder_and_wait_until_it_is_cancelled(user: Cli, tmp_path: Path) -> None:
    folder = tmp_path / "folder-model"
    folder.mkdir()
    (folder / "handler.py").write_text(
        "def handle(data, context):\n"
        "    return None if data is None else [{'label': 0}] * len(data)\n"
    )
    waiting = user.popen("upload", str(folder), "--task", "toy", "--wait", "--interval", "0.1")
    try:
        sid = None
        deadline = time.monotonic() + 20
        while sid is None and time.monotonic() < deadline:
            mine = user.json("status")["submissions"]
            sid = next((s["id"] for s in mine if s["name"] == "folder-model"), None)
            time.sleep(0.1)
        assert sid is not None, "the folder upload never arrived"
        time.sleep(0.3)  # let the waiting command print the first events
        assert user.json("cancel", sid)["status"] == "cancelled"
        out, err = waiting.communicate(timeout=20)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    # --wait on a cancelled submission exits 1, after printing the timeline as it came.
    assert waiting.returncode == 1, err
    assert f"as {sid}" in out
    assert "uploaded" in out and "cancelled by erin" in out
    assert "uploading folder-model.tar.gz" in err  # the progress bar went to stderr


def test_upload_to_an_unknown_task_exits_1_with_the_api_message(user: Cli, tmp_path: Path) -> None:
    archive = make_archive(tmp_path / "m.tar.gz", size=10)
    result = user.run("upload", str(archive), "--task", "no-such-task", "--json")
    assert result.returncode == 1
    assert "no-such-task" in result.stderr
    assert result.stdout == ""


def test_cancel_purge_does_not_pretend(user: Cli, tmp_path: Path) -> None:
    sid = user.json("upload", str(make_archive(tmp_path / "p.tar.gz")), "--task", "toy")["id"]
    result = user.run("cancel", sid, "--purge", "--json")
    answer = json.loads(result.stdout)
    assert answer["status"] == "cancelled"
    # Either the server deletes it, or the CLI says plainly that it cannot.
    if answer["purged"]:
        assert result.returncode == 0
    else:
        assert result.returncode == 1
        assert "purge is not supported by this server" in result.stderr


def test_leaderboard_of_a_task_without_results(user: Cli) -> None:
    board = user.json("leaderboard", "toy", "--weights", "accuracy=2,macro_f1=1")
    assert board["task"] == "toy"
    assert board["rows"] == []


def test_up_serves_the_api_tells_how_to_create_a_user_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    cli = Cli(env=clean_env(tmp_path), cwd=tmp_path)
    port = free_port()
    log = tmp_path / "up.log"
    process = cli.popen("up", "--port", str(port), log=log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, process, log)
        deadline = time.monotonic() + 10
        while "Press Ctrl+C" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        code = stop_server(process)
    output = log.read_text()
    assert code == 0, output
    assert f"Weighbridge is up at {url}" in output
    assert "weighbridge admin create-user" in output
    assert "Traceback" not in output


def test_upload_runs_the_checks_of_test_first(user: Cli, tmp_path: Path) -> None:
    """A broken bundle is refused on the user's machine, naming file and line; none is sent."""
    before = len(user.json("status", "--limit", "200")["submissions"])
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "handler.py").write_text("def handle(data, context):\n    return [\n")
    result = user.run("upload", str(broken), "--task", "toy")
    assert result.returncode == 1
    assert "SyntaxError" in result.stderr and "handler.py, line 2" in result.stderr
    assert "nothing was uploaded" in result.stderr
    assert "--no-check" in result.stderr

    no_handler = tmp_path / "no-handler"
    no_handler.mkdir()
    (no_handler / "weights.bin").write_bytes(b"\0" * 64)
    result = user.run("upload", str(no_handler), "--task", "toy")
    assert result.returncode == 1
    assert "has no handler.py" in result.stderr
    assert len(user.json("status", "--limit", "200")["submissions"]) == before

    # An archive is unpacked and checked the same way, its files named inside it.
    archive = tmp_path / "broken.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(broken / "handler.py", arcname="handler.py")
    result = user.run("upload", str(archive), "--task", "toy")
    assert result.returncode == 1
    assert "handler.py, line 2" in result.stderr

    # --no-check sends it as it is; the server's build is then the judge.
    sent = user.json("upload", str(no_handler), "--task", "toy", "--no-check")
    assert sent["status"] == "uploaded"
    assert len(user.json("status", "--limit", "200")["submissions"]) == before + 1


BENCHMARK = """\
spec_version = "0.1.0"
[info]
description = "hello"
labels = { task_name = "hello-cli" }
[hardware]
instance_type = "local"
[env]
docker_image = "python:3.11"
[ml]
benchmark_code = "python3 $(BAI_SCRIPTS_PATH)/run.py"
[[output.metrics]]
name = "elapsed"
units = "ms"
pattern = 'elapsed: (\\d+\\.\\d+)'
"""


def test_submit_sends_the_descriptor_untouched_with_its_scripts(
    user: Cli, server: Server, tmp_path: Path
) -> None:
    descriptor = tmp_path / "bench.toml"
    descriptor.write_text(BENCHMARK)
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "run.py").write_text("print('elapsed: 12.5')\n")
    answer = user.json("submit", str(descriptor), "--script", str(scripts), "--json")
    assert answer["kind"] == "benchmark" and answer["status"] == "uploaded"
    assert answer["name"] == "hello-cli"
    home = Path(server.cli.env["WEIGHBRIDGE_HOME"])
    stored = home / "storage" / "submissions" / answer["id"] / "upload" / "bench.toml"
    assert stored.read_text() == BENCHMARK  # the user's TOML, byte for byte
    archives = list((home / "storage" / "scripts").glob("*/*"))
    assert archives, "the scripts archive is stored by its sha256"
    with tarfile.open(archives[0]) as tar:
        assert tar.getnames() == ["run.py"]
    assert hashlib.sha256(archives[0].read_bytes()).hexdigest() == archives[0].parent.name


def test_submit_refuses_a_bad_descriptor_with_its_line_before_sending(
    user: Cli, tmp_path: Path
) -> None:
    descriptor = tmp_path / "bad.toml"
    descriptor.write_text(BENCHMARK.replace('instance_type = "local"', 'instanse_type = "x"'))
    result = user.run("submit", str(descriptor))
    assert result.returncode == 1
    assert "instanse_type" in result.stderr and "line 6" in result.stderr


def test_submit_a_range_family_lists_its_children(user: Cli, tmp_path: Path) -> None:
    descriptor = tmp_path / "family.toml"
    descriptor.write_text(
        BENCHMARK.replace("/run.py", "/run.py --threads {threads}") + "[ranges]\nthreads = [1, 2]\n"
    )
    answer = user.json("submit", str(descriptor), "--json")
    assert answer["role"] == "family"
    assert [c["values"] for c in answer["children"]] == [{"threads": 1}, {"threads": 2}]
    human = user.run("submit", str(descriptor))
    assert human.returncode == 0 and "a family of 2 runs" in human.stdout


def test_status_and_results_of_a_family_show_its_children(user: Cli, tmp_path: Path) -> None:
    descriptor = tmp_path / "family2.toml"
    descriptor.write_text(
        BENCHMARK.replace("/run.py", "/run.py --batch {batch}") + "[ranges]\nbatch = [8, 16]\n"
    )
    parent = user.json("submit", str(descriptor), "--json")["id"]
    detail = user.json("status", parent, "--json")
    assert detail["role"] == "family"
    assert [c["values"] for c in detail["children"]] == [{"batch": 8}, {"batch": 16}]
    assert all(c["status"] == "uploaded" for c in detail["children"])
    child = detail["children"][0]["id"]
    assert user.json("status", child, "--json")["parent_id"] == parent
    human = user.run("results", parent)
    assert human.returncode == 0 and "family" in human.stdout and "batch" in human.stdout
