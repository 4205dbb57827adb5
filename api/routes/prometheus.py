"""Prometheus exposition at /metrics: submissions by state, queue depths, dead letters, requests,
each benchmark metric's latest value and open regression alert, and the CPU and memory of
every benchmark or inspection run in progress."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)

from api.deps import services_of
from core.histories import alert_gauges
from core.submissions import count_submissions, live_runs

router = APIRouter(tags=["health"])


class ApiMetrics:
    """One registry per app, so tests and several apps in a process never collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "weighbridge_http_requests",
            "HTTP requests answered, by route template and status class",
            ["route", "status"],
            registry=self.registry,
        )
        self.submissions = Gauge(
            "weighbridge_submissions",
            "Submissions by kind and status",
            ["kind", "status"],
            registry=self.registry,
        )
        self.queue_messages = Gauge(
            "weighbridge_queue_messages",
            "Messages waiting or leased (dead=false) and dead letters (dead=true), by queue",
            ["queue", "dead"],
            registry=self.registry,
        )
        run = ["submission_id", "kind", "run"]
        self.run_cpu = Gauge(
            "weighbridge_run_cpu_percent",
            "CPU of a running benchmark or inspection run's process tree (100 = one core)",
            run,
            registry=self.registry,
        )
        self.run_rss = Gauge(
            "weighbridge_run_rss_bytes",
            "Resident memory of a running benchmark or inspection run's process tree",
            run,
            registry=self.registry,
        )
        self.run_processes = Gauge(
            "weighbridge_run_processes",
            "Processes in a running benchmark or inspection run's tree",
            run,
            registry=self.registry,
        )
        self.run_gpu = Gauge(
            "weighbridge_run_gpu_percent",
            "Utilisation of each GPU while a benchmark or inspection run uses it",
            [*run, "gpu"],
            registry=self.registry,
        )
        series = ["benchmark", "identity", "variant", "metric"]
        self.benchmark_alerts = Gauge(
            "weighbridge_benchmark_alert",
            "1 while a regression alert is open on a benchmark's metric, else 0",
            series,
            registry=self.registry,
        )
        self.benchmark_values = Gauge(
            "weighbridge_benchmark_value",
            "The latest value of a benchmark's metric (its overall median)",
            [*series, "units"],
            registry=self.registry,
        )


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    state: ApiMetrics = request.app.state.metrics
    async with services_of(request).db.session() as session:
        by_status = await count_submissions(session)
        benchmarks = await alert_gauges(session)
        running = await live_runs(session, now=time.time())
    state.submissions.clear()
    for kind, status, count in by_status:
        state.submissions.labels(kind, status).set(count)
    depths = await services_of(request).queue.counts()
    state.queue_messages.clear()
    for queue, dead, count in depths:
        state.queue_messages.labels(queue, str(dead).lower()).set(count)
    state.benchmark_alerts.clear()
    state.benchmark_values.clear()
    for b in benchmarks:
        labels = (b["benchmark"], b["identity"], b["variant"], b["metric"])
        state.benchmark_alerts.labels(*labels).set(b["alerting"])
        state.benchmark_values.labels(*labels, b["units"]).set(b["value"])
    for gauge in (state.run_cpu, state.run_rss, state.run_processes, state.run_gpu):
        gauge.clear()
    for r in running:
        run = (r["submission_id"], r["kind"], r["run"])
        state.run_cpu.labels(*run).set(float(r.get("cpu_percent", 0.0)))
        state.run_rss.labels(*run).set(float(r.get("rss_bytes", 0)))
        state.run_processes.labels(*run).set(float(r.get("processes", 0)))
        for gpu in r.get("gpus") or []:
            if gpu.get("utilization_percent") is not None:
                state.run_gpu.labels(*run, str(gpu["index"])).set(gpu["utilization_percent"])
    return Response(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)
