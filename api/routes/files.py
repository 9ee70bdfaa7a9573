"""The lake's files: list, streamed download, upload (size limit) and delete, every key confined
to the lake root. Answers name keys only, never the lake's local path."""

from __future__ import annotations

import mimetypes
import posixpath
from collections.abc import Callable
from functools import partial
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, File, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from api.errors import ApiError
from api.responses import JSONAnswer
from api.schemas import ErrorOut
from api.security import require_token
from api.service import service_of
from tasks.lake import Lake
from tasks.serving.lake_files import (
    FileMissing,
    KeyConflict,
    UnsafeKey,
    UploadTooLarge,
    delete_file,
    file_name,
    lake_key,
    lake_prefix,
    list_files,
    open_download,
    store_upload,
)

router = APIRouter(tags=["files"])
REFUSED: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorOut, "description": "the key is unsafe or malformed (names the field)"},
}
MISSING: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "no file at that key"}
}
PROTECTED: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "missing or wrong bearer token"},
    403: {"model": ErrorOut, "description": "RECSYS_API_TOKEN is not set: disabled"},
}


class FileOut(BaseModel):
    key: str = Field(examples=["uploads/ratings.csv"])
    size: int = Field(examples=[1979173])


class FilesOut(BaseModel):
    prefix: str = Field(examples=["raw/ml-100k"])
    files: list[FileOut]


class StoredOut(BaseModel):
    key: str = Field(examples=["uploads/ratings.csv"])
    size: int = Field(examples=[1979173])
    sha256: str = Field(examples=["5e3e1c3e..."])


def _lake(request: Request) -> Lake:
    return Lake.from_settings(service_of(request).settings)


def _checked(check: Callable[[str], str], raw: str, field: str) -> str:
    try:
        return check(raw)
    except UnsafeKey as error:
        raise ApiError(422, str(error), [{"field": field, "problem": error.problem}]) from None


@router.get("/files", response_model=FilesOut, responses=REFUSED)
def list_lake(
    request: Request,
    prefix: Annotated[
        str, Query(description="a folder of the lake; empty: every file", examples=["raw"])
    ] = "",
) -> JSONAnswer:
    """Every file under a folder of the lake (or the file the prefix names), with its size."""
    lake = _lake(request)
    folder = _checked(partial(lake_prefix, lake), prefix, "prefix")
    files = [{"key": f.key, "size": f.size} for f in list_files(lake, folder)]
    return JSONAnswer({"prefix": folder, "files": files})


@router.get(
    "/files/{key:path}",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "the file's bytes"},
        **MISSING,
        **REFUSED,
    },
)
def download(request: Request, key: str) -> StreamingResponse:
    """The file at ``key``, streamed in chunks."""
    lake = _lake(request)
    checked = _checked(partial(lake_key, lake), key, "key")
    try:
        opened = open_download(lake, checked)
    except FileMissing as error:
        raise ApiError(404, str(error), [{"field": "key", "problem": error.reason}]) from None
    name = posixpath.basename(checked)
    media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    headers = {
        "Content-Length": str(opened.size),
        "Content-Disposition": f"attachment; filename*=UTF-8''{quote(name)}",
    }
    return StreamingResponse(opened.chunks, media_type=media_type, headers=headers)


@router.post(
    "/files/{folder:path}",
    dependencies=[Depends(require_token)],
    status_code=201,
    response_model=StoredOut,
    responses={
        409: {"model": ErrorOut, "description": "a folder has that name"},
        413: {"model": ErrorOut, "description": "larger than RECSYS_API_MAX_UPLOAD_BYTES"},
        **REFUSED,
        **PROTECTED,
    },
)
async def upload(
    request: Request,
    folder: str,
    file: Annotated[UploadFile, File(description="the file; stored as <folder>/<its name>")],
) -> JSONAnswer:
    """Store the file as ``<folder>/<file name>`` (an existing file of that key is replaced),
    refused past RECSYS_API_MAX_UPLOAD_BYTES; the lake never holds half an upload."""
    lake = _lake(request)
    base = _checked(partial(lake_prefix, lake), folder, "folder")
    name = _checked(file_name, file.filename or "", "file")
    key = _checked(partial(lake_key, lake), posixpath.join(base, name), "file")
    limit = service_of(request).settings.api_max_upload_bytes
    try:
        stored = await run_in_threadpool(store_upload, lake, key, file.file, limit)
    except UploadTooLarge as error:
        raise ApiError(413, str(error), [{"field": "file", "problem": "too large"}]) from None
    except KeyConflict as error:
        raise ApiError(409, str(error), [{"field": "file", "problem": error.reason}]) from None
    return JSONAnswer(
        {"key": stored.key, "size": stored.size, "sha256": stored.sha256}, status_code=201
    )


@router.delete(
    "/files/{key:path}",
    dependencies=[Depends(require_token)],
    responses={**MISSING, **REFUSED, **PROTECTED},
)
def delete(request: Request, key: str) -> JSONAnswer:
    """Remove the file at ``key`` (files only; a folder is never removed through here)."""
    lake = _lake(request)
    checked = _checked(partial(lake_key, lake), key, "key")
    try:
        delete_file(lake, checked)
    except FileMissing as error:
        raise ApiError(404, str(error), [{"field": "key", "problem": error.reason}]) from None
    return JSONAnswer({"deleted": checked})
