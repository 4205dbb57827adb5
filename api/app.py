"""The FastAPI application factory: routes, error shape, and the services it was given."""

from __future__ import annotations

from fastapi import FastAPI, Request

from api.docs import install_docs
from api.errors import install_error_handlers
from api.routes import (
    admin,
    benchmarks,
    blobs,
    health,
    history,
    inspections,
    prometheus,
    schemas,
    submissions,
    tasks,
    tokens,
    workers,
)
from api.routes.prometheus import ApiMetrics
from core.context import Services
from core.version import __version__
from web import benchmark_pages, leaderboard_pages, pages, submission_pages
from web.account_pages import router as account_router
from web.admin_pages import router as admin_router
from web.auth import install_auth


def create_app(services: Services) -> FastAPI:
    """An app bound to already-started services (the caller owns their lifetime)."""
    app = FastAPI(
        title="Weighbridge",
        version=__version__,
        description="Upload models, benchmarks and inspections; get them weighed and ranked.",
        # FastAPI's own docs pages load their scripts from a CDN: /docs is served by install_docs.
        docs_url=None,
        redoc_url=None,
    )
    app.state.services = services
    app.state.metrics = ApiMetrics()
    install_error_handlers(app)
    install_auth(app, secure=services.settings.public_url.lower().startswith("https://"))

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        response = await call_next(request)
        route = request.scope.get("route")
        template = getattr(route, "path", "unmatched")
        app.state.metrics.requests.labels(template, f"{response.status_code // 100}xx").inc()
        return response

    app.include_router(health.router)
    app.include_router(tasks.router)
    app.include_router(submissions.router)
    app.include_router(benchmarks.router)
    app.include_router(history.router)
    app.include_router(inspections.router, prefix="/api/v1/inspections")
    # Amun's own paths, so that an Amun client needs only a new host.
    app.include_router(inspections.router, prefix="/api/v1/inspect", include_in_schema=False)
    app.include_router(prometheus.router)
    app.include_router(schemas.router)
    # Remote evaluator workers (worker tokens only).
    app.include_router(workers.router)
    app.include_router(blobs.router)
    app.include_router(tokens.router)
    app.include_router(admin.router)
    app.include_router(account_router)
    app.include_router(admin_router)
    app.include_router(pages.router)
    app.include_router(leaderboard_pages.router)
    app.include_router(submission_pages.router)
    app.include_router(benchmark_pages.router)
    install_docs(app)
    app.mount("/static", pages.static, name="static")
    return app
