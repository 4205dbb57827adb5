"""The model kit: scaffold a model folder for a task, and test its handler locally.

`init_model_folder` writes a handler skeleton and a README for the task's inputs and outputs.
`test_model_folder` runs the folder's handler in the same sandbox the evaluator uses
(`sandbox.worker`: bubblewrap, its own uid, no network, seccomp, limits) on the task's
public examples and checks every answer the way the evaluator will: one answer per input,
each holding the declared output fields and types.
"""

from __future__ import annotations

import asyncio
import functools
import json
import keyword
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.datasets import public_examples
from core.errors import WeighbridgeError
from core.taskconfig import TaskConfig

if TYPE_CHECKING:
    import jinja2

TEMPLATES = Path(__file__).parent / "templates" / "modelkit"
HANDLER = "handler.py"
PLACEHOLDERS = {
    "int": "0",
    "float": "0.0",
    "str": '""',
    "bool": "False",
    "list": "[]",
    "dict": "{}",
    "any": "None",
}


def _identifier(name: str) -> str:
    ident = re.sub(r"\W", "_", name)
    if not ident or ident[0].isdigit() or keyword.iskeyword(ident):
        ident = f"field_{ident}"
    return ident


def _shorten(value: Any, limit: int = 60) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@functools.cache
def _templates() -> jinja2.Environment:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=False,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters["ident"] = _identifier
    env.filters["shorten"] = _shorten
    return env


def init_model_folder(folder: Path, config: TaskConfig, *, force: bool = False) -> list[Path]:
    """Create `folder` with `handler.py` and `README.md` for the task; returns the files written.

    Refuses to overwrite an existing handler.py or README.md unless `force`.
    """
    folder = Path(folder)
    targets = {HANDLER: "handler.py.j2", "README.md": "README.md.j2"}
    existing = [name for name in targets if (folder / name).exists()]
    if existing and not force:
        raise WeighbridgeError(
            f"{folder} already has {', '.join(existing)}; choose another folder or use --force",
            field="dir",
        )
    try:
        example = public_examples(config, limit=1)[0]
    except Exception:  # a task without local public examples still gets a skeleton
        example = None
    context = {
        "task": config,
        "folder": str(folder),
        "folder_name": folder.name or "model",
        "example": example,
        "placeholders": PLACEHOLDERS,
    }
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, template in targets.items():
        path = folder / name
        path.write_text(_templates().get_template(template).render(context), encoding="utf-8")
        written.append(path)
    return written


