"""The model API: what is served, reload, export to the lake, upload as a challenger."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, model_validator

from api.errors import ApiError
from api.responses import JSONAnswer
from api.schemas import ErrorOut, ModelInfoOut
from api.security import require_token
from api.service import service_of
from tasks.serving.champion import NoChampionError
from tasks.serving.registry import (
    ModelRefused,
    VersionNotFound,
    export_version,
    load_uploaded_model,
    model_info,
    register_upload,
    resolve_version,
)

router = APIRouter(prefix="/model", tags=["model"])
PROTECTED: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "missing or wrong bearer token"},
    403: {"model": ErrorOut, "description": "RECSYS_API_TOKEN is not set: disabled"},
    422: {"model": ErrorOut, "description": "the body is invalid"},
}
UPLOAD_CHUNK = 1024 * 1024


@router.get("/info", response_model=ModelInfoOut, responses={503: {"model": ErrorOut}})
def info(request: Request) -> JSONAnswer:
    """The loaded version, its alias, parameters, cross-validated metrics, dataset version,
    when it was trained, and every registered version with its aliases."""
    service = service_of(request)
    served = service.served()
    return JSONAnswer(model_info(service.models.client(), served))


@router.post("/reload", dependencies=[Depends(require_token)], responses=PROTECTED)
def reload(request: Request) -> JSONAnswer:
    """Load the version the alias points at now (the service also does so by itself every
    RECSYS_MODEL_POLL_SECONDS). The swap is atomic: requests in flight finish on the old model."""
    service = service_of(request)
    try:
        swapped = service.models.reload(force=True)
    except NoChampionError as error:
        raise ApiError(503, str(error), [{"field": "model"}]) from None
    served = service.served()
    return JSONAnswer({"loaded_version": served.version, "alias": served.alias, "swapped": swapped})


class ExportIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str | None = Field(default=None, examples=["3"])
    alias: str | None = Field(default=None, examples=["champion"])

    @model_validator(mode="after")
    def _one_of(self) -> ExportIn:
        if (self.version is None) == (self.alias is None):
            raise ValueError("give either version or alias")
        return self


@router.post("/export", dependencies=[Depends(require_token)], responses=PROTECTED)
def export(request: Request, body: ExportIn) -> JSONAnswer:
    """Copy a version (or the version an alias points at) to the lake (S3/MinIO or the local
    lake) as the train flow exports its champion: ``models/<name>/v<version>/`` + model.json."""
    service = service_of(request)
    client = service.models.client()
    try:
        version = resolve_version(client, body.version, body.alias)
    except VersionNotFound as error:
        field = "alias" if body.alias else "version"
        raise ApiError(404, str(error), [{"field": field, "problem": "not registered"}]) from None
    uri = export_version(client, service.settings, version, body.alias or "")
    return JSONAnswer({"version": str(version.version), "lake_uri": uri})


@router.post("/upload", dependencies=[Depends(require_token)], status_code=201, responses=PROTECTED)
async def upload(
    request: Request,
    model: Annotated[UploadFile, File(description="a pickled, fitted recommender model")],
    description: Annotated[str, Form(min_length=1, max_length=2000)],
    tags: Annotated[
        str, Form(description='JSON object of tags, e.g. {"dataset": "ml-100k"}')
    ] = "{}",
) -> JSONAnswer:
    """Register a model file as a new version with the ``challenger`` alias (never champion),
    with a description and tags; a file that does not load, or whose model cannot answer a
    prediction, is refused."""
    service = service_of(request)
    try:
        parsed = json.loads(tags)
    except json.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict) or not all(isinstance(v, str) for v in parsed.values()):
        raise ApiError(422, "tags must be a JSON object of strings", [{"field": "tags"}])
    limit = service.settings.api_max_upload_bytes
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.pkl"
        await _save_bounded(model, path, limit)
        try:
            fitted = await run_in_threadpool(load_uploaded_model, path)
        except ModelRefused as error:
            raise ApiError(
                422, f"model refused: {error}", [{"field": "model", "problem": str(error)}]
            ) from None
    current = service.models.current
    titles = current.titles if current is not None else {}
    result = await run_in_threadpool(
        register_upload,
        service.models.client(),
        service.settings,
        fitted,
        titles,
        description,
        parsed,
    )
    return JSONAnswer(
        {"version": result.version, "alias": result.alias, "run_id": result.run_id}, status_code=201
    )


async def _save_bounded(upload: UploadFile, path: Path, limit: int) -> None:
    size = 0
    with open(path, "wb") as sink:
        while chunk := await upload.read(UPLOAD_CHUNK):
            size += len(chunk)
            if size > limit:
                raise ApiError(
                    413,
                    f"upload larger than {limit} bytes (RECSYS_API_MAX_UPLOAD_BYTES)",
                    [{"field": "model", "problem": "too large"}],
                )
            sink.write(chunk)
