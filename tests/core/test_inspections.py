"""Amun inspection requests mapped onto a descriptor and a scripts archive: every field of a
full request lands where the module docstring says, and bad requests are refused naming the
field."""

from __future__ import annotations

import io
import tarfile
from typing import Any

import pytest

from core.descriptor import parse_descriptor
from core.inspection_results import RUSAGE_FIELDS, amun_result, os_release, parsed_stdout
from core.inspections import (
    InspectionRequestError,
    label_of,
    parse_specification,
    plan_inspection,
    script_command,
)

PIPFILE = {
    "source": [{"url": "https://pypi.org/simple", "verify_ssl": True, "name": "pypi"}],
    "packages": {
        "numpy": "*",
        "requests": ">=2.20",
        "uvicorn": {"version": "==0.30.0", "extras": ["standard"]},
        "pywin32": {"version": "*", "markers": "sys_platform == 'win32'"},
    },
    "dev-packages": {"pytest": "*"},
    "requires": {"python_version": "3.11"},
}
LOCK = {
    "_meta": {"hash": {"sha256": "00"}, "pipfile-spec": 6},
    "default": {
        "numpy": {"version": "==1.26.4", "hashes": ["sha256:aa"]},
        "six": {"version": "==1.16.0", "markers": "python_version >= '2.7'"},
    },
    "develop": {"pytest": {"version": "==8.0.0"}},
}
SCRIPT = "import json, platform\nprint(json.dumps({'python': platform.python_version()}))\n"


def full_request() -> dict[str, Any]:
    """Every field of Amun's InspectionSpecification."""
    return {
        "base": "registry.access.redhat.com/ubi8/python-38",
        "identifier": "matmul test/01",
        "package_manager": "micropipenv",
        "batch_size": 3,
        "allowed_failures": 1,
        "parallelism": 2,
        "packages": ["libgomp1", "vim"],
        "python_packages": ["tensorflow-cpu==2.15.0"],
        "python": {
            "requirements": PIPFILE,
            "requirements_locked": LOCK,
            "runtime_environment": {"python_version": "3.8", "operating_system": {"name": "rhel"}},
            "constraints": "numpy<2\n",
        },
        "build": {"requests": {"cpu": "1", "memory": "1Gi"}},
        "run": {
            "requests": {
                "cpu": "500m",
                "memory": "8Gi",
                "hardware": {"cpu_family": 6, "cpu_model": 94, "processor": "Skylake"},
            }
        },
        "files": [
            {"path": "data/matrix.json", "content": "[[1, 2], [3, 4]]"},
            {"path": "/etc/app.conf", "content": "mode=fast\n"},
        ],
        "environment": [{"name": "OMP_NUM_THREADS", "value": "2"}, {"name": "MODE", "value": ""}],
        "script": SCRIPT,
        "update": True,
        "upgrade_pip": True,
        "send_messages": True,
        "force_sync": True,
    }


def unpack(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }


def test_every_field_of_a_full_request_is_mapped_or_said_to_be_unhonoured() -> None:
    spec = parse_specification(full_request())
    plan = plan_inspection(spec, memory_limit_mb=4096)
    descriptor = parse_descriptor(plan.descriptor_toml())
    # base -> environment.base and env.docker_image.
    assert descriptor.environment.base == "registry.access.redhat.com/ubi8/python-38"
    assert descriptor.env.docker_image == descriptor.environment.base
    # identifier -> a valid task_name label; batch_size -> run.count.
    assert descriptor.task_name == "matmul-test-01"
    assert descriptor.run.count == 3
    # python_packages, then the lock's default pins (the lock wins over the Pipfile).
    assert descriptor.environment.python_packages == [
        "tensorflow-cpu==2.15.0",
        "numpy==1.26.4",
        "six==1.16.0; python_version >= '2.7'",
    ]
    assert descriptor.environment.native_packages == ["libgomp1", "vim"]
    assert descriptor.env.vars == {"OMP_NUM_THREADS": "2", "MODE": ""}
    assert descriptor.ml.benchmark_code == "python3 $(WEIGHBRIDGE_SCRIPTS_PATH)/script"
    # script and files in the scripts archive; an absolute path below the scripts folder.
    assert unpack(plan.scripts_archive()) == {
        "script": SCRIPT.encode(),
        "data/matrix.json": b"[[1, 2], [3, 4]]",
        "etc/app.conf": b"mode=fast\n",
    }
    text = "\n".join(plan.warnings)
    for said in (
        "package_manager",
        "update = true",
        "upgrade_pip = true",
        "send_messages = true",
        "force_sync = true",
        "parallelism = 2",
        "allowed_failures = 1",
        "build.requests.cpu = '1'",
        "build.requests.memory = '1Gi'",
        "run.requests.cpu = '500m'",
        "run.requests.hardware",
        "python.runtime_environment",
        "python.constraints",
        "python.requirements:",
        "files[1].path = '/etc/app.conf'",
    ):
        assert said in text, said
    assert "run.requests.memory = '8Gi' is recorded, not reserved; each run may use at most " in (
        text
    )
    assert "at most 4096 MiB (the sandbox's limit), less than the 8Gi asked" in text
    # The archive is reproducible: the same request gives the same bytes (and scripts sha256).
    assert plan.scripts_archive() == plan_inspection(spec, memory_limit_mb=4096).scripts_archive()


