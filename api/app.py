"""The FastAPI application factory: routes, error shape, and the services it was given."""

from __future__ import annotations

from fastapi import FastAPI

from api.errors import install_error_handlers
from api.routes import health, submissions, tasks
from core.context import Services
from core.version import __version__


def create_app(services: Services) -> FastAPI:
    """An app bound to already-started services (the caller owns their lifetime)."""
    app = FastAPI(
        title="Weighbridge",
        version=__version__,
        description="Upload models, benchmarks and inspections; get them weighed and ranked.",
    )
    app.state.services = services
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(tasks.router)
    app.include_router(submissions.router)
    return app
