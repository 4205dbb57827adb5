"""Conformance: the local sandboxed runner answers exactly as a real TorchServe 0.12 does.

Five handlers are archived with torch-model-archiver and served by one TorchServe (its Java
frontend, its Python workers), and the same public digits examples go through both:
TorchServe's inference API (POST /predictions/<model>, a JSON body, one request per example)
and `sandbox.worker.Sandbox` on the extracted archive (batched, as the evaluator runs it). The
handlers cover TorchServe's loading rules: the two shipped examples (a module `handle` that
initialises on `handle(None, context)`), a subclass of TorchServe's BaseHandler, a
module-level function named by the manifest (`handler:classify`) that reports what it was
given (the item's keys, the body's type, the manifest's handler), so the shape of `data`
and `context` is compared too, and a module handler whose `initialize` nothing calls
(TorchServe never calls a module-level initialize).

Skipped where Java or TorchServe is absent (`make test` installs Java where apt is ours).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from builder.archives import archiver_command
from core.datasets import public_examples
from core.examples import example_folder
from core.taskconfig import TaskConfig, load_task_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = 24  # public digits examples sent to both
START_SECONDS = 90.0

BASE_HANDLER = """
import torch
from ts.torch_handler.base_handler import BaseHandler


class DigitsHandler(BaseHandler):
    # BaseHandler.initialize loads the manifest's serializedFile (TorchScript) itself.
    def preprocess(self, data):
        rows = [item["body"]["pixels"] for item in data]
        return torch.tensor(rows, dtype=torch.float32) / 16.0

    def postprocess(self, data):
        return [{"label": int(p)} for p in data.argmax(dim=1).tolist()]
"""

FUNCTION_HANDLER = """
import json
import os

_config = None


def initialize(context):
    global _config
    path = os.path.join(context.system_properties["model_dir"], "setup_config.json")
    with open(path) as fh:
        _config = json.load(fh)


def classify(data, context):
    if data is None:  # TorchServe's one call at load; it never calls initialize itself
        initialize(context)
        return None
    answers = []
    for item in data:
        body = item["body"]
        pixels = body["pixels"]
        answers.append(
            {
                "label": int(sum(pixels) * _config["scale"]) % 10,
                "darkest": max(range(len(pixels)), key=lambda i: (pixels[i], -i)),
                "keys": sorted(item),
                "body_type": type(body).__name__,
                "handler": context.manifest["model"]["handler"],
                "model_name": context.manifest["model"]["modelName"],
            }
        )
    return answers
"""


# A module handler that defines initialize and never calls it: TorchServe loads it with
# handle(None, context) only, so it answers `initialized: false` there, and must here too.
UNCALLED_INITIALIZE = """
_initialized = False


def initialize(context):
    global _initialized
    _initialized = True


def handle(data, context):
    if data is None:
        return None
    return [{"label": 0, "initialized": _initialized} for item in data]
"""


def torchserve_missing() -> str | None:
    """Why the test cannot run here, or None."""
    if shutil.which("java") is None:
        return "java is absent (TorchServe's frontend is Java; `make java` installs it)"
    if not (Path(sys.executable).parent / "torchserve").exists():
        return "torchserve is not installed in this virtualenv"
    try:
        import model_archiver  # noqa: F401
        import ts  # noqa: F401
    except ImportError as exc:
        return f"TorchServe's Python packages are absent: {exc}"
    return None


MISSING = torchserve_missing()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


# -- the models ----------------------------------------------------------------------------------


def base_handler_folder(folder: Path) -> Path:
    """digits-linear's weights as TorchScript, for BaseHandler to load."""
    import torch

    folder.mkdir(parents=True)
    (folder / "handler.py").write_text(BASE_HANDLER)
    model = torch.nn.Linear(64, 10)
    state = torch.load(example_folder("digits-linear") / "model.pt", weights_only=True)
    model.load_state_dict(state)
    torch.jit.script(model.eval()).save(str(folder / "model.pt"))
    return folder


def function_handler_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "handler.py").write_text(FUNCTION_HANDLER)
    (folder / "setup_config.json").write_text('{"scale": 0.37}')
    return folder


