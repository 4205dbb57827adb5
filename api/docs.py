"""The interactive API docs at /docs, served whole by this app so that they work offline.

FastAPI's own /docs loads Swagger UI from a CDN (and a favicon from FastAPI's site): offline
it is a blank page. Here the Swagger UI bundle comes from the `fastapi-offline` package's
assets and the page names nothing outside the site. ReDoc is not offered (one docs page).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs/assets"


def install_docs(app: FastAPI, *, path: str = "/docs") -> None:
    """Serve Swagger UI at `path` for the app's OpenAPI document (create the app with
    docs_url=None and redoc_url=None)."""
    app.mount(ASSETS, StaticFiles(packages=[("fastapi_offline", "static")]), name="docs-assets")

    @app.get(path, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} API",
            swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}/static/favicon.svg",
            # Swagger UI would otherwise send the document to an online validator.
            swagger_ui_parameters={"validatorUrl": None},
        )
