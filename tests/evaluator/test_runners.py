"""The runner seam: WEIGHBRIDGE_RUNNER picks one from the registry, an unknown one is refused
in one sentence, and every registered runner passes the same contract."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from core.errors import WeighbridgeError
from core.settings import Settings
from core.storage import LocalStorage
from evaluator.runner import DatasetSpec, ModelSpec
from evaluator.runners import RUNNERS, LocalRunner, runner_from_settings
from tests.evaluator.factories import toy_rows
from tests.evaluator.models import write_folder
from tests.evaluator.test_runner import toy_task

PARITY = """
def handle(data, context):
    if data is None:
        return None
    return [{"label": item["body"]["x"] % 2} for item in data]
"""


def test_the_setting_picks_the_runner_and_an_unknown_one_is_refused(tmp_path: Path) -> None:
    assert isinstance(runner_from_settings(Settings(home=tmp_path, _env_file=None)), LocalRunner)
    with pytest.raises(WeighbridgeError) as refused:
        runner_from_settings(Settings(home=tmp_path, runner="lambda", _env_file=None))
    assert refused.value.field == "WEIGHBRIDGE_RUNNER"
    assert "'lambda' is not a runner of this build (it has: local, " in refused.value.message
    assert "sagemaker)" in refused.value.message


# The SageMaker runner needs S3 and a job whose output a test writes (moto writes none): it
# passes this contract against moto in tests/evaluator/test_sagemaker_runner.py.
# The remote runner needs a database and a remote worker: it passes this contract in
# tests/evaluator/test_remote_worker.py.
@pytest.mark.parametrize("name", sorted(set(RUNNERS) - {"sagemaker", "remote"}))
async def test_every_runner_answers_each_example_of_a_dataset_in_order(
    name: str, tmp_path: Path
) -> None:
    """The contract: the answers of every example, in the dataset's order, with the handler
    seeing only the input fields; predictions and the log stored under the results keys."""
    runner = RUNNERS[name](Settings(home=tmp_path, runner=name, _env_file=None))
    assert runner.name == name
    storage = LocalStorage(tmp_path / "storage")
    rows = toy_rows(30)
    data = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    sha = hashlib.sha256(data).hexdigest()
    await storage.write_bytes(f"datasets/{sha}/test.jsonl", data)
    folder = write_folder(tmp_path / "model", PARITY)
    run = await runner.run_dataset(
        storage,
        submission_id="s1",
        task=toy_task(batch_size=8, workers=2),
        dataset=DatasetSpec(name="test", key=f"datasets/{sha}/test.jsonl", sha256=sha),
        model=ModelSpec(model_dir=folder, handler="handler.py", manifest={}),
        scratch=tmp_path / "scratch",
    )
    assert run.uids == [r["uid"] for r in rows]
    assert [a["label"] for a in run.answers] == [r["x"] % 2 for r in rows]
    assert await storage.exists(run.keys["predictions"])


async def test_each_kind_goes_to_its_own_handler_and_an_unknown_one_fails(
    services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import evaluator.worker
    from core.queue import Delivery
    from evaluator.worker import KINDS, handle_evaluate
    from tests.evaluator.factories import get_submission, make_built_submission, make_user

    user = await make_user(services)
    sid, envelope = await make_built_submission(
        services, user, tmp_path / "unused.mar", [], mar_key="unused.mar"
    )
    envelope.payload["submission"]["kind"] = "recipe"
    delivery = Delivery(
        queue="eval-toy", envelope=envelope, receipt="0:none", attempts=1, max_attempts=3
    )
    await handle_evaluate(services, delivery)
    failed = await get_submission(services, sid)
    assert failed.status == "failed" and failed.failed_stage == "evaluate"
    evaluated = ", ".join(sorted(KINDS))
    assert (
        f"recipe submissions are not evaluated by this evaluator (it evaluates: {evaluated})"
        in (failed.error or "")
    )

    # The kind picks the handler before anything reads the payload as a model's message.
    ran: list[tuple[str, str]] = []

    async def recipe(services, delivery, **options) -> None:
        ran.append((delivery.envelope.action_id, delivery.envelope.payload["submission"]["kind"]))

    monkeypatch.setitem(evaluator.worker.KINDS, "recipe", recipe)
    other, envelope = await make_built_submission(
        services, user, tmp_path / "unused.mar", [], mar_key="unused.mar"
    )
    envelope.payload["submission"]["kind"] = "recipe"
    envelope.payload["task"] = "not a task at all"  # a model's message would be refused
    await handle_evaluate(
        services,
        Delivery(queue="eval-toy", envelope=envelope, receipt="0:none", attempts=1, max_attempts=3),
    )
    assert ran == [(other, "recipe")]
    assert (await get_submission(services, other)).status == "built"
