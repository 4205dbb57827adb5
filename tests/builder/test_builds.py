"""Local builds: a tiny torch model becomes model.mar, Dockerfile and specification; envs reuse."""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import zipfile
from pathlib import Path

import pytest
import torch

from builder.builds import BuildOptions, BuildResult, build_model
from builder.environments import MARKER, ensure_env, is_ready
from builder.processes import BuildLog
from core.errors import JobFailed
from core.taskconfig import BuildConfig
from tests.builder.bundles import HANDLER, TORCH_HANDLER, tar_folder, write_model_folder
from tests.evaluator.models import TS_BASE_HANDLER, save_parity_model

SUBMISSION = "0123456789abcdef0123456789abcdef"


def build(
    source: Path,
    tmp_path: Path,
    *,
    config: BuildConfig | None = None,
    envs: Path | None = None,
    name: str = "tiny",
) -> BuildResult:
    work = tmp_path / f"work-{len(list(tmp_path.glob('work-*')))}"
    work.mkdir()
    log = BuildLog(work / "build" / "log")
    try:
        return build_model(
            source,
            source_name=source.name,
            submission_id=SUBMISSION,
            model_name=name,
            build=config or BuildConfig(),
            envs_root=envs or tmp_path / "envs",
            work=work,
            log=log,
            options=BuildOptions(handler_timeout=60),
        )
    finally:
        log.close()


def tiny_torch_bundle(folder: Path) -> Path:
    write_model_folder(
        folder,
        handler=TORCH_HANDLER,
        files={"setup_config.json": b'{"labels": [0, 1]}', "assets/labels.txt": b"even\nodd\n"},
    )
    torch.manual_seed(0)
    torch.save(torch.nn.Linear(1, 2).state_dict(), folder / "model.pt")
    return folder


def mar_members(mar: Path) -> tuple[set[str], dict]:
    with zipfile.ZipFile(mar) as archive:
        return set(archive.namelist()), json.loads(archive.read("MAR-INF/MANIFEST.json"))


def test_tiny_torch_model_builds_into_a_mar(tmp_path: Path) -> None:
    folder = tiny_torch_bundle(tmp_path / "tiny")
    source = tar_folder(folder, tmp_path / "tiny.tar.gz", arcname="tiny")
    result = build(source, tmp_path)

    names, manifest = mar_members(result.folder / "model.mar")
    assert manifest["model"]["handler"] == "handler.py"
    assert manifest["model"]["serializedFile"] == "model.pt"
    assert manifest["model"]["modelName"] == "tiny"
    assert {"handler.py", "model.pt", "setup_config.json", "assets/labels.txt"} <= names

    # The archived weights are the ones saved in the test, loadable as TorchServe would.
    with zipfile.ZipFile(result.folder / "model.mar") as archive:
        (tmp_path / "from-mar.pt").write_bytes(archive.read("model.pt"))
    state = torch.load(tmp_path / "from-mar.pt")
    assert torch.equal(state["weight"], torch.load(folder / "model.pt")["weight"])

    dockerfile = (result.folder / "Dockerfile").read_text()
    assert "FROM pytorch/torchserve:0.12.0-cpu" in dockerfile
    assert "COPY model.mar /home/model-server/model-store/tiny.mar" in dockerfile
    assert "COPY config.properties" in dockerfile and "printf" not in dockerfile
    assert "--models tiny=tiny.mar" in dockerfile
    assert "requirements.txt" not in dockerfile

    spec = json.loads((result.folder / "specification.json").read_text())
    assert spec["bundle"]["format"] == "tar" and len(spec["bundle"]["sha256"]) == 64
    assert {f["path"] for f in spec["bundle"]["files"]} == {
        "handler.py",
        "model.pt",
        "setup_config.json",
        "assets/labels.txt",
    }
    assert spec["handler"]["entry"] == "handle" and spec["handler"]["initialize"] is True
    assert spec["requirements"] is None
    assert spec["torch"] == torch.__version__
    assert spec["torch_model_archiver"] == "0.12.0"
    assert spec["python"]["version"].startswith("3.")
    assert spec["docker"]["base_image"] == "pytorch/torchserve:0.12.0-cpu"
    assert spec["mar"]["manifest"]["model"]["handler"] == "handler.py"
    assert set(spec["timings"]) >= {"unpack_s", "handler_check_s", "archive_s", "total_s"}

    log = (result.folder / "log").read_text()
    assert "torch-model-archiver --model-name tiny" in log and "importing handler.py" in log
    assert result.files() == [
        "model.mar",
        "Dockerfile",
        "config.properties",
        "specification.json",
    ]


def test_a_torchserve_base_handler_subclass_passes_the_import_check(tmp_path: Path) -> None:
    folder = write_model_folder(tmp_path / "ts", handler=TS_BASE_HANDLER, files={})
    save_parity_model(folder)
    result = build(folder, tmp_path, name="parity")
    _, manifest = mar_members(result.folder / "model.mar")
    assert manifest["model"]["serializedFile"] == "model.pt"
    assert result.specification["handler"]["entry"] == "class ParityHandler"


