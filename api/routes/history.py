"""Benchmark histories: `GET /api/v1/benchmarks/history?benchmark=NAME[&metric=M]`.

The series of every identity that shares the benchmark's name (task_name), each metric's
runs in time order and the regression alerts raised on them (see core.histories). A token is
optional: without one only public runs are shown.
"""

from __future__ import annotations

from fastapi import APIRouter, Query, Request

from api.deps import optional_user, services_of
from core.histories import read_history

router = APIRouter(prefix="/api/v1/benchmarks", tags=["benchmarks"])


@router.get("/history")
async def benchmark_history(
    request: Request,
    benchmark: str = Query(max_length=255, description="The descriptor's info.labels.task_name"),
    metric: str | None = Query(default=None, max_length=64, description="Only this metric"),
) -> dict:
    async with services_of(request).db.session() as session:
        viewer = await optional_user(session, request)
        return await read_history(session, benchmark, metric=metric, viewer=viewer)