def copy_example(folder: Path, name: str, config: TaskConfig, *, force: bool = False) -> list[Path]:
    """Copy the shipped example model `name` for the task into `folder`; returns the files.

    Refuses an example made for another task, and a folder that already holds any of the
    example's files unless `force`.
    """
    import shutil

    from core.examples import EXAMPLES, example_folder, examples_for

    known = examples_for(config.slug)
    if EXAMPLES.get(name) != config.slug:
        choices = ", ".join(known) if known else "none"
        raise WeighbridgeError(
            f"there is no example {name!r} for the task {config.slug!r} (its examples: {choices})",
            field="example",
        )
    source = example_folder(name)
    files = sorted(p for p in source.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    folder = Path(folder)
    existing = [
        str(p.relative_to(source)) for p in files if (folder / p.relative_to(source)).exists()
    ]
    if existing and not force:
        raise WeighbridgeError(
            f"{folder} already has {', '.join(existing)}; choose another folder or use --force",
            field="dir",
        )
    written = []
    for path in files:
        target = folder / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        written.append(target)
    return written


# ---------------------------------------------------------------------------------------------
# Checking answers


def _type_ok(value: Any, kind: str) -> bool:
    if kind == "any":
        return True
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "list":
        return isinstance(value, list)
    if kind == "dict":
        return isinstance(value, dict)
    return False


def check_answer(answer: Any, output_fields: dict[str, str]) -> list[str]:
    """What is wrong with one answer (empty when it holds every declared field and type)."""
    if not isinstance(answer, dict):
        wanted = ", ".join(output_fields)
        return [
            f"the answer is {type(answer).__name__} {_shorten(answer)}, not an object "
            f"with the field(s) {wanted}"
        ]
    problems = []
    for name, kind in output_fields.items():
        if name not in answer:
            problems.append(f"missing field {name!r} ({kind})")
        elif not _type_ok(answer[name], kind):
            problems.append(
                f"field {name!r} is {type(answer[name]).__name__} {_shorten(answer[name])}, "
                f"expected {kind}"
            )
    return problems


@dataclass
class ExampleCheck:
    """One public example: what the handler answered and what is wrong with it."""

    uid: str
    ok: bool
    answer: Any = None
    problems: list[str] = field(default_factory=list)
    label: Any = None
    correct: bool | None = None


@dataclass
class ModelTestReport:
    """The outcome of a local test; `error` is set when the handler could not run at all."""

    task: str
    folder: str
    ok: bool
    examples: list[ExampleCheck]
    error: str | None = None
    error_kind: str | None = None
    log_tail: str = ""
    seconds: float = 0.0
    # The task's primary metric on these examples, `{"metric", "value"}`, when every answer
    # is well-formed and the examples have labels (BLEU says more than exact matches).
    primary: dict[str, Any] | None = None

    @property
    def passed(self) -> int:
        return sum(1 for e in self.examples if e.ok)

    @property
    def accuracy(self) -> float | None:
        """Share of answers equal to the public label (for single-output tasks), else None."""
        judged = [e.correct for e in self.examples if e.correct is not None]
        return sum(judged) / len(judged) if judged else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        data["failed"] = len(self.examples) - self.passed
        data["accuracy"] = self.accuracy
        return data


def _label_check(answer: Any, row: dict[str, Any], config: TaskConfig) -> bool | None:
    if len(config.output_fields) != 1 or not isinstance(answer, dict):
        return None
    (name,) = config.output_fields
    if name != config.label_field or config.label_field not in row:
        return None
    return answer.get(name) == row[config.label_field]


# ---------------------------------------------------------------------------------------------
# Running the handler


async def test_model_folder(
    folder: Path,
    config: TaskConfig,
    *,
    limit: int | None = None,
    timeout_seconds: float | None = None,
    python: str | None = None,
    handler: str = HANDLER,
) -> ModelTestReport:
    """Run `folder/handler.py` on the task's public examples in a sandboxed worker; check it.

    `handler` names another handler file in the folder (a .mar's manifest may).

    The handler sees only the input fields. Batches have the task's eval batch size; the time
    and memory limits are the task's too (`timeout_seconds` overrides the time limit).
    """
    from sandbox.failures import SandboxError, SandboxLimits
    from sandbox.jail import SandboxUnavailable
    from sandbox.rootfs import MODEL
    from sandbox.worker import Sandbox

    started = time.perf_counter()
    folder, rows, has_handler = await asyncio.to_thread(_inputs, folder, config, limit, handler)
    report = ModelTestReport(task=config.slug, folder=str(folder), ok=False, examples=[])
    if not has_handler:
        report.error = (
            f"{folder} has no {handler}; create one with `weighbridge init {folder} "
            f"--task {config.slug}`"
        )
        report.error_kind = "missing"
        return report
    batch_size = config.eval.batch_size
    with tempfile.TemporaryDirectory(prefix="weighbridge-test-") as tmp:
        log_path = Path(tmp) / "log"
        sandbox = Sandbox(
            model_dir=folder,
            handler=handler,
            manifest={
                "runtime": "python",
                "model": {
                    "modelName": folder.name,
                    "handler": handler,
                    "modelVersion": "1.0",
                },
            },
            workdir=Path(tmp) / "work",
            log_path=log_path,
            limits=SandboxLimits(
                timeout_seconds=timeout_seconds or config.eval.timeout_seconds,
                memory_mb=config.eval.memory_mb,
            ),
            python=python,
            batch_size=batch_size,
            model_name=folder.name,
        )
        try:
            await sandbox.start()
            for start in range(0, len(rows), batch_size):
                batch = rows[start : start + batch_size]
                data = [{"body": {f: row[f] for f in config.input_fields}} for row in batch]
                answer = await sandbox.infer(data, where=f"batch {start // batch_size + 1}")
                report.examples.extend(_check_batch(batch, answer.outputs, config))
        except SandboxError as exc:
            report.error = exc.reason
            report.error_kind = exc.kind
        except SandboxUnavailable as exc:
            report.error = f"cannot test the handler in the sandbox: {exc}"
            report.error_kind = "sandbox"
        finally:
            await sandbox.close()
            # The sandbox shows the folder at /model; the user knows it by its own path.
            report.log_tail = _tail(log_path).replace(f"{MODEL}/", f"{folder}/")
    report.ok = report.error is None and all(e.ok for e in report.examples)
    if report.ok:
        report.primary = await asyncio.to_thread(_primary_score, report.examples, config)
    report.seconds = time.perf_counter() - started
    return report


def _primary_score(examples: list[ExampleCheck], config: TaskConfig) -> dict[str, Any] | None:
    """The task's primary metric over the public examples, or None where it cannot be had
    (no labels, no examples, or a metric that needs more than one example's answers)."""
    import metrics

    metric = config.primary_metric
    if not examples or any(e.label is None for e in examples):
        return None
    predictions = [config.prediction_of(e.answer) for e in examples]
    try:
        value = metrics.compute(
            metric.name, predictions, [e.label for e in examples], **metric.options
        )
    except (ValueError, TypeError):  # MetricError is a ValueError
        return None
    if not isinstance(value, int | float):
        return None
    return {"metric": metric.name, "value": float(value)}


test_model_folder.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def test_model_folder_sync(folder: Path, config: TaskConfig, **options: Any) -> ModelTestReport:
    """`test_model_folder` for synchronous callers (the CLI)."""
    return asyncio.run(test_model_folder(folder, config, **options))


test_model_folder_sync.__test__ = False  # type: ignore[attr-defined]


def _inputs(
    folder: Path, config: TaskConfig, limit: int | None, handler: str = HANDLER
) -> tuple[Path, list[dict[str, Any]], bool]:
    """The absolute folder, the public examples and whether there is a handler (blocking)."""
    folder = Path(folder).absolute()
    return folder, public_examples(config, limit=limit), (folder / handler).is_file()


def _check_batch(
    batch: list[dict[str, Any]], outputs: list[Any], config: TaskConfig
) -> list[ExampleCheck]:
    checks = []
    count_problem = (
        f"the handler returned {len(outputs)} answers for a batch of {len(batch)} inputs "
        "(it must return exactly one per input, in order)"
        if len(outputs) != len(batch)
        else None
    )
    for i, row in enumerate(batch):
        answer = outputs[i] if i < len(outputs) else None
        problems = [count_problem] if count_problem else []
        if i < len(outputs):
            problems += check_answer(answer, config.output_fields)
        checks.append(
            ExampleCheck(
                uid=str(row.get("uid", i)),
                ok=not problems,
                answer=answer,
                problems=problems,
                label=row.get(config.label_field),
                correct=_label_check(answer, row, config) if not problems else None,
            )
        )
    return checks


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