def test_a_pipfile_alone_becomes_requirement_lines() -> None:
    spec = parse_specification({"base": "python:3.11", "python": {"requirements": PIPFILE}})
    plan = plan_inspection(spec)
    assert plan.descriptor["environment"]["python_packages"] == [
        "numpy",
        "requests>=2.20",
        "uvicorn[standard]==0.30.0",
        "pywin32; sys_platform == 'win32'",
    ]
    # Nothing but base: one run of nothing, still measured; no scripts archive.
    bare = plan_inspection(parse_specification({"base": "python:3.11"}))
    assert bare.files == {} and bare.command == "true"
    assert parse_descriptor(bare.descriptor_toml()).run.count == 1
    assert parse_descriptor(bare.descriptor_toml()).task_name == "inspection"


@pytest.mark.parametrize(
    ("script", "command"),
    [
        ("print(1)\n", "python3 $(WEIGHBRIDGE_SCRIPTS_PATH)/script"),
        ("#!/usr/bin/python3\nprint(1)\n", "python3 $(WEIGHBRIDGE_SCRIPTS_PATH)/script"),
        ("#!/usr/bin/env python\nprint(1)\n", "python3 $(WEIGHBRIDGE_SCRIPTS_PATH)/script"),
        ("#!/usr/bin/bash\necho hi\n", "/usr/bin/bash $(WEIGHBRIDGE_SCRIPTS_PATH)/script"),
        ("#!/bin/sh -eu\necho hi\n", "/bin/sh -eu $(WEIGHBRIDGE_SCRIPTS_PATH)/script"),
        ("#!/usr/bin/env bash\necho\n", "/usr/bin/env bash $(WEIGHBRIDGE_SCRIPTS_PATH)/script"),
        (None, "true"),
    ],
)
def test_the_script_runs_with_python_unless_its_shebang_names_another_interpreter(
    script: str | None, command: str
) -> None:
    assert script_command(script) == command


def test_labels_are_made_valid() -> None:
    assert label_of("  ~~weird name!! ") == "weird-name"
    assert label_of("x" * 100) == "x" * 63
    assert label_of("---") == "inspection"


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"base": None}, "base", "required"),
        ({"base": ""}, "base", "at least 1"),
        ({"surprise": 1}, "surprise", "not a field"),
        ({"batch_size": 0}, "batch_size", "greater than or equal to 1"),
        ({"batch_size": 5000}, "batch_size", "less than or equal to 1000"),
        ({"script": "https://example.org/x.py"}, "script", "does not fetch code"),
        ({"files": [{"path": "../../etc/passwd", "content": "x"}]}, "files[0].path", ".."),
        ({"files": [{"path": "script", "content": "x"}]}, "files[0].path", "script goes"),
        ({"files": [{"path": "a"}]}, "files[0].content", "required"),
        ({"environment": [{"name": "1X", "value": "v"}]}, "environment[0].name", "variable"),
        ({"environment": [{"name": "PATH", "value": "/x"}]}, "environment[0].name", "set by"),
        ({"packages": ["Bad Name"]}, "packages", "Debian package"),
        ({"python_packages": ["-r x.txt"]}, "python_packages", "pip options"),
        ({"python_packages": ["numpy>>1"]}, "python_packages", "not a pip requirement"),
        ({"python_packages": ["x @ https://h/x.whl"]}, "python_packages", "URL"),
        ({"run": {"requests": {"memory": "lots"}}}, "run.requests.memory", "memory quantity"),
        ({"build": {"requests": {"cpu": "fast"}}}, "build.requests.cpu", "CPU quantity"),
        ({"package_manager": "poetry"}, "package_manager", "micropipenv"),
        ({"python": {"requirements": {"packages": {"x": {"git": "https://h/x"}}}}},
         "python.requirements.packages.x", "git"),
        ({"python": {"requirements_locked": {"default": {"x": {"path": "."}}}}},
         "python.requirements_locked.default.x", "version"),
        ({"environment": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]},
         "environment[1].name", "twice"),
        ({"files": [{"path": "/a", "content": "1"}, {"path": "a", "content": "2"}]},
         "files[1].path", "twice"),
    ],
)  # fmt: skip
def test_bad_requests_are_refused_naming_the_field(
    change: dict[str, Any], field: str, words: str
) -> None:
    request: dict[str, Any] = {"base": "python:3.11", "script": "print(1)"}
    request.update(change)
    request = {k: v for k, v in request.items() if v is not None}
    with pytest.raises(InspectionRequestError) as caught:
        plan_inspection(parse_specification(request))
    assert caught.value.field == field, caught.value.message
    assert words in caught.value.message
    assert caught.value.status == 422


