"""The fleet-dependent parts of a deployment, rendered from the task configs so they stay in step.

A deployment runs one evaluator fleet for `default`, for every task's `eval_server_id` and for
the fleets named in `infra/fleets.toml` (fleets kept ready for tasks to come). Each fleet has
its logical queue `eval-<fleet>` and the builder has `build`; each logical queue is an SQS
queue `<prefix><queue>` with its dead-letter queue `<prefix><queue>-dlq` and a redrive policy
after `max_attempts + 1` receives (the services dead-letter a message themselves after
`max_attempts`; SQS's redrive is the backstop), exactly as `core.sqsqueue` creates them on
demand. `render_deployment` writes, from that plan:

- `docker-compose.yml` (one evaluator service per fleet),
- `infra/elasticmq.conf` (the queues of the compose stack's SQS server),
- `infra/terraform/queues.tf` (the queues on AWS and the list the IAM policy grants).
"""

from __future__ import annotations

import functools
import math
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import WeighbridgeError
from core.queue import BUILD_QUEUE, dead_letter_queue, eval_queue
from core.settings import Settings
from core.taskconfig import TaskConfig

TEMPLATES = Path(__file__).resolve().parent / "templates" / "deploy"
# What `render_deployment` writes, relative to the folder it renders into, by template.
RENDERED = {
    "docker-compose.yml": "docker-compose.yml.j2",
    "infra/elasticmq.conf": "elasticmq.conf.j2",
    "infra/terraform/queues.tf": "queues.tf.j2",
}
# The fleets kept besides the task configs' (read, never written, by the render).
EXTRA_FLEETS = "infra/fleets.toml"
# The queue prefix of the compose stack (WEIGHBRIDGE_QUEUE_URL=sqs://?prefix=...); Terraform
# takes its own from the variable `queue_prefix`.
COMPOSE_QUEUE_PREFIX = "weighbridge-"
# SQS keeps a message at most 14 days; long polling waits at most 20 s (core.sqsqueue agrees).
RETENTION_SECONDS = 14 * 24 * 3600
WAIT_SECONDS = 20


@dataclass(frozen=True)
class QueuePair:
    """A logical queue and its dead-letter queue (names without the deployment's prefix)."""

    name: str
    dead_letter: str
    fleet: str | None = None


@dataclass(frozen=True)
class DeploymentPlan:
    """What the rendered files are made from: the fleets and how their queues behave."""

    fleets: tuple[str, ...]
    max_receive_count: int
    visibility_timeout_seconds: int
    queue_prefix: str = COMPOSE_QUEUE_PREFIX
    retention_seconds: int = RETENTION_SECONDS
    wait_seconds: int = WAIT_SECONDS

    @property
    def queues(self) -> list[QueuePair]:
        """`build`, then `eval-<fleet>` for every fleet, each with its dead-letter queue."""
        pairs = [QueuePair(BUILD_QUEUE, dead_letter_queue(BUILD_QUEUE))]
        for fleet in self.fleets:
            name = eval_queue(fleet)
            pairs.append(QueuePair(name, dead_letter_queue(name), fleet))
        return pairs


def read_extra_fleets(path: Path) -> list[str]:
    """The fleets `infra/fleets.toml` keeps (`extra = [...]`); none when the file is absent."""
    if not path.is_file():
        return []
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise WeighbridgeError(f"{path} is not valid TOML: {exc}", field=str(path)) from None
    unknown = sorted(set(data) - {"extra"})
    if unknown:
        raise WeighbridgeError(
            f"{path}: unknown key {unknown[0]!r}; the file holds only `extra = [fleet ids]`",
            field=f"{path}: {unknown[0]}",
        )
    extra = data.get("extra", [])
    if not isinstance(extra, list) or not all(isinstance(f, str) for f in extra):
        raise WeighbridgeError(
            f'{path}: `extra` must be a list of fleet ids, e.g. extra = ["gpu"]',
            field=f"{path}: extra",
        )
    return [check_fleet_id(f, field=f"{path}: extra") for f in extra]


def check_fleet_id(fleet: str, *, field: str) -> str:
    """A fleet id as task configs allow it (`eval_server_id`), or a clear error naming `field`."""
    from core.taskconfig import EvalConfig

    try:
        EvalConfig(eval_server_id=fleet)
    except ValueError:
        raise WeighbridgeError(
            f"{field}: {fleet!r} is not a valid fleet id: use 1-59 lowercase letters, digits, "
            "'-' or '_', starting with a letter or digit (as a task's eval_server_id)",
            field=field,
        ) from None
    return fleet


def plan_deployment(
    settings: Settings, tasks: dict[str, TaskConfig], *, extra_fleets: Iterable[str] = ()
) -> DeploymentPlan:
    """The plan for `tasks`: `default`, every task's fleet and `extra_fleets`, sorted.

    WEIGHBRIDGE_FLEETS is deliberately not read: it says what one evaluator process serves,
    while a deployment needs every fleet a task may send work to."""
    from core.context import fleets_to_serve

    of_tasks = fleets_to_serve(settings.model_copy(update={"fleets": ""}), tasks)
    fleets = tuple(sorted({*of_tasks, *extra_fleets}))
    return DeploymentPlan(
        fleets=fleets,
        max_receive_count=settings.max_attempts + 1,
        visibility_timeout_seconds=max(1, math.ceil(settings.lease_seconds)),
    )


@functools.cache
def _templates() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=False,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["eval_queue"] = eval_queue
    return env


def render_deployment(plan: DeploymentPlan) -> dict[str, str]:
    """The rendered files by path (relative to the deployment's root folder)."""
    env = _templates()
    return {
        path: env.get_template(template).render(plan=plan, queues=plan.queues)
        for path, template in RENDERED.items()
    }


def stale_files(root: Path, rendered: dict[str, str]) -> list[str]:
    """The rendered paths whose file under `root` is missing or differs from the rendering."""
    stale = []
    for path, text in rendered.items():
        target = root / path
        if not target.is_file() or target.read_text() != text:
            stale.append(path)
    return stale


def write_files(root: Path, rendered: dict[str, str]) -> list[str]:
    """Write the rendered files under `root`; the paths that changed."""
    changed = stale_files(root, rendered)
    for path in changed:
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(rendered[path])
    return changed
