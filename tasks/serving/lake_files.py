"""The lake's files as the service offers them: keys from clients checked and confined to the
lake root, listing, streamed download, bounded upload that never leaves half a file, delete."""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import unicodedata
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import unquote

from tasks.lake import Lake

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024
MAX_KEY_BYTES = 1024  # S3's limit on an object key
# control, format (bidi overrides, zero-width), surrogate (undecodable bytes), line separators
UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
STAGING_SUFFIX = ".upload"  # an upload in flight: hidden, renamed into place when complete


class UnsafeKey(ValueError):
    """A client-given key, folder or file name that could leave the lake root, or is malformed."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"refused key {_shown(key)}: {problem}")
        self.key, self.problem = key, problem


class FileMissing(LookupError):
    """No file at the key (absent, or a folder)."""

    def __init__(self, key: str, reason: str | None = None) -> None:
        self.key, self.reason = key, reason or "no such file in the lake"
        super().__init__(f"{_shown(key)}: {self.reason}")


class KeyConflict(ValueError):
    """An upload's key is taken by a folder, or one of its folders is a file."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"cannot store {_shown(key)}: {reason}")
        self.key, self.reason = key, reason


class UploadTooLarge(ValueError):
    """An upload went past the size limit; nothing of it was kept."""

    def __init__(self, key: str, limit: int) -> None:
        super().__init__(
            f"upload to {_shown(key)} larger than {limit} bytes (RECSYS_API_MAX_UPLOAD_BYTES)"
        )
        self.key, self.limit = key, limit


@dataclass(frozen=True)
class LakeFile:
    key: str
    size: int


@dataclass(frozen=True)
class Download:
    """An opened file: its size and its bytes as chunks (the handle closes when they end)."""

    key: str
    size: int
    chunks: Iterator[bytes]


@dataclass(frozen=True)
class StoredFile:
    key: str
    size: int
    sha256: str


# --- keys ---------------------------------------------------------------------------------
def lake_key(lake: Lake, raw: str) -> str:
    """The key of one file, checked: relative, no ``.``/``..``/empty segments, no backslash,
    NUL, control character or ``~``, also once percent-decoding is undone; inside the root."""
    key = _checked_path(raw)
    if not key:
        raise UnsafeKey(raw, "empty key")
    _confine(lake, raw, key)
    return key


def lake_prefix(lake: Lake, raw: str) -> str:
    """A folder of the lake (empty: the root), checked as :func:`lake_key`; no trailing slash."""
    prefix = _checked_path(raw[:-1] if raw.endswith("/") else raw)
    if prefix:
        _confine(lake, raw, prefix)
    return prefix


def file_name(raw: str) -> str:
    """One path segment (an uploaded file's name), checked as a key segment; no slash."""
    if "/" in raw or "/" in _fully_decoded(raw):
        raise UnsafeKey(raw, "a file name cannot contain '/'")
    name = _checked_path(raw)
    if not name:
        raise UnsafeKey(raw, "empty file name")
    return name


def _checked_path(raw: str) -> str:
    for form in (raw, _fully_decoded(raw)):
        _refuse_unsafe(raw, form)
    return raw


def _refuse_unsafe(raw: str, key: str) -> None:
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise UnsafeKey(raw, f"longer than {MAX_KEY_BYTES} bytes")
    if "\x00" in key:
        raise UnsafeKey(raw, "contains a NUL character")
    if any(unicodedata.category(c) in UNPRINTABLE for c in key):
        raise UnsafeKey(raw, "contains a control or invisible formatting character")
    if "\\" in key:
        raise UnsafeKey(raw, "contains a backslash")
    if "~" in key:
        raise UnsafeKey(raw, "contains '~'")
    if key.startswith("/"):
        raise UnsafeKey(raw, "absolute path: keys are relative to the lake root")
    if not key:
        return
    for segment in key.split("/"):
        if segment == "..":
            raise UnsafeKey(raw, "'..' segment: keys cannot leave the lake root")
        if segment == ".":
            raise UnsafeKey(raw, "'.' segment")
        if not segment:
            raise UnsafeKey(raw, "empty segment ('//' or a trailing '/')")


def _fully_decoded(raw: str, rounds: int = 5) -> str:
    """Undo percent-encoding until nothing changes (a double-encoded '..' shows as '..')."""
    decoded = raw
    for _ in range(rounds):
        once = unquote(decoded, errors="surrogateescape")
        if once == decoded:
            break
        decoded = once
    return decoded