def module_folder(folder: Path, source: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "handler.py").write_text(source)
    return folder


def archive(folder: Path, name: str, handler: str, store: Path, env: dict[str, str]) -> Path:
    """torch-model-archiver, as a user would run it: the handler, weights, other files."""
    others = sorted(
        str(p) for p in folder.iterdir() if p.name not in ("handler.py", "model.pt", "__pycache__")
    )
    command = [
        *archiver_command(),
        "--model-name",
        name,
        "--version",
        "1.0",
        "--handler",
        str(folder / handler),
        "--export-path",
        str(store),
        "--force",
    ]
    if (folder / "model.pt").exists():
        command += ["--serialized-file", str(folder / "model.pt")]
    if others:
        command += ["--extra-files", ",".join(others)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"torch-model-archiver failed:\n{done.stdout}{done.stderr}"
    return store / f"{name}.mar"


# -- TorchServe ----------------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class TorchServe:
    """One TorchServe started with `torchserve --start`, its pid file and logs in `home`."""

    def __init__(self, home: Path, store: Path, models: list[str]) -> None:
        self.home = home
        self.inference, self.management, self.metrics = free_ports(3)
        config = home / "config.properties"
        config.write_text(
            f"inference_address=http://127.0.0.1:{self.inference}\n"
            f"management_address=http://127.0.0.1:{self.management}\n"
            f"metrics_address=http://127.0.0.1:{self.metrics}\n"
            "enable_model_api=true\n"
            "default_workers_per_model=1\n"
            "install_py_dep_per_model=false\n"
            "disable_system_metrics=true\n"
        )
        # Its own temp folder: the pid file `torchserve --stop` reads is ours alone.
        self.env = {**os.environ, "TMPDIR": str(home / "tmp"), "LOG_LOCATION": str(home / "logs")}
        self.env["METRICS_LOCATION"] = str(home / "logs")
        (home / "tmp").mkdir(exist_ok=True)
        self.bin = str(Path(sys.executable).parent / "torchserve")
        self.models = models
        self.store = store
        self.config = config

    def start(self) -> None:
        # Its output to a file: the Java process it leaves running keeps any pipe open.
        with (self.home / "torchserve.out").open("wb") as out:
            started = subprocess.run(
                [
                    self.bin,
                    "--start",
                    "--ncs",
                    "--ts-config",
                    str(self.config),
                    "--model-store",
                    str(self.store),
                    "--disable-token-auth",
                    "--models",
                    *[f"{m}={m}.mar" for m in self.models],
                ],
                cwd=self.home,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=60,
            )
        assert started.returncode == 0, (self.home / "torchserve.out").read_text()[-3000:]

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = set(self.models)
        while pending and time.monotonic() < deadline:
            for model in list(pending):
                try:
                    described = json.loads(self.get(f"/models/{model}"))
                except (OSError, ValueError):
                    continue
                workers = described[0].get("workers", []) if described else []
                if any(w.get("status") == "READY" for w in workers):
                    pending.discard(model)
            time.sleep(0.3)
        if pending:
            pytest.fail(f"TorchServe did not load {sorted(pending)} in {timeout:g} s{self.logs()}")

    def get(self, path: str) -> str:
        url = f"http://127.0.0.1:{self.management}{path}"
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()

    def predict(self, model: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.inference}/predictions/{model}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            pytest.fail(f"{model}: HTTP {exc.code} {exc.read()[:500]!r}{self.logs()}")

    def logs(self) -> str:
        log = self.home / "logs" / "model_log.log"
        text = log.read_text(errors="replace")[-3000:] if log.exists() else "(no model log)"
        return f"\n--- TorchServe's model log ---\n{text}"

    def stop(self) -> None:
        pid_file = self.home / "tmp" / ".model_server.pid"
        pid = int(pid_file.read_text().strip() or 0) if pid_file.exists() else 0
        if not pid:
            return
        subprocess.run(
            [self.bin, "--stop"],
            cwd=self.home,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.2)
        # Should --stop not have ended it, end our Java process (by its own pid).
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# -- the local runner ----------------------------------------------------------------------------


async def run_locally(
    mar: Path, work: Path, inputs: list[dict[str, Any]], batch_size: int
) -> list[Any]:
    """The .mar extracted, its manifest's handler in a sandboxed worker, in batches."""
    from sandbox.failures import SandboxLimits
    from sandbox.jail import SandboxUnavailable
    from sandbox.worker import Sandbox

    folder = work / "model"
    with zipfile.ZipFile(mar) as archive:
        archive.extractall(folder)
    manifest = json.loads((folder / "MAR-INF" / "MANIFEST.json").read_text())
    sandbox = Sandbox(
        model_dir=folder,
        handler=manifest["model"]["handler"],
        manifest=manifest,
        workdir=work / "work",
        log_path=work / "log",
        limits=SandboxLimits(timeout_seconds=60, memory_mb=2048),
        batch_size=batch_size,
        model_name=manifest["model"]["modelName"],
    )
    answers: list[Any] = []
    try:
        await sandbox.start()
        for start in range(0, len(inputs), batch_size):
            data = [{"body": body} for body in inputs[start : start + batch_size]]
            answers.extend((await sandbox.infer(data)).outputs)
    except SandboxUnavailable as exc:
        pytest.skip(f"the sandbox is unavailable here: {exc}")
    finally:
        await sandbox.close()
    return answers


# -- the test ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> TaskConfig:
    return load_task_config(ROOT / "task_configs" / "digits.toml")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[TorchServe, dict[str, Path]]]:
    store = tmp_path / "store"
    store.mkdir()
    home = tmp_path / "torchserve"
    home.mkdir()
    # The archiver stages in TMPDIR/<model name> (removed first): a folder of the test's own.
    (tmp_path / "archiver-tmp").mkdir()
    env = {**os.environ, "TMPDIR": str(tmp_path / "archiver-tmp")}
    folders = {
        "digits-cnn": (example_folder("digits-cnn"), "handler.py"),
        "digits-linear": (example_folder("digits-linear"), "handler.py"),
        "base-handler": (base_handler_folder(tmp_path / "base-handler"), "handler.py"),
        # `handler:classify`: torch-model-archiver (0.12) adds ".py" only to a name without it.
        "function": (function_handler_folder(tmp_path / "function"), "handler:classify"),
        "uncalled-initialize": (
            module_folder(tmp_path / "uncalled", UNCALLED_INITIALIZE),
            "handler.py",
        ),
    }
    mars = {
        name: archive(folder, name, handler, store, env)
        for name, (folder, handler) in folders.items()
    }
    server = TorchServe(home, store, list(mars))
    try:
        server.start()
        yield server, mars
    finally:
        server.stop()


