"""Running Weighbridge: `up` (everything in one process) and `serve ROLE` (one role).

The API (uvicorn) and the workers share one asyncio loop and one set of services. Each
worker's module is imported only by the processes that run it (an API process never loads
torch, the builder never loads the evaluator).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli import render
from cli.errors import CliError, reports_errors

if TYPE_CHECKING:
    from core.context import Services
    from core.settings import Settings

log = logging.getLogger("weighbridge")

# How long workers get to finish their current message after a stop signal.
SHUTDOWN_GRACE_SECONDS = 30.0


class Role(StrEnum):
    API = "api"
    BUILDER = "builder"
    EVALUATOR = "evaluator"
    SCHEDULER = "scheduler"


@dataclass(frozen=True)
class Worker:
    """A background loop `run(services, [fleets,] stop)` found by module and function name."""

    name: str
    module: str
    function: str
    takes_fleets: bool = False

    def load(self) -> Callable[..., Any]:
        """The loop's function (imported only by the processes that run it)."""
        return getattr(importlib.import_module(self.module), self.function)


WORKERS = {
    "builder": Worker("builder", "builder.worker", "run_builder"),
    "evaluator": Worker("evaluator", "evaluator.worker", "run_evaluator", takes_fleets=True),
    "mailer": Worker("mailer", "core.notifications", "run_mailer"),
    # Removes what failed uploads and crashes left in storage; rides with the API.
    "sweeper": Worker("sweeper", "core.incoming", "run_sweeper"),
    # Fails submissions stuck past their task's deadline (core.reaper); one per deployment.
    "reaper": Worker("reaper", "core.reaper", "run_reaper"),
    # Rebuilds the stored leaderboards marked stale (core.boards); one per deployment.
    "leaderboards": Worker("leaderboards", "core.boards", "run_leaderboards"),
    # Cron ticks of periodic benchmarks, their histories and regression alerts (scheduler/).
    "scheduler": Worker("scheduler", "scheduler", "run_scheduler"),
}
# What each `serve` role runs besides (or instead of) the API. `serve scheduler` runs the
# one-per-deployment background duties: the mailer, the leaderboard rebuilds, the reaper and
# the benchmark scheduler (several may run: each tick and each recording happens once).
ROLE_WORKERS = {
    Role.API: ["sweeper"],
    Role.BUILDER: ["builder"],
    Role.EVALUATOR: ["evaluator"],
    Role.SCHEDULER: ["mailer", "leaderboards", "reaper", "scheduler"],
}


@dataclass
class Plan:
    """What one process runs."""

    workers: list[str]
    api: tuple[str, int] | None = None
    fleets: list[str] | None = None
    demo: bool = False
    show_banner: bool = False
    log_level: str = "info"


def configure_logging(level: str) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=level.upper(),
        format="%(name)s: %(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(console=render.stderr(), show_path=False, rich_tracebacks=True)],
        force=True,
    )
    if logging.getLogger().level > logging.DEBUG:
        # Alembic narrates every plugin and migration step at INFO; keep that for --log-level debug.
        logging.getLogger("alembic").setLevel(logging.WARNING)


def browser_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


async def count_users(services: Services) -> int:
    from core import accounts

    async with services.db.session() as session:
        return await accounts.count_users(session)


async def _serve_api(server: Any, host: str, port: int) -> None:
    try:
        await server.serve()
    except SystemExit:
        # uvicorn exits the process when it cannot bind; here that ends only this task.
        raise CliError(f"the API could not start on {host}:{port} (see the log above)") from None


DEMO = Worker("demo", "cli.demo", "run_demo")


async def _run_demo(services: Services, server: Any, base_url: str) -> None:
    run_demo = DEMO.load()
    while not server.started:
        if server.should_exit:
            return
        await asyncio.sleep(0.05)
    try:
        if inspect.iscoroutinefunction(run_demo):
            await run_demo(services, base_url)
        else:
            # A blocking demo talks to our own API: it must not run on the loop serving it.
            await asyncio.to_thread(run_demo, services, base_url)
    except Exception:
        # The demo is a convenience: the stack it decorates keeps running without it.
        log.exception("the demo failed; Weighbridge keeps running without it")