def test_a_request_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(InspectionRequestError) as caught:
        parse_specification(["base"])
    assert caught.value.field == "body" and "JSON object" in caught.value.message


def test_a_result_has_every_amun_field_and_what_amun_lacked() -> None:
    hwinfo = {
        "hostname": "node-1",
        "cpu": {"model": "Intel Xeon", "family": 6, "model_number": 85, "logical_cores": 8},
        "cgroup": {"version": 2, "cpu_limit": 2.0, "memory_limit_bytes": 2**32},
        "memory": {"total_bytes": 2**34, "limit_bytes": 2**32},
        "gpu": {"count": 0, "devices": [], "cuda": None},
        "os": {
            "system": "Linux",
            "kernel": "6.1",
            "distribution": "Debian GNU/Linux 12 (bookworm)",
        },
        "python": {"version": "3.11.7"},
    }
    usage = {name: 1 for name in RUSAGE_FIELDS}
    result = {
        "exit_code": 0,
        "script_sha256": "ab" * 32,
        "usage": usage,
        "start_datetime": "2026-12-06T10:00:00+00:00",
        "end_datetime": "2026-12-06T10:00:01+00:00",
        "hostname": "node-1",
    }
    out = amun_result(result, hwinfo=hwinfo, stdout='{"rate": 1.5}\n', stderr="", run=1)
    assert out["stdout"] == {"rate": 1.5}
    assert list(out["usage"]) == list(RUSAGE_FIELDS)
    assert out["runtime_environment"] == {
        "hardware": {"cpu_family": 6, "cpu_model": 85},
        "operating_system": {"name": "debian", "version": "12"},
        "python_version": "3.11",
        "cuda_version": None,
    }
    assert out["os_release"]["version_id"] == "12"
    assert out["hwinfo"]["cpu_info"]["brand_raw"] == "Intel Xeon"
    assert out["cgroup"]["cpu_limit"] == 2.0 and out["memory"]["limit_bytes"] == 2**32
    assert out["gpu"] == {"count": 0, "devices": [], "cuda": None}
    assert out["weighbridge"]["run"] == "run-1"
    assert parsed_stdout("not json\n") == "not json\n"
    assert os_release(None) is None


def test_an_inspection_may_ask_for_a_sagemaker_training_job() -> None:
    """engine = "aws.sagemaker" makes the runs' descriptor a SageMaker one (the evaluators
    run it as a training job where WEIGHBRIDGE_RUNNER=sagemaker), on the asked instance."""
    spec = parse_specification(
        {
            "base": "python:3.11",
            "script": "print(1)",
            "engine": "aws.sagemaker",
            "instance_type": "ml.c5.xlarge",
        }
    )
    plan = plan_inspection(spec)
    assert plan.descriptor["info"]["execution_engine"] == "aws.sagemaker"
    assert plan.descriptor["hardware"]["instance_type"] == "ml.c5.xlarge"
    local = plan_inspection(parse_specification({"base": "b", "script": "x"}))
    assert "execution_engine" not in local.descriptor["info"]
    with pytest.raises(InspectionRequestError) as refused:
        plan_inspection(
            parse_specification({"base": "b", "script": "x", "instance_type": "ml.c5.xlarge"})
        )
    assert refused.value.field == "instance_type"
