"""One place that turns exceptions into responses: the API's `{"error": {...}}` shape, or, for
the website's pages and unknown paths outside /api, an error page in the site's layout."""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from core.errors import WeighbridgeError
from web.pages import is_page_request, render_error

log = logging.getLogger(__name__)


def error_response(
    status: int, code: str, message: str, *, field: str | None = None, headers=None
) -> JSONResponse:
    body: dict = {"code": code, "message": message}
    if field:
        body["field"] = field
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(WeighbridgeError)
    async def _weighbridge(request: Request, exc: WeighbridgeError) -> Response:
        if is_page_request(request):
            return render_error(request, exc.status, exc.message, headers=exc.headers or None)
        return JSONResponse(exc.to_dict(), status_code=exc.status, headers=exc.headers or None)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        err = exc.errors()[0]
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
        field = ".".join(loc) or None
        message = f"{field}: {err.get('msg')}" if field else str(err.get("msg"))
        if field is None and tuple(err.get("loc", ())) == ("body",):
            # The whole body is missing (or is not JSON): say so, not just "Field required".
            field = "body"
            message = "body: this request needs a JSON body (see /docs for its fields)"
        if is_page_request(request):
            return render_error(request, 422, message)
        return error_response(422, "invalid_request", message, field=field)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if is_page_request(request):
            message = (
                f"There is no page at {request.url.path}."
                if exc.status_code == 404
                else str(exc.detail)
            )
            return render_error(
                request, exc.status_code, message, headers=dict(exc.headers or {}) or None
            )
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        ref = uuid.uuid4().hex[:12]
        log.exception("internal error %s", ref)
        message = f"internal error (reference {ref}); the operators have the details"
        if is_page_request(request):
            return render_error(request, 500, message)
        return error_response(500, "internal", message)