async def _announce(services: Services, server: Any, url: str, *, demo: bool) -> None:
    while not server.started:
        if server.should_exit:
            return
        await asyncio.sleep(0.05)
    console = render.stdout()
    console.print(f"Weighbridge is up at [bold]{url}[/]  (API docs: {url}/docs)", soft_wrap=True)
    # The demo makes its own user and prints its token; "no users yet" would be wrong a
    # second later.
    if not demo and await count_users(services) == 0:
        console.print(
            "No users yet. Create one, then log in with the token it prints:\n"
            "  weighbridge admin create-user NAME --email EMAIL --admin\n"
            f"  weighbridge login --url {url} --token TOKEN",
            soft_wrap=True,
        )
    console.print("[dim]Press Ctrl+C to stop.[/]")


def _start_workers(
    services: Services, plan: Plan, stop: asyncio.Event
) -> dict[str, asyncio.Task[Any]]:
    from core.context import fleets_to_serve

    jobs: dict[str, asyncio.Task[Any]] = {}
    for name in plan.workers:
        worker = WORKERS[name]
        run = worker.load()
        if worker.takes_fleets:
            fleets = plan.fleets or fleets_to_serve(services.settings, services.tasks)
            log.info("evaluator serving fleets: %s", ", ".join(fleets))
            jobs[name] = asyncio.create_task(run(services, fleets, stop), name=name)
        else:
            jobs[name] = asyncio.create_task(run(services, stop), name=name)
    return jobs


async def _prepare_datasets(services: Services) -> None:
    """Make every task's datasets ready at start, so the first build does not wait on them."""
    from core.datasets import DatasetError, prepare_datasets

    try:
        prepared = await prepare_datasets(services)
    except DatasetError as exc:
        log.error("datasets: %s", exc)
        return
    written = [f"{p.task}/{p.name}" for p in prepared if p.written]
    if written:
        log.info("datasets prepared: %s", ", ".join(written))


def check_sandbox(settings: Settings, plan: Plan) -> None:
    """Roles that run user code refuse to start without the sandbox, in one sentence."""
    from sandbox.jail import UNSAFE, SandboxUnavailable, configure

    if not {"builder", "evaluator"} & set(plan.workers):
        return
    try:
        configure(settings.sandbox)
    except SandboxUnavailable as exc:
        raise CliError(f"the sandbox for user code is not available: {exc}") from None
    if settings.sandbox == UNSAFE:
        log.warning(
            "WEIGHBRIDGE_SANDBOX=%s: user code runs WITHOUT isolation; every receipt and "
            "leaderboard says so. Never use this with submissions you do not trust.",
            UNSAFE,
        )


def check_backends(settings: Settings, plan: Plan) -> None:
    """Refuse at start, in one sentence, a builder or runner this build does not have."""
    from core.errors import WeighbridgeError

    try:
        if "builder" in plan.workers:
            from builder.backends import check_builder

            check_builder(settings.builder, settings)
        if "evaluator" in plan.workers:
            from evaluator.runners import runner_from_settings

            runner_from_settings(settings)
    except WeighbridgeError as exc:
        raise CliError(exc.message) from None


