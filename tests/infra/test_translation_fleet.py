"""The translation task's fleet is part of the deployment: `weighbridge infra render --check`
holds on the committed files, which give the fleet its queue pair and its own evaluator."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cli.main import app
from core.deployment import plan_deployment
from core.settings import Settings
from core.taskconfig import load_task_configs
from task_configs import FOLDER as SHIPPED_TASKS

ROOT = Path(__file__).resolve().parents[2]


def test_the_translation_fleet_is_planned_and_the_committed_files_are_in_step(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    tasks = load_task_configs(SHIPPED_TASKS)
    assert tasks["translation"].eval.eval_server_id == "translation"
    settings = Settings(home=tmp_path / "home", _env_file=None)  # type: ignore[call-arg]
    plan = plan_deployment(settings, tasks)
    assert "translation" in plan.fleets and "default" in plan.fleets
    assert {"eval-translation", "eval-translation-dlq"} <= {
        name for pair in plan.queues for name in (pair.name, pair.dead_letter)
    }

    # The render reads the queue settings; a developer's environment or .env must not leak in.
    for name in list(os.environ):
        if name.startswith("WEIGHBRIDGE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    args = ["infra", "render", "--check", "--out", str(ROOT), "--task-configs", str(SHIPPED_TASKS)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output

    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert services["evaluator-translation"]["command"][-2:] == ["--fleet", "translation"]
    assert "weighbridge-eval-translation-dlq" in (ROOT / "infra" / "elasticmq.conf").read_text()
    queues_tf = (ROOT / "infra" / "terraform" / "queues.tf").read_text()
    assert '"eval-translation"' in queues_tf and '"eval-translation-dlq"' in queues_tf