def _confine(lake: Lake, raw: str, key: str) -> None:
    """The key's full path must stay under the root (and, locally, resolve under it too,
    so a symbolic link inside the lake cannot lead out)."""
    root = lake.root.rstrip("/")
    target = posixpath.normpath(lake.path(key))
    if not target.startswith(root + "/"):
        raise UnsafeKey(raw, "outside the lake root")
    if lake.protocol == "file":
        real_root = os.path.realpath(root)
        if not os.path.realpath(target).startswith(real_root + os.sep):
            raise UnsafeKey(raw, "leads outside the lake root")


def _shown(key: str) -> str:
    """A key as an error message shows it: quoted, control characters escaped, shortened."""
    text = repr(key)
    return text if len(text) <= 200 else text[:197] + "..."


# --- operations ---------------------------------------------------------------------------
def list_files(lake: Lake, prefix: str) -> list[LakeFile]:
    """Every file under the folder ``prefix`` (a checked prefix; empty: the whole lake), or
    the file itself when ``prefix`` is one, with sizes; uploads in flight left out."""
    base = lake.path(prefix)
    if not lake.fs.exists(base):
        return []
    found: dict[str, dict[str, Any]] = lake.fs.find(base, detail=True)
    start = len(lake.root.rstrip("/")) + 1
    files = [
        LakeFile(key=path[start:], size=int(info.get("size") or 0))
        for path, info in found.items()
        if not _is_staging(posixpath.basename(path))
    ]
    return sorted(files, key=lambda f: f.key)


def open_download(lake: Lake, key: str) -> Download:
    """Open the file at a checked ``key`` for streaming; :class:`FileMissing` when absent."""
    path = lake.path(key)
    if not lake.fs.isfile(path):
        folder = lake.fs.isdir(path)
        raise FileMissing(key, "a folder: list it with GET /files?prefix=" if folder else None)
    try:
        handle = lake.fs.open(path, "rb")
    except FileNotFoundError:  # deleted since
        raise FileMissing(key) from None
    return Download(key=key, size=int(lake.fs.size(path)), chunks=_chunks(handle))


def _chunks(handle: IO[bytes]) -> Iterator[bytes]:
    try:
        while chunk := handle.read(CHUNK_BYTES):
            yield chunk
    finally:
        handle.close()


def store_upload(lake: Lake, key: str, source: IO[bytes], limit: int) -> StoredFile:
    """Copy ``source`` to a checked ``key``, refusing it past ``limit`` bytes. The bytes go to a
    hidden staging key first and are moved into place only when complete; on any failure the
    staging key is removed, so the lake holds either the whole file or nothing new."""
    staging = posixpath.join(
        posixpath.dirname(key), f".{posixpath.basename(key)}.{uuid.uuid4().hex}{STAGING_SUFFIX}"
    )
    staging_path = lake.path(staging)
    if lake.fs.isdir(lake.path(key)):
        raise KeyConflict(key, "a folder of that name exists")
    digest, size = hashlib.sha256(), 0
    try:
        if lake.protocol == "file":
            _local_folders(lake, key, posixpath.dirname(staging_path))
        with lake.fs.open(staging_path, "wb") as sink:
            while chunk := source.read(CHUNK_BYTES):
                size += len(chunk)
                if size > limit:
                    raise UploadTooLarge(key, limit)
                digest.update(chunk)
                sink.write(chunk)
        lake.fs.mv(staging_path, lake.path(key))
    except BaseException:
        _remove_staging(lake, staging)
        raise
    logger.info("stored %s (%d bytes) in the lake", key, size)
    return StoredFile(key=key, size=size, sha256=digest.hexdigest())


def _local_folders(lake: Lake, key: str, folder: str) -> None:
    try:
        lake.fs.makedirs(folder, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise KeyConflict(key, "one of its folders is a file") from None


def _remove_staging(lake: Lake, staging: str) -> None:
    try:
        if lake.fs.exists(lake.path(staging)):
            lake.fs.rm(lake.path(staging))
    except Exception as error:  # the upload's own error matters more; say what is left
        logger.warning("could not remove the staging file %s: %s", staging, error)


def _is_staging(name: str) -> bool:
    return name.startswith(".") and name.endswith(STAGING_SUFFIX)


def delete_file(lake: Lake, key: str) -> None:
    """Remove the one file at a checked ``key``; :class:`FileMissing` when absent or a folder
    (folders are never removed through here)."""
    path = lake.path(key)
    if not lake.fs.isfile(path):
        folder = lake.fs.isdir(path)
        raise FileMissing(key, "a folder: only files are deleted" if folder else None)
    lake.fs.rm(path)
    logger.info("deleted %s from the lake", key)