async def run_plan(settings: Settings, plan: Plan) -> int:
    """Start the services and everything in the plan; stop cleanly on SIGINT/SIGTERM."""
    from core.context import start_services
    from core.doorbell import Doorbell, RingingOutbox, RingingQueue
    from core.heap import freeze_startup_heap
    from core.outbox import outbox_for, relay_forever

    check_sandbox(settings, plan)
    check_backends(settings, plan)

    services = await start_services(settings)
    # Roles sharing this process hear of each other's messages at once, not at the next poll.
    bell = Doorbell()
    services.queue = RingingQueue(services.queue, bell)
    services.outbox = RingingOutbox(
        outbox_for(settings.queue_url, database=services.db, queue=services.queue), bell
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server: Any = None
    jobs: dict[str, asyncio.Task[Any]] = {}
    helpers: list[asyncio.Task[Any]] = []
    try:
        jobs = _start_workers(services, plan, stop)
        # Messages staged here are relayed at once; rows a dead process left, at the next turn.
        helpers.append(
            asyncio.create_task(
                relay_forever(services.outbox, stop, every=services.settings.poll_seconds * 5),
                name="relay",
            )
        )
        freeze_startup_heap()  # the workers' modules are imported: pauses stay short
        if "builder" in jobs:
            helpers.append(asyncio.create_task(_prepare_datasets(services), name="datasets"))
        if plan.api is not None:
            import uvicorn

            from api.app import create_app

            host, port = plan.api
            config = uvicorn.Config(
                create_app(services),
                host=host,
                port=port,
                log_level=plan.log_level.lower(),
                # One line per request drowns the workers' story; keep it for debugging.
                access_log=plan.log_level.lower() == "debug",
            )
            server = uvicorn.Server(config)
            jobs["api"] = asyncio.create_task(_serve_api(server, host, port), name="api")
            url = browser_url(host, port)
            if plan.show_banner:
                helpers.append(
                    asyncio.create_task(_announce(services, server, url, demo=plan.demo))
                )
            if plan.demo:
                helpers.append(asyncio.create_task(_run_demo(services, server, url)))
        if not jobs:
            raise CliError("nothing to run in this build")
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait([waiter, *jobs.values()], return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        return await _shut_down(jobs, helpers, server, stop)
    finally:
        # Also reached when starting failed half way: nothing may outlive the services.
        stop.set()
        leftovers = [t for t in [*jobs.values(), *helpers] if not t.done()]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await services.close()


async def _shut_down(
    jobs: dict[str, asyncio.Task[Any]],
    helpers: list[asyncio.Task[Any]],
    server: Any,
    stop: asyncio.Event,
) -> int:
    """Stop everything; 0 for a requested stop, 1 when a role ended or crashed on its own."""
    ended_early = [name for name, job in jobs.items() if job.done() and not stop.is_set()]
    stop.set()
    if server is not None:
        server.should_exit = True
    pending = [job for job in jobs.values() if not job.done()]
    if pending:
        _, still = await asyncio.wait(pending, timeout=SHUTDOWN_GRACE_SECONDS)
        for job in still:
            log.warning(
                "%s did not stop in %gs; cancelling it", job.get_name(), SHUTDOWN_GRACE_SECONDS
            )
            job.cancel()
        if still:
            await asyncio.wait(still)
    for task in helpers:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.error("%s", task.exception())
    code = 0
    for name, job in jobs.items():
        if job.cancelled():
            continue
        exc = job.exception()
        if isinstance(exc, CliError):
            render.print_error(exc.message)
            code = 1
        elif exc is not None:
            log.error("%s crashed", name, exc_info=exc)
            code = 1
        elif name in ended_early:
            log.error("%s stopped on its own; shutting everything down", name)
            code = 1
    return code


def _run(plan: Plan) -> None:
    from core.settings import Settings

    configure_logging(plan.log_level)
    settings = Settings()
    if plan.api is not None and "public_url" not in settings.model_fields_set:
        # Links in emails should point at the address this process actually serves.
        settings.public_url = browser_url(*plan.api)
    code = asyncio.run(run_plan(settings, plan))
    if code:
        raise typer.Exit(code)


HostOption = Annotated[str, typer.Option("--host", help="Address to listen on.")]
PortOption = Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to listen on.")]


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


LogLevelOption = Annotated[
    LogLevel, typer.Option("--log-level", help="How much to log.", case_sensitive=False)
]


@reports_errors
def up(
    port: PortOption = 8000,
    host: HostOption = "127.0.0.1",
    demo: Annotated[
        bool, typer.Option("--demo", help="Also load the demo tasks and models.")
    ] = False,
    log_level: LogLevelOption = LogLevel.INFO,
) -> None:
    """Run everything in one process: API and website, builder, evaluator(s), scheduler."""
    plan = Plan(
        workers=[
            "builder",
            "evaluator",
            "mailer",
            "sweeper",
            "leaderboards",
            "reaper",
            "scheduler",
        ],
        api=(host, port),
        demo=demo,
        show_banner=True,
        log_level=log_level.value,
    )
    _run(plan)


@reports_errors
def serve(
    role: Annotated[Role, typer.Argument(help="The one role this process plays.")],
    fleet: Annotated[
        list[str] | None,
        typer.Option(
            "--fleet",
            help="An eval_server_id to serve (repeatable; default WEIGHBRIDGE_FLEETS, "
            "else 'default' and every task's).",
        ),
    ] = None,
    port: PortOption = 8000,
    host: HostOption = "127.0.0.1",
    log_level: LogLevelOption = LogLevel.INFO,
    api: Annotated[
        str | None,
        typer.Option(
            "--api",
            help="Evaluator only: run as a remote worker pulling the fleet's jobs from the API "
            "at this URL (no database or storage credentials; needs --token and one --fleet).",
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="WEIGHBRIDGE_WORKER_TOKEN",
            help="The remote worker's token (wbw_…, from `weighbridge admin worker-token "
            "create`); with --api.",
        ),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(
            "--labels",
            help="Remote worker only: the folder holding <task>/<dataset>.jsonl labels of the "
            'datasets whose labels the workers hold (labels = "worker"); it scores there and '
            "sends back only scores.",
            exists=True,
            file_okay=False,
        ),
    ] = None,
) -> None:
    """Run one role, for distributed deployments."""
    if fleet and role is not Role.EVALUATOR:
        raise typer.BadParameter("--fleet is for `serve evaluator`", param_hint="--fleet")
    if labels is not None and api is None:
        raise typer.BadParameter(
            "--labels is for a remote worker (with --api and --token)", param_hint="--labels"
        )
    if api is not None or token is not None:
        _serve_remote_worker(role, api, token, fleet, log_level, labels)
        return
    plan = Plan(
        workers=list(ROLE_WORKERS[role]),
        api=(host, port) if role is Role.API else None,
        fleets=list(fleet) if fleet else None,
        show_banner=role is Role.API,
        log_level=log_level.value,
    )
    _run(plan)


def _serve_remote_worker(
    role: Role,
    api: str | None,
    token: str | None,
    fleet: list[str] | None,
    log_level: LogLevel,
    labels: Path | None = None,
) -> None:
    """`serve evaluator --api URL --token T --fleet F`: a remote worker
    (evaluator.remote_worker)."""
    if role is not Role.EVALUATOR:
        raise typer.BadParameter("--api and --token are for `serve evaluator`", param_hint="--api")
    if not api:
        raise typer.BadParameter(
            "--token needs --api URL (the API to pull jobs from)", param_hint="--api"
        )
    if not token:
        raise typer.BadParameter(
            "--api needs --token (a worker token from `weighbridge admin worker-token create`)",
            param_hint="--token",
        )
    if not token.startswith("wbw_"):
        raise typer.BadParameter(
            "--token must be a worker token (wbw_…), not a user's API token", param_hint="--token"
        )
    if not fleet or len(fleet) != 1:
        raise typer.BadParameter(
            "a remote worker serves exactly one --fleet (its token's)", param_hint="--fleet"
        )
    if not api.startswith(("http://", "https://")):
        raise typer.BadParameter(f"--api {api!r} is not an http(s) URL", param_hint="--api")
    from core.settings import Settings

    configure_logging(log_level.value)
    settings = Settings()
    check_sandbox(settings, Plan(workers=["evaluator"]))
    # Models' environments (requirements.txt) are built and kept under the worker's own home.
    code = asyncio.run(_remote_worker(api, token, fleet[0], labels, settings.home / "envs"))
    if code:
        raise typer.Exit(code)


async def _remote_worker(
    api: str, token: str, fleet: str, labels: Path | None, envs: Path | None = None
) -> int:
    from evaluator.remote_worker import WorkerRefused, run_remote_worker

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await run_remote_worker(api, token, fleet, stop, labels=labels, envs=envs)
    except WorkerRefused as exc:
        render.print_error(f"the API refused this worker: {exc}")
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0
