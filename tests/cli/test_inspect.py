"""`weighbridge inspect` against `weighbridge up` (api, builder and evaluator in one process):
an Amun request sent, followed to the end with --wait, its runs shown; a failing script exits
1; a broken file is named with its line before anything is sent."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.inspection_results import AMUN_FIELDS, RUSAGE_FIELDS
from tests.cli.conftest import Cli, clean_env, free_port, stop_server, wait_until_healthy

SCRIPT = "import json, os\nprint(json.dumps({'run': int(os.environ['WEIGHBRIDGE_RUN'])}))\n"


@pytest.fixture(scope="module")
def user(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    """A user logged in to a whole stack of their own."""
    root = tmp_path_factory.mktemp("stack")
    log = root / "up.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cli = Cli(env=clean_env(root, WEIGHBRIDGE_PUBLIC_URL=url), cwd=root, server_log=log)
    process = cli.popen("up", "--port", str(port), log=log)
    try:
        wait_until_healthy(url, process, log)
        created = cli.json("admin", "create-user", "ines", "--email", "ines@example.com")
        login = cli.installed("login", "--url", url, "--token", created["token"], "--json")
        assert login.returncode == 0, login.stderr
        cli.in_process = True
        yield cli
    finally:
        stop_server(process)


def write(tmp_path: Path, body: object, name: str = "request.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(body))
    return path


def test_inspect_wait_runs_it_and_prints_every_amun_field(user: Cli, tmp_path: Path) -> None:
    request = write(
        tmp_path, {"base": "python:3.11", "identifier": "cli", "batch_size": 2, "script": SCRIPT}
    )
    final = user.json("inspect", str(request), "--wait")
    assert final["status"] == "done", final.get("error")
    assert final["kind"] == "inspection" and final["inspection_id"] == final["id"]
    assert [r["item"] for r in final["results"]] == [0, 1]
    for item, result in enumerate(final["results"]):
        assert set(AMUN_FIELDS) <= set(result)
        assert result["stdout"] == {"run": item + 1}
        assert set(result["usage"]) == set(RUSAGE_FIELDS)
    # Human output: the runs table.
    shown = user.run("inspect", str(request), "--wait")
    assert shown.returncode == 0, shown.stderr
    assert "is done" in shown.stdout and '{"run": 2}' in shown.stdout, shown.stdout


def test_a_failing_script_exits_1(user: Cli, tmp_path: Path) -> None:
    request = write(tmp_path, {"base": "python:3.11", "script": "raise SystemExit(3)\n"})
    result = user.run("inspect", str(request), "--wait")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "failed" in result.stdout


def test_without_wait_it_prints_the_id_and_status(user: Cli, tmp_path: Path) -> None:
    answer = user.json("inspect", str(write(tmp_path, {"base": "python:3.11"})))
    assert answer["id"] == answer["inspection_id"] and answer["status"] == "uploaded"
    assert answer["parameters"]["batch_size"] == 1


def test_bad_files_and_bad_fields_are_named(user: Cli, tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{\n  "base": "python:3.11",\n  "script": }\n')
    result = user.run("inspect", str(broken))
    assert result.returncode == 2 and "broken.json:3:" in result.stderr
    missing = user.run("inspect", str(tmp_path / "nope.json"))
    assert missing.returncode == 2 and "is not a file" in missing.stderr
    url = write(tmp_path, {"base": "python:3.11", "script": "https://example.org/x.py"})
    refused = user.run("inspect", str(url))
    assert refused.returncode == 1 and "script" in refused.stderr
    assert "does not fetch code" in refused.stderr


def test_a_shell_script_runs_by_its_shebang(user: Cli, tmp_path: Path) -> None:
    script = '#!/bin/sh\nprintf \'{"shell": "%s"}\\n\' "$MODE"\n'
    request = write(
        tmp_path,
        {"base": "debian:12", "script": script, "environment": [{"name": "MODE", "value": "x"}]},
    )
    final = user.json("inspect", str(request), "--wait")
    assert final["status"] == "done", final.get("error")
    assert final["results"][0]["stdout"] == {"shell": "x"}


BENCHMARK = """\
spec_version = "0.1.0"
[info]
description = "elapsed, three times per run"
labels = { task_name = "cli-elapsed" }
[hardware]
instance_type = "local"
[env]
docker_image = "python:3.11"
[ml]
benchmark_code = "python3 $(BAI_SCRIPTS_PATH)/src/run.py"
[[output.metrics]]
name = "elapsed"
units = "ms"
pattern = 'elapsed: ([-+]?\\d*\\.\\d+|\\d+)'
[run]
count = 3
"""


def test_submit_a_script_mode_benchmark_and_read_its_runs(user: Cli, tmp_path: Path) -> None:
    """The issue's case, through the CLI and the whole stack: three runs, each printing
    `elapsed: 12.5` three times; `results --json` shows the series, hwinfo and rusage."""
    descriptor = tmp_path / "elapsed.toml"
    descriptor.write_text(BENCHMARK)
    scripts = tmp_path / "scripts" / "src"
    scripts.mkdir(parents=True)
    (scripts / "run.py").write_text("for _ in range(3):\n    print('elapsed: 12.5')\n")
    final = user.json("submit", str(descriptor), "--script", str(scripts.parent), "--wait")
    assert final["status"] == "done", final.get("error")
    results = user.json("results", final["id"])
    runs = {r["name"]: r for r in results["runs"]}
    assert sorted(runs) == ["run-1", "run-2", "run-3"]
    scores = {(s["dataset"], s["metric"]): s for s in results["scores"]}
    for n in (1, 2, 3):
        assert scores[(f"run-{n}", "elapsed")]["value"] == 12.5
        assert scores[(f"run-{n}", "elapsed")]["n_examples"] == 3
    assert scores[("all", "elapsed")]["value"] == 12.5
    assert scores[("all", "elapsed")]["n_examples"] == 9
    for run in results["runs"]:
        assert run["result"]["metrics"]["elapsed"] == [12.5, 12.5, 12.5]
        assert run["result"]["exit_code"] == 0
        assert set(RUSAGE_FIELDS) <= set(run["result"]["usage"])
        assert run["hwinfo"]["cpu"]["logical_cores"] >= 1
        assert run["hwinfo"]["memory"]["total_bytes"] > 0