def test_ready_mar_is_kept_as_uploaded(tmp_path: Path) -> None:
    folder = write_model_folder(tmp_path / "m", files={"model.pt": b"w" * 10})
    first = build(folder, tmp_path, name="first")
    mar = tmp_path / "uploaded.mar"
    mar.write_bytes((first.folder / "model.mar").read_bytes())

    again = build(mar, tmp_path)
    assert (again.folder / "model.mar").read_bytes() == mar.read_bytes()
    assert again.bundle.format == "mar"
    assert again.specification["model_name"] == "first"  # the manifest's name is kept
    assert again.handler.entry == "handle"


def test_gpu_image_and_torchserve_settings_come_from_the_task(tmp_path: Path) -> None:
    folder = write_model_folder(tmp_path / "m")
    config = BuildConfig(
        gpu=True,
        base_image_gpu="example.org/serve:gpu-1",
        torchserve={"default_response_timeout": 1200, "decode_input_request": False},
    )
    result = build(folder, tmp_path, config=config)
    assert "FROM example.org/serve:gpu-1" in (result.folder / "Dockerfile").read_text()
    properties = (result.folder / "config.properties").read_text().splitlines()
    assert "default_response_timeout=1200" in properties
    assert "decode_input_request=false" in properties
    assert "inference_address=http://0.0.0.0:8080" in properties


def test_bad_torchserve_setting_fails_the_build(tmp_path: Path) -> None:
    folder = write_model_folder(tmp_path / "m")
    config = BuildConfig(torchserve={"job_queue_size": "1\nload_models=evil.mar"})
    with pytest.raises(JobFailed, match="spans several lines"):
        build(folder, tmp_path, config=config)


def test_requirements_env_is_built_once_and_reused(tmp_path: Path) -> None:
    handler = "import numpy\n" + HANDLER
    requirements = {"requirements.txt": b"numpy\n"}
    envs = tmp_path / "envs"
    first = build(
        write_model_folder(tmp_path / "a", handler=handler, files=requirements), tmp_path, envs=envs
    )
    assert first.env is not None and first.env.reused is False
    assert first.env.path == envs / first.requirements_sha256
    assert is_ready(first.env.path)
    assert first.handler.executable == str(first.env.python)
    assert "pip install" in (first.folder / "log").read_text()
    spec = first.specification["requirements"]
    assert spec["sha256"] == first.requirements_sha256 and spec["reused"] is False
    assert "COPY requirements.txt" in (first.folder / "Dockerfile").read_text()
    assert (first.folder / "requirements.txt").read_bytes() == b"numpy\n"
    _, manifest = mar_members(first.folder / "model.mar")
    assert manifest["model"]["requirementsFile"] == "requirements.txt"

    # Another bundle with the same requirements: the env is reused, pip does not run again.
    second = build(
        write_model_folder(tmp_path / "b", handler=handler + "\n# v2\n", files=requirements),
        tmp_path,
        envs=envs,
    )
    assert second.env is not None and second.env.reused is True
    assert second.env.path == first.env.path
    assert "pip install" not in (second.folder / "log").read_text()
    assert (
        second.specification["timings"]["environment_s"]
        < (first.specification["timings"]["environment_s"])
    )


def test_half_built_env_is_never_reused(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("numpy  # the half-built case\n")
    envs = tmp_path / "envs"
    log = BuildLog(tmp_path / "log")
    sha = hashlib.sha256(requirements.read_bytes()).hexdigest()
    (envs / sha / "bin").mkdir(parents=True)
    (envs / sha / "bin" / "python").write_text("a crash left this here")
    env = ensure_env(requirements, envs_root=envs, log=log, timeout=120)
    log.close()
    assert env.reused is False and (env.path / MARKER).is_file()
    assert "removing the remains of an unfinished build" in (tmp_path / "log").read_text()


def test_concurrent_builders_share_one_env_build(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("numpy  # concurrent\n")
    envs = tmp_path / "envs"
    results: list = []

    def one(i: int) -> None:
        log = BuildLog(tmp_path / f"log{i}")
        try:
            results.append(ensure_env(requirements, envs_root=envs, log=log, timeout=120))
        finally:
            log.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.reused for r in results) == [False, True]
    logs = "".join((tmp_path / f"log{i}").read_text() for i in range(2))
    assert logs.count("pip install") == 1


def test_pip_failure_fails_the_build_with_pip_s_error(tmp_path: Path) -> None:
    folder = write_model_folder(
        tmp_path / "m",
        files={"requirements.txt": b"--no-index\nweighbridge-no-such-package==9.9.9\n"},
    )
    with pytest.raises(JobFailed) as caught:
        build(folder, tmp_path)
    reason = caught.value.reason
    assert reason.startswith("pip could not install requirements.txt: ERROR:")
    assert "weighbridge-no-such-package" in reason
    assert "weighbridge-no-such-package" in caught.value.log_tail
    assert list((tmp_path / "envs").glob("*/bin")) == []  # nothing half-built is left


def test_archiver_runs_from_the_builder_venv() -> None:
    from builder.archives import archiver_command

    assert archiver_command()[0].startswith(str(Path(sys.executable).parent))
