"""``GET /health``: every part the service uses, probed now, and the loaded model."""

from __future__ import annotations

import time
from dataclasses import asdict
from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from api.responses import JSONAnswer
from api.service import Service, service_of
from tasks.health import PartHealth, Status, check_service_stack

router = APIRouter(tags=["health"])


def model_health(service: Service) -> PartHealth:
    served = service.models.current
    if served is None:
        reason = service.models.error or "no model loaded yet"
        return PartHealth("model", Status.FAILED, service.models.alias, None, reason)
    age = time.monotonic() - service.models.checked_at
    detail = f"version {served.version} of {served.dataset}; alias checked {age:.0f} s ago"
    if service.models.error:  # still serving the loaded version, but the poll fails
        return PartHealth("model", Status.FAILED, served.alias, None, service.models.error)
    return PartHealth("model", Status.OK, served.alias, 0.0, detail)


def recorder_health(service: Service) -> PartHealth:
    recorder = service.recorder
    spooled = sum(1 for _ in recorder.spool_files())
    detail = f"{recorder.written} answers written, {recorder.pending} queued, {spooled} spool files"
    if recorder.last_error:
        return PartHealth("answer recorder", Status.FAILED, "serving.predictions", None,
                          f"{recorder.last_error}; {detail}")  # fmt: skip
    return PartHealth("answer recorder", Status.OK, "serving.predictions", 0.0, detail)


@router.get(
    "/health",
    summary="Every part, probed now",
    responses={503: {"description": "a configured part is down (the body says which and why)"}},
)
async def health(request: Request) -> JSONAnswer:
    """Status, latency and reason of the lake, PostgreSQL, MLflow tracking and registry,
    Prefect, ThingsBoard, the loaded model and the answer recorder: 200 when every configured
    part is ok, else 503."""
    service = service_of(request)
    parts = await run_in_threadpool(check_service_stack, service.settings, service.database)
    parts += [model_health(service), recorder_health(service)]
    failed = any(part.status is Status.FAILED for part in parts)
    body = {
        "status": "failed" if failed else "ok",
        "checked_at": datetime.now(UTC).isoformat(),
        "parts": [{**asdict(part), "status": str(part.status)} for part in parts],
    }
    return JSONAnswer(body, status_code=503 if failed else 200)
