"""Start the ingest and ETL (transform) deployments on the configured Prefect server; answers the
flow run id and its page in the Prefect UI. Without a server: 503 saying how to start one."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from api.errors import ApiError
from api.responses import JSONAnswer
from api.schemas import ErrorOut
from api.security import require_token
from api.service import service_of
from tasks.serving.pipeline_runs import (
    INGEST_DEPLOYMENT,
    TRANSFORM_DEPLOYMENT,
    DeploymentMissing,
    PrefectNotConfigured,
    PrefectUnreachable,
    RunRefused,
    start_deployment,
)

router = APIRouter(tags=["pipeline"])
RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "missing or wrong bearer token"},
    403: {"model": ErrorOut, "description": "RECSYS_API_TOKEN is not set: disabled"},
    422: {"model": ErrorOut, "description": "the body is invalid, or the server refused the run"},
    503: {
        "model": ErrorOut,
        "description": "no Prefect server configured or reachable, or the flow not deployed; "
        "the message says how to start and deploy",
    },
}


class RunStartedOut(BaseModel):
    flow_run_id: str = Field(examples=["0b6f5f0e-3c1e-4a77-9d0a-2c8f1e5b7a10"])
    url: str = Field(
        examples=["http://127.0.0.1:4200/runs/flow-run/0b6f5f0e-3c1e-4a77-9d0a-2c8f1e5b7a10"]
    )
    deployment: str = Field(examples=[INGEST_DEPLOYMENT])
    state: str = Field(examples=["SCHEDULED"], description="the run's state when created")


class IngestIn(BaseModel):
    """Parameters of the ingest flow; what is left out takes the deployment's defaults."""

    model_config = ConfigDict(extra="forbid")

    source: str | None = Field(
        default=None,
        min_length=1,
        max_length=2048,
        description="URL, zip or folder of the archive as the worker sees it; "
        "unset: RECSYS_MOVIELENS_SOURCE",
        examples=["https://files.grouplens.org/datasets/movielens/ml-100k.zip"],
    )
    md5: str | None = Field(
        default=None,
        pattern=r"^[0-9a-fA-F]{32}$",
        description="the archive's expected MD5",
        examples=["0e33842e24a9c977be4e0107933c0723"],
    )


@router.post(
    "/ingest",
    dependencies=[Depends(require_token)],
    status_code=202,
    response_model=RunStartedOut,
    responses=RESPONSES,
)
def ingest(request: Request, body: Annotated[IngestIn | None, Body()] = None) -> JSONAnswer:
    """Start the ``ingest/on-demand`` deployment (archive -> lake raw/); returns at once with
    the flow run id and its UI link: a worker of the deployment's pool runs it."""
    parameters = body.model_dump(exclude_none=True) if body is not None else {}
    return _start(request, INGEST_DEPLOYMENT, parameters)


@router.post(
    "/etl/run",
    dependencies=[Depends(require_token)],
    status_code=202,
    response_model=RunStartedOut,
    responses=RESPONSES,
)
def etl_run(request: Request) -> JSONAnswer:
    """Start the ``transform/on-demand`` deployment (raw -> validated Parquet -> features ->
    PostgreSQL, ingesting the configured source first); returns at once."""
    return _start(request, TRANSFORM_DEPLOYMENT, {})


def _start(request: Request, deployment: str, parameters: dict[str, Any]) -> JSONAnswer:
    settings = service_of(request).settings
    try:
        run = start_deployment(settings, deployment, parameters)
    except (PrefectNotConfigured, PrefectUnreachable) as error:
        raise ApiError(503, str(error), [{"field": "prefect", "problem": "unavailable"}]) from None
    except DeploymentMissing as error:
        raise ApiError(
            503, str(error), [{"field": "deployment", "problem": "not deployed"}]
        ) from None
    except RunRefused as error:
        raise ApiError(422, str(error), [{"field": "parameters", "problem": str(error)}]) from None
    return JSONAnswer(
        {"flow_run_id": run.flow_run_id, "url": run.url, "deployment": run.deployment,
         "state": run.state},
        status_code=202,
    )  # fmt: skip
