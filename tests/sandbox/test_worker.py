"""The sandboxed handler worker on its own: the TorchServe contract and what it refuses."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from evaluator.answers import InvalidAnswer, check_answers
from tests.sandbox.workers import POOL_HANDLER, answer, failure, make_sandbox


async def test_function_handler_is_initialised_like_torchserve(tmp_path: Path) -> None:
    source = """
    import sys
    calls = []

    def handle(data, context):
        calls.append(data)
        print("to stdout, not into the protocol")
        sys.stdout.flush()
        if data is None:
            return None
        size = context.system_properties["batch_size"]
        return [{"calls": len(calls), "first": calls[0], "batch": size}]
    """
    outputs = await answer(make_sandbox(tmp_path, source))
    assert outputs == [{"calls": 2, "first": None, "batch": 4}]
    assert "to stdout, not into the protocol" in (tmp_path / "log").read_text()


async def test_a_class_handler_gets_initialize_then_handle(tmp_path: Path) -> None:
    source = """
    class Handler:
        def initialize(self, context):
            self.scale = 10
            self.name = context.manifest["model"]["modelName"]

        def handle(self, data, context):
            return [{"y": item["body"]["x"] * self.scale, "name": self.name} for item in data]
    """
    outputs = await answer(make_sandbox(tmp_path, source), [{"body": {"x": 2}}, {"body": {"x": 3}}])
    assert outputs == [{"y": 20, "name": "m"}, {"y": 30, "name": "m"}]


async def test_a_symlink_to_the_evaluators_data_finds_nothing(tmp_path: Path) -> None:
    secret = tmp_path / "data" / "labels.jsonl"
    secret.parent.mkdir()
    secret.write_text('{"label": 1}\n')
    source = """
    import os

    def handle(data, context):
        if data is None:
            return None
        os.symlink(SECRET, "innocent.txt")
        return [{"text": open("innocent.txt").read()}]
    """
    error = await failure(make_sandbox(tmp_path, source, SECRET=str(secret)))
    # The path does not exist in the sandbox's root filesystem at all.
    assert error.kind == "handler" and "FileNotFoundError" in error.reason


async def test_the_evaluators_folders_are_not_there_and_there_is_no_network(
    tmp_path: Path,
) -> None:
    hidden = tmp_path / "storage" / "datasets"
    hidden.mkdir(parents=True)
    (hidden / "labels.jsonl").write_text("secret\n")
    source = """
    import os

    def handle(data, context):
        if data is None:
            return None
        lines = open("/proc/self/net/dev").read().splitlines()[2:]
        interfaces = sorted(line.split(":")[0].strip() for line in lines)
        return [{"exists": os.path.exists(HIDDEN), "root": sorted(os.listdir("/")),
                 "interfaces": interfaces, "uid": os.getuid()}]
    """
    outputs = await answer(make_sandbox(tmp_path, source, HIDDEN=str(hidden)))
    assert outputs[0]["exists"] is False
    assert outputs[0]["interfaces"] == ["lo"]  # a private network namespace
    assert outputs[0]["uid"] != 0
    assert "model" in outputs[0]["root"] and "scratch" in outputs[0]["root"]
    assert (hidden / "labels.jsonl").exists()  # outside, nothing changed


async def test_a_handler_may_use_multiprocessing(tmp_path: Path) -> None:
    # Pools and queues need POSIX semaphores in /dev/shm: each sandbox has its own.
    outputs = await answer(make_sandbox(tmp_path, POOL_HANDLER), [{"body": {"x": 3}}])
    assert outputs == [{"label": 9}]


async def test_slow_initialisation_hits_the_time_limit(tmp_path: Path) -> None:
    source = """
    import time

    def initialize(context):
        time.sleep(30)

    def handle(data, context):
        if data is None:
            initialize(context)
        return [{}]
    """
    error = await failure(make_sandbox(tmp_path, source, timeout=1.0))
    assert error.kind == "timeout"
    assert error.reason.startswith("initialisation: the handler did not finish initialising")


async def test_a_huge_allocation_hits_the_address_space_limit(tmp_path: Path) -> None:
    source = """
    def handle(data, context):
        if data is None:
            return None
        block = bytearray(4 << 30)
        return [{"n": len(block)}]
    """
    error = await failure(make_sandbox(tmp_path, source, memory_mb=200))
    assert error.kind == "memory" and error.detail["which"] == "rlimit_as"
    assert "RLIMIT_AS" in error.reason and "limit of 200 MB" in error.reason


async def test_a_handler_must_return_a_list(tmp_path: Path) -> None:
    source = """
    def handle(data, context):
        if data is None:
            return None
        return {"label": 1}
    """
    error = await failure(make_sandbox(tmp_path, source))
    assert error.kind == "not_list" and "returned dict" in error.reason


async def test_starting_a_program_is_refused(tmp_path: Path) -> None:
    source = """
    import subprocess

    def handle(data, context):
        if data is None:
            return None
        return [{"out": subprocess.run(["cat", "/etc/hostname"], capture_output=True).stdout}]
    """
    error = await failure(make_sandbox(tmp_path, source))
    assert error.kind == "violation" and "start a program" in error.reason
    assert "cat /etc/hostname" in error.reason


async def test_signalling_the_evaluator_is_refused(tmp_path: Path) -> None:
    source = """
    import os

    def handle(data, context):
        if data is None:
            return None
        os.kill(os.getpid(), 0)  # itself: allowed
        os.kill(os.getppid(), 0)  # signal 0 only probes, but the evaluator is off limits
        return [{}]
    """
    error = await failure(make_sandbox(tmp_path, source))
    assert error.kind == "violation" and "signal a process that is not its own" in error.reason
    # Its parent is the sandbox's own init: the evaluator is not even in its PID namespace.
    assert "os.kill(1)" in error.reason


async def test_the_worker_dies_with_a_signal(tmp_path: Path) -> None:
    source = """
    import os, signal

    def handle(data, context):
        if data is None:
            return None
        os.kill(os.getpid(), signal.SIGSEGV)
    """
    error = await failure(make_sandbox(tmp_path, source))
    assert error.kind == "died" and "killed by SIGSEGV" in error.reason


def test_answers_are_checked_against_the_output_schema() -> None:
    fields = {"label": "int", "score": "float"}
    ok = check_answers(
        ['{"label": 1, "score": 0.5}', {"label": 0, "score": 1, "extra": [1]}],
        ["a", "b"],
        fields,
        where="batch 1",
    )
    assert ok == [{"label": 1, "score": 0.5}, {"label": 0, "score": 1, "extra": [1]}]
    with pytest.raises(InvalidAnswer, match=r"'label' must be int, got bool"):
        check_answers([{"label": True, "score": 0.1}], ["a"], fields, where="batch 1")
    with pytest.raises(InvalidAnswer, match=r"answer 0 \(uid 'a'\) is list"):
        check_answers([[1]], ["a"], fields, where="batch 1")
    with pytest.raises(InvalidAnswer, match="returned 2 answers for 1 inputs"):
        check_answers([{}, {}], ["a"], fields, where="batch 1")


def test_the_worker_script_needs_only_the_standard_library() -> None:
    folder = Path(__file__).parents[2] / "sandbox" / "host"
    names = sorted(p.name for p in folder.glob("*.py"))
    assert "handler_host.py" in names and "confine.py" in names
    for name in names:
        imports = {
            line.split()[1].split(".")[0]
            for line in (folder / name).read_text().splitlines()
            if line.startswith(("import ", "from ")) and not line.startswith("from __future__")
        }
        assert imports <= sys.stdlib_module_names, name


def test_shared_floats_keep_values_types_and_signs() -> None:
    """Requests share equal floats (smaller, faster to decode) without changing a value."""
    import marshal
    import math

    from evaluator.runner import _share_floats

    shared: dict[float, float] = {}
    row = [0.0, -0.0, 1.5, 1.5, float("nan"), 3.0]
    out = _share_floats(row, shared)
    assert out[2] is out[3] and out[:4] == row[:4]
    assert math.copysign(1.0, out[0]) == 1.0 and math.copysign(1.0, out[1]) == -1.0
    assert math.isnan(out[4]) and out[5] == 3.0
    nested = _share_floats([[1.5, 2.5], [2.5]], shared)
    assert nested[0][0] is out[2] and nested[0][1] is nested[1][0]
    assert _share_floats([1, 2.0], shared) == [1, 2.0]  # mixed lists pass through as they are
    assert _share_floats("x", shared) == "x" and _share_floats([], shared) == []
    decoded = marshal.loads(marshal.dumps(out, 4))
    assert decoded[:4] == row[:4] and math.copysign(1.0, decoded[1]) == -1.0