def test_local_runner_answers_exactly_as_torchserve(
    served: tuple[TorchServe, dict[str, Path]], digits: TaskConfig, tmp_path: Path
) -> None:
    server, mars = served
    rows = public_examples(digits, limit=EXAMPLES)
    inputs = [{f: row[f] for f in digits.input_fields} for row in rows]

    async def everything_locally() -> dict[str, list[Any]]:
        runs = [
            run_locally(mar, tmp_path / "local" / name, inputs, digits.eval.batch_size)
            for name, mar in mars.items()
        ]
        return dict(zip(mars, await asyncio.gather(*runs), strict=True))

    # The local runs go while TorchServe loads its models.
    local = asyncio.run(everything_locally())
    server.wait_ready(START_SECONDS)
    for name in mars:
        remote = [server.predict(name, body) for body in inputs]
        assert local[name] == remote, f"{name}: the local runner and TorchServe disagree"

    # Both saw TorchServe's request shape and the manifest's handler.
    assert local["function"][0]["keys"] == ["body"]
    assert local["function"][0]["body_type"] == "dict"
    assert local["function"][0]["handler"] == "handler:classify"
    assert local["uncalled-initialize"][0]["initialized"] is False
    labels = [row[digits.label_field] for row in rows]
    for example in ("digits-cnn", "digits-linear", "base-handler"):
        right = sum(a["label"] == y for a, y in zip(local[example], labels, strict=True))
        assert right >= 0.8 * len(rows), f"{example}: only {right}/{len(rows)} right"
