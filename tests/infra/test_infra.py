"""The deployment files agree with the task configs and with the services' settings.

docker-compose.yml (PyYAML), infra/terraform/*.tf (python-hcl2) and infra/elasticmq.conf are
read as files: every fleet has its queue pair (queue + dead-letter queue with a redrive
policy) in Terraform and ElasticMQ and an evaluator service in compose; `weighbridge infra
render --check` holds on the committed files and catches a fleet added to the task configs;
`terraform validate` runs where the binary and the AWS provider are at hand.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml
from typer.testing import CliRunner

from cli.main import app
from core.deployment import EXTRA_FLEETS, RENDERED, read_extra_fleets
from core.queue import BUILD_QUEUE, dead_letter_queue, eval_queue
from core.settings import Settings
from core.taskconfig import load_task_configs
from task_configs import FOLDER as SHIPPED_TASKS

ROOT = Path(__file__).resolve().parents[2]
TERRAFORM = ROOT / "infra" / "terraform"
COMPOSE = ROOT / "docker-compose.yml"
ELASTICMQ = ROOT / "infra" / "elasticmq.conf"
PREFIX = "weighbridge-"  # the compose stack's WEIGHBRIDGE_QUEUE_URL prefix


def _clean(value: Any) -> Any:
    """python-hcl2's tree without its bookkeeping keys and with string quotes removed."""
    if isinstance(value, dict):
        return {
            _clean(k): _clean(v)
            for k, v in value.items()
            if k not in ("__is_block__", "__comments__")
        }
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _tf(name: str) -> dict[str, Any]:
    with (TERRAFORM / name).open() as fh:
        return _clean(hcl2.load(fh))


def _blocks(tree: dict[str, Any], kind: str) -> dict[tuple[str, str], dict[str, Any]]:
    """`resource` or `data` blocks by (type, name)."""
    found = {}
    for entry in tree.get(kind, []):
        for type_, named in entry.items():
            for name, body in named.items():
                found[(type_, name)] = body
    return found


