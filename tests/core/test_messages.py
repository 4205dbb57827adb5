"""core/messages.py: each schema round-trips; unknown types, versions and fields are refused
naming the field; payloads written before schema_version still read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from core.envelope import Envelope
from core.environments import MARKER, local_env_python
from core.messages import (
    MESSAGES,
    BuildMessage,
    EvaluateMessage,
    Message,
    MessageRefused,
    payload_of,
    read_message,
)
from core.models import Submission, Task, User
from core.storage import LocalStorage
from core.submissions import build_message

SHA = "a" * 64


def build_payload() -> dict[str, Any]:
    return {
        "submission": {
            "id": "f" * 32,
            "kind": "model",
            "name": "parity",
            "upload_key": f"submissions/{'f' * 32}/upload/m.tar.gz",
            "upload_filename": "m.tar.gz",
            "upload_sha256": SHA,
            "upload_bytes": 123,
            "meta": {"note": "x"},
        },
        "task": {"slug": "toy", "config": {"slug": "toy"}},
        "owner": {"id": 7, "name": "ada", "email": "ada@example.org"},
    }


def evaluate_payload() -> dict[str, Any]:
    return {
        **build_payload(),
        "build": {
            "mar_key": f"submissions/{'f' * 32}/build/model.mar",
            "env_key": f"envs/{SHA}",
            "requirements_sha256": SHA,
            "handler": "handler.py",
            "handler_entry": "handler.py:handle",
            "bundle_sha256": SHA,
            "model_name": "parity",
            "dockerfile_key": "submissions/x/build/Dockerfile",
            "specification_key": "submissions/x/build/specification.json",
            "log_key": "submissions/x/build/log",
        },
        "datasets": [
            {
                "name": "test",
                "key": f"datasets/{SHA}/test.jsonl",
                "sha256": SHA,
                "access": "hidden",
                "split": "test",
                "weight": 1.0,
                "perturbation_of": None,
                "n_examples": 40,
            }
        ],
    }


def envelope(kind: type[Message], payload: dict[str, Any], **overrides: Any) -> Envelope:
    return Envelope(action_id="f" * 32, type=overrides.pop("type", kind.TYPE), payload=payload)


def benchmark_payload() -> dict[str, Any]:
    submission = {**build_payload()["submission"], "kind": "benchmark"}
    return {
        "submission": submission,
        "owner": build_payload()["owner"],
        "benchmark": {
            "descriptor_key": f"submissions/{'f' * 32}/build/descriptor.toml",
            "descriptor_sha256": SHA,
            "scripts_key": f"submissions/{'f' * 32}/build/scripts.tar",
            "scripts_sha256": SHA,
            "env_key": f"envs/{SHA}",
            "requirements_sha256": SHA,
            "log_key": f"submissions/{'f' * 32}/build/log",
            "warnings": ["env.docker_image: no Docker engine here"],
        },
        "data": [
            {
                "key": f"datasets/{SHA}/train.csv",
                "sha256": SHA,
                "size": 10,
                "path": "train.csv",
                "src": "https://example.org/train.csv",
            }
        ],
        "values": {"batch_size": 32},
    }


SAMPLES = {"build": build_payload, "evaluate": evaluate_payload, "benchmark": benchmark_payload}


@pytest.mark.parametrize("type_", sorted(MESSAGES))
def test_each_schema_round_trips_through_json(type_: str) -> None:
    kind = MESSAGES[type_]
    message = kind.model_validate({**SAMPLES[type_](), "schema_version": kind.VERSION})
    wire = Envelope.model_validate_json(envelope(kind, payload_of(message)).model_dump_json())
    assert read_message(wire, kind) == message
    assert payload_of(read_message(wire, kind)) == payload_of(message)
    assert wire.payload["schema_version"] == kind.VERSION


def test_the_api_sends_a_build_message_the_builder_reads() -> None:
    submission = Submission(
        id="f" * 32,
        kind="model",
        user_id=7,
        name="parity",
        status="uploaded",
        upload_key="submissions/x/upload/m.tar.gz",
        upload_filename="m.tar.gz",
        upload_bytes=3,
        upload_sha256=SHA,
        meta={},
    )
    task = Task(slug="toy", name="Toy", config={"slug": "toy"})
    owner = User(id=7, name="ada", email="ada@example.org")
    sent = build_message(submission, task, owner)
    assert sent.type == "build" and sent.payload["schema_version"] == BuildMessage.VERSION
    read = read_message(sent, BuildMessage)
    assert read.submission.upload_key == "submissions/x/upload/m.tar.gz"
    assert read.owner is not None and read.owner.email == "ada@example.org"


@pytest.mark.parametrize(
    ("kind", "payload", "field"),
    [
        (BuildMessage, {**build_payload(), "schema_version": 1, "surprise": 1}, "surprise"),
        (
            EvaluateMessage,
            {**evaluate_payload(), "schema_version": 2, "build": {"mar_key": "k", "extra": 1}},
            "build.extra",
        ),
        (BuildMessage, {**build_payload(), "schema_version": 99}, "schema_version"),
        (EvaluateMessage, {**evaluate_payload(), "schema_version": 1}, "schema_version"),
        (
            EvaluateMessage,
            {**evaluate_payload(), "schema_version": 2, "datasets": [{"name": "t"}]},
            "datasets.0.key",
        ),
    ],
)
def test_unknown_versions_and_fields_are_refused_naming_the_field(
    kind: type[Message], payload: dict[str, Any], field: str
) -> None:
    with pytest.raises(MessageRefused) as refused:
        read_message(envelope(kind, payload), kind)
    assert refused.value.field == field
    assert field in refused.value.reason


def test_a_message_of_another_or_unknown_type_is_refused() -> None:
    with pytest.raises(MessageRefused) as refused:
        read_message(envelope(BuildMessage, build_payload(), type="evaluate"), BuildMessage)
    assert refused.value.field == "type" and "'evaluate'" in refused.value.reason
    with pytest.raises(MessageRefused) as refused:
        read_message(envelope(BuildMessage, build_payload(), type="bogus"), BuildMessage)
    assert refused.value.field == "type" and "unknown type" in refused.value.reason


def test_an_evaluate_message_queued_before_versions_still_reads() -> None:
    # What the builder queued before core/messages.py: no schema_version, build.python a path.
    old = evaluate_payload()
    old["build"] = {**old["build"], "python": f"/srv/weighbridge/envs/{SHA}/bin/python"}
    read = read_message(envelope(EvaluateMessage, old), EvaluateMessage)
    assert read.schema_version == EvaluateMessage.VERSION
    assert read.build.env_key == f"envs/{SHA}"  # the evaluator resolves the env by its key
    assert "python" not in payload_of(read)["build"]
    old_build = read_message(envelope(BuildMessage, build_payload()), BuildMessage)
    assert old_build.schema_version == BuildMessage.VERSION


def test_an_env_key_resolves_on_this_host_only_when_ready(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "storage")
    env = tmp_path / "storage" / "envs" / SHA
    assert local_env_python(f"envs/{SHA}", storage=storage, home=tmp_path) is None
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").write_text("")
    assert local_env_python(f"envs/{SHA}", storage=storage, home=tmp_path) is None  # no marker
    (env / MARKER).write_text("{}")
    assert local_env_python(f"envs/{SHA}", storage=storage, home=tmp_path) == env / "bin" / "python"
    with pytest.raises(ValueError, match="not an environment key"):
        local_env_python("envs/../../etc", storage=storage, home=tmp_path)
