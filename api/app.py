"""The FastAPI application: routers, error handlers, the body-size limit, and the service's
lifespan (model loaded, recorder and telemetry started; on shutdown everything flushed)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_body, install_error_handlers
from api.responses import JSONAnswer
from api.routes import files, health, model, pipeline, recommendations
from api.service import Service
from tasks.config import Settings, load_settings

logger = logging.getLogger(__name__)

DESCRIPTION = """
The MovieLens recommender as a service: the MLflow registry's champion answers top-N and
rating requests; every answer is a row of `serving.predictions` and, aggregated, ThingsBoard
telemetry. Endpoints that change something need `Authorization: Bearer <RECSYS_API_TOKEN>`.
"""
UPLOADS = ("/files/", "/model/upload")  # bounded by RECSYS_API_MAX_UPLOAD_BYTES instead


def create_app(settings: Settings | None = None) -> FastAPI:
    """The application on ``settings`` (default: read from the environment)."""
    settings = settings or load_settings()
    # Prefect's logging setup (at its import) quiets uvicorn below WARNING: the service's
    # start, model loads and shutdown are worth a line each. No access log: every answer is a
    # row of serving.predictions already, and uvicorn writes one whenever the logger has a
    # handler, its parent's (Prefect's rich console) included: a third of a worker's CPU.
    for name in ("uvicorn", "uvicorn.error", "api", "tasks"):
        logging.getLogger(name).setLevel(logging.INFO)
    access = logging.getLogger("uvicorn.access")
    access.disabled, access.propagate = True, False

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = Service.from_settings(settings)
        app.state.service = service
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(
        title="movielens-recommender",
        description=DESCRIPTION,
        version="1",
        lifespan=lifespan,
        default_response_class=JSONAnswer,
    )
    install_error_handlers(app)
    app.add_middleware(
        BodyLimit, limit=settings.api_max_body_bytes, upload_limit=settings.api_max_upload_bytes
    )
    for module in (recommendations, model, health, files, pipeline):
        app.include_router(module.router)
    return app


class BodyLimit:
    """ASGI middleware: a request body over the limit (by Content-Length, or counted as it
    arrives when chunked) is answered 413 before a route reads it. Uploads have their own,
    larger limit."""

    def __init__(self, app: ASGIApp, limit: int, upload_limit: int) -> None:
        self.app, self.limit, self.upload_limit = app, limit, upload_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope["path"].startswith(UPLOADS)
        limit = self.upload_limit if upload else self.limit
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await _too_large(limit, upload)(scope, receive, send)
            return
        received = 0

        async def bounded() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:  # an HTTPException: FastAPI's body reader lets it through
                raise BodyTooLarge(limit, upload)
            return message

        await self.app(scope, bounded, send)


class BodyTooLarge(HTTPException):
    """A body that outgrew its limit while it arrived (chunked); answered 413 naming ``body``."""

    def __init__(self, limit: int, upload: bool) -> None:
        setting = "RECSYS_API_MAX_UPLOAD_BYTES" if upload else "RECSYS_API_MAX_BODY_BYTES"
        super().__init__(413, f"request body larger than {limit} bytes ({setting})")


def _too_large(limit: int, upload: bool) -> JSONAnswer:
    setting = "RECSYS_API_MAX_UPLOAD_BYTES" if upload else "RECSYS_API_MAX_BODY_BYTES"
    return JSONAnswer(
        error_body(
            f"request body larger than {limit} bytes ({setting})",
            [{"field": "body", "problem": "too large"}],
        ),
        status_code=413,
    )
