"""The data lake: one fsspec interface over a local folder (``file://``) or S3/MinIO (``s3://``).

Writes are atomic from a reader's view: locally a temporary file renamed into place, on S3 a
single PUT (or a multipart upload, which appears only when completed).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlparse

import fsspec
import polars as pl

if TYPE_CHECKING:
    from tasks.config import Settings

CHUNK_BYTES = 8 * 1024 * 1024


class LakeError(RuntimeError):
    """A lake operation failed; the message names the object."""


@dataclass(frozen=True)
class Lake:
    """A lake rooted at ``url``; paths given to its methods are relative to the root."""

    url: str
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_settings(cls, settings: Settings, url: str | None = None) -> Lake:
        """The lake at ``url`` (default: the configured one) with the settings' credentials."""
        url = (url or settings.resolved_lake_url).rstrip("/")
        options = settings.s3_storage_options() if url.startswith("s3://") else {}
        return cls(url=url, storage_options=options)

    @property
    def protocol(self) -> str:
        return urlparse(self.url).scheme or "file"

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return _filesystem(self.protocol, tuple(sorted(_hashable(self.storage_options))))

    @property
    def root(self) -> str:
        """The root as a path the filesystem understands (no scheme)."""
        parsed = urlparse(self.url)
        if self.protocol == "file":
            return parsed.path.rstrip("/") or "/"
        return f"{parsed.netloc}{parsed.path}".rstrip("/")

    @contextmanager
    def _failures(self, action: str, key: str) -> Iterator[None]:
        """Any error of ``action`` on ``key`` as one LakeError naming the object and, on S3, the
        endpoint and the setting that chooses it (the original error is kept as its cause)."""
        try:
            yield
        except LakeError:
            raise
        except FileNotFoundError as exc:
            raise LakeError(f"{self.uri(key)} does not exist") from exc
        except Exception as exc:
            raise LakeError(f"cannot {action} {self.uri(key)}: {self._explain(exc)}") from exc

    def _explain(self, exc: Exception) -> str:
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        if self.protocol != "s3":
            return reason
        endpoint = self.storage_options.get("endpoint_url") or "AWS S3"
        return (
            f"{reason} (S3 endpoint {endpoint}: check RECSYS_S3_ENDPOINT_URL, the credentials "
            "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, and that the bucket exists)"
        )

    def path(self, key: str) -> str:
        return f"{self.root}/{key.lstrip('/')}" if key else self.root

    def uri(self, key: str) -> str:
        """Full URL of ``key`` (for logs, manifests and DuckDB/Polars readers)."""
        return f"{self.url}/{key.lstrip('/')}"

    # --- writes -------------------------------------------------------------------------
    def put_bytes(self, key: str, data: bytes) -> None:
        """Write ``data`` at ``key`` atomically."""
        target = self.path(key)
        if self.protocol == "file":
            _write_local_atomically(Path(target), data)
            return
        with self._failures("write", key):
            self.fs.pipe_file(target, data)

    def put_stream(self, key: str, source: IO[bytes]) -> str:
        """Copy a readable binary stream to ``key`` atomically; returns its sha256.

        The stream is copied in chunks, so archives larger than memory pass through.
        """
        digest = hashlib.sha256()
        target = self.path(key)
        if self.protocol == "file":
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            temporary = Path(target).with_name(f".{Path(target).name}.{uuid.uuid4().hex}.tmp")
            try:
                with open(temporary, "wb") as sink:
                    _copy_hashing(source, sink, digest)
                os.replace(temporary, target)
            finally:
                temporary.unlink(missing_ok=True)
            return digest.hexdigest()
        with self._failures("write", key), self.fs.open(target, "wb") as sink:
            _copy_hashing(source, sink, digest)
        return digest.hexdigest()

    def put_json(self, key: str, payload: Any) -> None:
        self.put_bytes(key, json.dumps(payload, indent=2, sort_keys=True).encode())

    def write_parquet(self, key: str, frame: pl.DataFrame) -> None:
        buffer = io.BytesIO()
        frame.write_parquet(buffer, compression="zstd", statistics=True)
        self.put_bytes(key, buffer.getvalue())

    def delete(self, key: str) -> None:
        """Remove ``key`` (a file or a whole prefix); absent keys are ignored."""
        target = self.path(key)
        with self._failures("delete", key):
            if self.fs.exists(target):
                self.fs.rm(target, recursive=True)

    # --- reads --------------------------------------------------------------------------
    def get_bytes(self, key: str) -> bytes:
        with self._failures("read", key):
            return bytes(self.fs.cat_file(self.path(key)))

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

    def read_parquet(self, key: str) -> pl.DataFrame:
        return pl.read_parquet(io.BytesIO(self.get_bytes(key)))

    def exists(self, key: str) -> bool:
        with self._failures("look up", key):
            return bool(self.fs.exists(self.path(key)))

    def list(self, prefix: str = "") -> list[str]:
        """Keys of every file under ``prefix``, relative to the root, sorted."""
        base = self.path(prefix)
        with self._failures("list", prefix):
            if not self.fs.exists(base):
                return []
            found = self.fs.find(base)
        start = len(self.root) + 1
        return sorted(path[start:] if path.startswith(self.root) else path for path in found)

    def sha256(self, key: str) -> str:
        """Content hash of ``key``, streamed."""
        digest = hashlib.sha256()
        with self._failures("read", key), self.fs.open(self.path(key), "rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                digest.update(chunk)
        return digest.hexdigest()

    def modified(self, key: str) -> float:
        """When ``key`` was last written, in unix seconds."""
        with self._failures("stat", key):
            stamp = self.fs.modified(self.path(key))
        return float(stamp.timestamp())

    def size(self, key: str) -> int:
        with self._failures("stat", key):
            return int(self.fs.size(self.path(key)))


def _copy_hashing(source: IO[bytes], sink: Any, digest: Any) -> None:
    while chunk := source.read(CHUNK_BYTES):
        digest.update(chunk)
        sink.write(chunk)


def _write_local_atomically(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def _hashable(options: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(key, json.dumps(value, sort_keys=True)) for key, value in options.items()]


_FILESYSTEMS: dict[tuple[str, tuple[tuple[str, Any], ...]], fsspec.AbstractFileSystem] = {}


def _filesystem(protocol: str, options: tuple[tuple[str, Any], ...]) -> fsspec.AbstractFileSystem:
    key = (protocol, options)
    if key not in _FILESYSTEMS:
        kwargs = {name: json.loads(value) for name, value in options}
        # skip_instance_cache: each lake gets its own client, never one from another endpoint
        extra = {"skip_instance_cache": True} if protocol == "s3" else {}
        _FILESYSTEMS[key] = fsspec.filesystem(protocol, **kwargs, **extra)
    return _FILESYSTEMS[key]