def _locals(tree: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for block in tree.get("locals", []):
        merged.update(block)
    return merged


def _elasticmq_queues(text: str) -> dict[str, dict[str, Any]]:
    """The queues block of an ElasticMQ config: name -> {dead_letter, max_receive_count}."""
    body = text[text.index("\nqueues {") :]
    queues: dict[str, dict[str, Any]] = {}
    for match in re.finditer(r'^  "([^"]+)" \{\n(.*?)^  \}', body, re.S | re.M):
        inner = match.group(2)
        dlq = re.search(r'deadLettersQueue \{\s*name = "([^"]+)"\s*maxReceiveCount = (\d+)', inner)
        queues[match.group(1)] = {
            "dead_letter": dlq.group(1) if dlq else None,
            "max_receive_count": int(dlq.group(2)) if dlq else None,
        }
    return queues


def _expected_fleets() -> set[str]:
    """`default`, every shipped task's eval_server_id and the fleets infra/fleets.toml keeps."""
    tasks = load_task_configs(SHIPPED_TASKS)
    return {
        "default",
        *(t.eval.eval_server_id for t in tasks.values()),
        *read_extra_fleets(ROOT / EXTRA_FLEETS),
    }


def _logical_queues(fleets: set[str]) -> list[str]:
    return [BUILD_QUEUE, *(eval_queue(f) for f in sorted(fleets))]


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _invoke(args: list[str], monkeypatch: pytest.MonkeyPatch, cwd: Path) -> Any:
    # The render reads the queue settings; a developer's environment or .env must not leak in.
    for name in list(os.environ):
        if name.startswith("WEIGHBRIDGE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(cwd)
    return CliRunner().invoke(app, args)


# -- docker-compose.yml ----------------------------------------------------------------------


def test_compose_runs_every_role_on_the_aws_like_servers() -> None:
    compose = _compose()
    services = compose["services"]
    for server in ("postgres", "minio", "minio-init", "elasticmq", "mailpit"):
        assert server in services, f"docker-compose.yml lacks the {server} service"
    assert services["elasticmq"]["image"].startswith("softwaremill/elasticmq-native")
    assert "./infra/elasticmq.conf:/opt/elasticmq.conf:ro" in services["elasticmq"]["volumes"]
    assert "mc mb" in " ".join(services["minio-init"]["command"])

    roles = {"api": "api", "builder": "builder", "scheduler": "scheduler"}
    for name, role in roles.items():
        assert services[name]["command"][:3] == ["weighbridge", "serve", role]
    known = set(Settings.model_fields)
    for name, service in services.items():
        if service.get("command", [""])[0] != "weighbridge":
            continue
        env = service["environment"]
        assert env["WEIGHBRIDGE_STORAGE_URL"].startswith("s3://weighbridge")
        assert env["WEIGHBRIDGE_QUEUE_URL"] == f"sqs://?prefix={PREFIX}"
        assert env["WEIGHBRIDGE_S3_ENDPOINT_URL"] == "http://minio:9000"
        assert env["WEIGHBRIDGE_SQS_ENDPOINT_URL"] == "http://elasticmq:9324"
        assert env["WEIGHBRIDGE_EMAIL_URL"].startswith("smtp://mailpit:")
        # A misspelt variable would be ignored silently by the service: every one is a setting.
        for variable in env:
            if variable.startswith("WEIGHBRIDGE_"):
                setting = variable.removeprefix("WEIGHBRIDGE_").lower()
                assert setting in known, f"{name}: {variable} is not a Weighbridge setting"
    # The roles that run user code get what bubblewrap needs inside a container.
    for name in ("builder", *(n for n in services if n.startswith("evaluator-"))):
        assert "SYS_ADMIN" in services[name]["cap_add"]


def test_compose_has_one_evaluator_per_fleet_and_two_at_least() -> None:
    services = _compose()["services"]
    evaluators = {
        n: s["command"]
        for n, s in services.items()
        if s.get("command", [None])[:3]
        == [
            "weighbridge",
            "serve",
            "evaluator",
        ]
    }
    fleets = _expected_fleets()
    assert len(fleets) >= 2
    served = {}
    for name, command in evaluators.items():
        assert command[3] == "--fleet", f"{name} serves no explicit fleet"
        served[command[4]] = name
    assert set(served) == fleets
    for fleet in fleets:
        assert served[fleet] == f"evaluator-{fleet}"


# -- infra/elasticmq.conf --------------------------------------------------------------------


def test_elasticmq_declares_every_queue_with_its_dead_letter_queue() -> None:
    queues = _elasticmq_queues(ELASTICMQ.read_text())
    receives = Settings.model_fields["max_attempts"].default + 1
    for logical in _logical_queues(_expected_fleets()):
        name, dlq = PREFIX + logical, PREFIX + dead_letter_queue(logical)
        assert name in queues, f"infra/elasticmq.conf lacks {name}"
        assert dlq in queues, f"infra/elasticmq.conf lacks {dlq}"
        assert queues[name] == {"dead_letter": dlq, "max_receive_count": receives}
        assert queues[dlq]["dead_letter"] is None


# -- infra/terraform -------------------------------------------------------------------------


def test_every_terraform_file_parses() -> None:
    files = sorted(TERRAFORM.glob("*.tf"))
    assert {f.name for f in files} >= {"main.tf", "variables.tf", "outputs.tf", "queues.tf"}
    for path in files:
        with path.open() as fh:
            assert hcl2.load(fh), f"{path.name} is empty"


def test_terraform_has_a_queue_pair_with_redrive_per_fleet() -> None:
    tree = _tf("queues.tf")
    queues = {name: body for (type_, name), body in _blocks(tree, "resource").items()}
    receives = Settings.model_fields["max_attempts"].default + 1
    granted = _locals(tree)["queue_arns"]
    for logical in _logical_queues(_expected_fleets()):
        dlq = dead_letter_queue(logical)
        assert queues[logical]["name"] == "${var.queue_prefix}" + logical
        assert queues[dlq]["name"] == "${var.queue_prefix}" + dlq
        # python-hcl2 writes the jsonencode() argument as HCL or as JSON depending on its
        # version; the spacing and quoting are its, the references and numbers are ours.
        redrive = re.sub(r'[\s"${}]', "", queues[logical]["redrive_policy"])
        assert re.search(rf"deadLetterTargetArn[=:]aws_sqs_queue\.{dlq}\.arn\b", redrive)
        assert re.search(rf"maxReceiveCount[=:]{receives}\b", redrive)
        assert "redrive_policy" not in queues[dlq]
        # The services' role may use exactly these queues.
        assert f"${{aws_sqs_queue.{logical}.arn}}" in granted
        assert f"${{aws_sqs_queue.{dlq}.arn}}" in granted
    assert len(granted) == 2 * len(_logical_queues(_expected_fleets()))


def test_terraform_outputs_are_exactly_weighbridge_settings() -> None:
    outputs = {name for entry in _tf("outputs.tf")["output"] for name in entry}
    known = set(Settings.model_fields)
    for name in outputs:
        assert name.startswith("WEIGHBRIDGE_"), f"output {name} is not a WEIGHBRIDGE_* setting"
        assert name.removeprefix("WEIGHBRIDGE_").lower() in known, f"{name} is not a setting"
    assert outputs >= {
        "WEIGHBRIDGE_STORAGE_URL",
        "WEIGHBRIDGE_QUEUE_URL",
        "WEIGHBRIDGE_DATABASE_URL",
        "WEIGHBRIDGE_AWS_REGION",
        "WEIGHBRIDGE_SAGEMAKER_ROLE_ARN",
    }


def test_the_bucket_is_private_versioned_and_encrypted() -> None:
    resources = _blocks(_tf("main.tf"), "resource")
    bucket = "${aws_s3_bucket.storage.id}"
    block = resources[("aws_s3_bucket_public_access_block", "storage")]
    assert block["bucket"] == bucket
    for flag in (
        "block_public_acls",
        "block_public_policy",
        "ignore_public_acls",
        "restrict_public_buckets",
    ):
        assert block[flag] is True, flag
    versioning = resources[("aws_s3_bucket_versioning", "storage")]
    assert versioning["bucket"] == bucket
    assert versioning["versioning_configuration"][0]["status"] == "Enabled"
    sse = resources[("aws_s3_bucket_server_side_encryption_configuration", "storage")]
    assert sse["bucket"] == bucket
    default = sse["rule"][0]["apply_server_side_encryption_by_default"][0]
    assert default["sse_algorithm"] in ("aws:kms", "AES256")


def _statements(tree: dict[str, Any], document: str) -> list[dict[str, Any]]:
    return _blocks(tree, "data")[("aws_iam_policy_document", document)]["statement"]


def test_the_roles_have_least_privilege() -> None:
    tree = _tf("main.tf")
    service = _statements(tree, "service")
    for statement in service:
        for action in statement["actions"]:
            assert "*" not in action, f"{statement['sid']}: wildcard action {action}"
        if statement["resources"] == ["*"]:
            # Only actions AWS does not scope by resource may name every resource.
            assert set(statement["actions"]) <= {
                "sqs:ListQueues",
                "ecr:GetAuthorizationToken",
                "sagemaker:ListTransformJobs",
                "sagemaker:ListTrainingJobs",
            }, statement["sid"]
    by_sid = {s["sid"]: s for s in service}
    assert by_sid["UseQueues"]["resources"] == "${local.queue_arns}"
    passing = [s for s in service if "iam:PassRole" in s["actions"]]
    assert len(passing) == 1 and passing[0]["actions"] == ["iam:PassRole"]
    assert passing[0]["resources"] == ["${aws_iam_role.sagemaker.arn}"]
    assert passing[0]["condition"][0]["values"] == ["sagemaker.amazonaws.com"]
    actions = {a for s in service for a in s["actions"]}
    for needed in (
        "s3:PutObject",
        "sqs:ChangeMessageVisibility",
        "ecr:PutImage",
        "sagemaker:CreateModel",
        "sagemaker:CreateTransformJob",
        "sagemaker:CreateTrainingJob",
        "sagemaker:StopTransformJob",
    ):
        assert needed in actions, needed

    sagemaker = _statements(tree, "sagemaker")
    allowed = {a for s in sagemaker for a in s["actions"]}
    # SageMaker reads models and data, writes outputs and logs: no queues, roles or deletes.
    assert not {a for a in allowed if a.split(":")[0] in ("sqs", "iam", "sagemaker")}
    assert "s3:DeleteObject" not in allowed
    reads = next(s for s in sagemaker if s["sid"] == "ReadModelsAndDatasets")
    assert reads["resources"] == [
        "${local.objects}submissions/*",
        "${local.objects}datasets/*",
    ]


def test_terraform_validate(tmp_path: Path) -> None:
    terraform = shutil.which("terraform")
    if terraform is None:
        pytest.skip("no terraform binary on PATH (HashiCorp's apt repository is not reachable)")
    work = tmp_path / "terraform"
    shutil.copytree(TERRAFORM, work)
    env = {**os.environ, "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1"}
    env.setdefault("TF_CLI_CONFIG_FILE", os.devnull)
    if not Path(env["TF_CLI_CONFIG_FILE"]).exists():
        env["TF_CLI_CONFIG_FILE"] = os.devnull
    init = [terraform, "init", "-backend=false", "-input=false", "-no-color"]
    # A local copy of the AWS provider (no registry here): TF_PLUGIN_DIR or /opt/tf-plugins.
    plugins = os.environ.get("TF_PLUGIN_DIR") or "/opt/tf-plugins"
    if Path(plugins).is_dir():
        init.append(f"-plugin-dir={plugins}")
    done = subprocess.run(init, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        pytest.skip(
            "terraform init could not install the AWS provider here (no registry access and "
            f"no local copy): {done.stderr.strip().splitlines()[-1:] or done.stdout[-200:]}"
        )
    checked = subprocess.run(
        [terraform, "validate", "-json", "-no-color"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(checked.stdout)
    assert report["valid"], json.dumps(report["diagnostics"], indent=1)
    formatted = subprocess.run(
        [terraform, "fmt", "-check", "-diff", "-no-color"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert formatted.returncode == 0, f"not `terraform fmt`-formatted:\n{formatted.stdout}"


# -- weighbridge infra render ----------------------------------------------------------------


def test_render_check_passes_on_the_committed_files(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    result = _invoke(
        ["infra", "render", "--check", "--out", str(ROOT), "--task-configs", str(SHIPPED_TASKS)],
        monkeypatch,
        tmp_path,
    )
    assert result.exit_code == 0, result.output
    assert "up to date" in result.output


def _deployment_copy(dest: Path) -> Path:
    for path in [*RENDERED, EXTRA_FLEETS]:
        (dest / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / path, dest / path)
    return dest


def test_render_check_fails_when_a_task_adds_a_fleet_and_render_adds_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    tasks = tmp_path / "tasks"
    shutil.copytree(SHIPPED_TASKS, tasks, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    digits = (tasks / "digits.toml").read_text()
    assert 'eval_server_id = "default"' in digits
    (tasks / "translation.toml").write_text(
        digits.replace('eval_server_id = "default"', 'eval_server_id = "flores"')
    )
    root = _deployment_copy(tmp_path / "deploy")
    args = ["infra", "render", "--out", str(root), "--task-configs", str(tasks)]

    stale = _invoke([*args, "--check"], monkeypatch, tmp_path)
    assert stale.exit_code == 1, stale.output
    for path in RENDERED:
        assert path in stale.output
    # --check writes nothing.
    assert (root / "docker-compose.yml").read_text() == COMPOSE.read_text()

    wrote = _invoke(args, monkeypatch, tmp_path)
    assert wrote.exit_code == 0, wrote.output
    assert _invoke([*args, "--check"], monkeypatch, tmp_path).exit_code == 0

    services = yaml.safe_load((root / "docker-compose.yml").read_text())["services"]
    assert services["evaluator-flores"]["command"][-2:] == ["--fleet", "flores"]
    queues = _elasticmq_queues((root / "infra/elasticmq.conf").read_text())
    assert queues[PREFIX + "eval-flores"]["dead_letter"] == PREFIX + "eval-flores-dlq"
    with (root / "infra/terraform/queues.tf").open() as fh:
        terraform = _blocks(_clean(hcl2.load(fh)), "resource")
    assert ("aws_sqs_queue", "eval-flores") in terraform
    assert ("aws_sqs_queue", "eval-flores-dlq") in terraform


def test_render_follows_the_attempts_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    root = tmp_path / "fresh"
    result = _invoke(["infra", "render", "--out", str(root)], monkeypatch, tmp_path)
    assert result.exit_code == 0, result.output
    # No infra/fleets.toml there: `default` and the task configs' fleets only.
    queues = _elasticmq_queues((root / "infra/elasticmq.conf").read_text())
    fleets = {
        "default",
        *(t.eval.eval_server_id for t in load_task_configs(SHIPPED_TASKS).values()),
    }
    assert set(queues) == {
        PREFIX + q
        for q in (
            "build",
            "build-dlq",
            *(f"eval-{f}" for f in fleets),
            *(f"eval-{f}-dlq" for f in fleets),
        )
    }
    monkeypatch.setenv("WEIGHBRIDGE_MAX_ATTEMPTS", "6")
    result = CliRunner().invoke(app, ["infra", "render", "--out", str(root)])
    assert result.exit_code == 0, result.output
    queues = _elasticmq_queues((root / "infra/elasticmq.conf").read_text())
    assert queues[PREFIX + "build"]["max_receive_count"] == 7


def test_render_refuses_a_bad_fleet_naming_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    root = tmp_path / "deploy"
    (root / "infra").mkdir(parents=True)
    (root / EXTRA_FLEETS).write_text('extra = ["GPU Fleet"]\n')
    result = _invoke(["infra", "render", "--out", str(root)], monkeypatch, tmp_path)
    assert result.exit_code == 1
    said = result.output.replace("\n", "")  # rich wraps long lines
    assert "infra/fleets.toml: extra" in said and "'GPU Fleet'" in said
    assert "Traceback" not in result.output
    assert not (root / "docker-compose.yml").exists()
