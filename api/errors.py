"""Every error as JSON a person can act on: what failed and which field; never a stack trace or
a local path (those go to the log)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.responses import JSONAnswer
from api.service import ModelUnavailable
from tasks.serving.user_ratings import RatingsRejected

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An answer other than 2xx: ``status``, a message, and the fields at fault."""

    def __init__(
        self, status: int, message: str, fields: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.fields = status, message, fields or []


def error_body(message: str, fields: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"error": message, "fields": fields or []}


def _field_name(location: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(part) for part in location]
    return ".".join(parts[1:] if parts and parts[0] in {"body", "query", "path"} else parts)


def _validation_problem(error: dict[str, Any]) -> dict[str, Any]:
    message = str(error.get("msg", "invalid"))
    if error.get("type") == "json_invalid":
        message = "the body is not valid JSON"
    return {"field": _field_name(error.get("loc", ())) or "body", "problem": message}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONAnswer:
        return JSONAnswer(error_body(error.message, error.fields), status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONAnswer:
        fields = [_validation_problem(e) for e in error.errors()]
        message = "; ".join(f"{f['field']}: {f['problem']}" for f in fields)
        return JSONAnswer(error_body(f"invalid request: {message}", fields), status_code=422)

    @app.exception_handler(RatingsRejected)
    async def rejected_ratings(request: Request, error: RatingsRejected) -> JSONAnswer:
        return JSONAnswer(
            error_body("ratings refused: " + str(error), error.problems), status_code=422
        )

    @app.exception_handler(ModelUnavailable)
    async def no_model(request: Request, error: ModelUnavailable) -> JSONAnswer:
        return JSONAnswer(error_body(str(error), [{"field": "model"}]), status_code=503)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONAnswer:
        message = error.detail if isinstance(error.detail, str) else "request refused"
        if error.status_code == 404 and message == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif error.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        fields = [{"field": "body", "problem": "too large"}] if error.status_code == 413 else []
        return JSONAnswer(
            error_body(message, fields), status_code=error.status_code, headers=error.headers
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONAnswer:
        logger.exception("%s %s failed", request.method, request.url.path)
        return JSONAnswer(
            error_body(f"internal error ({type(error).__name__}); the service log has the details"),
            status_code=500,
        )
