"""Resolve a MovieLens source, fetch and verify its archive, store its raw files in the lake.

The raw layout is content-addressed: ``raw/<dataset>/<sha256>/<file>`` plus ``manifest.json``,
written last, so a folder without a manifest was never completed and is never read.
"""

from __future__ import annotations

import hashlib
import io
import logging
import socket
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import partial
from pathlib import Path, PurePosixPath
from typing import IO, Any, cast
from urllib.parse import urlparse

import requests
from prefect import task
from prefect.logging import get_run_logger
from prefect.states import State
from prefect.tasks import exponential_backoff
from pydantic import BaseModel, ConfigDict
from urllib3.exceptions import NameResolutionError

from tasks.caching import DATA_CONTENT
from tasks.config import load_settings
from tasks.errors import exception_chain
from tasks.lake import CHUNK_BYTES, Lake, LakeError
from tasks.movielens.catalog import (
    Layout,
    movielens_set,
)
from tasks.movielens.errors import (
    ArchiveError,
    ChecksumMismatchError,
    DownloadError,
    IngestError,
    SourceNotFoundError,
)

MANIFEST = "manifest.json"
PROGRESS_STEP = 0.1

Opener = Callable[[], IO[bytes]]


class SourceKind(StrEnum):
    URL = "url"
    ZIP = "zip"
    FOLDER = "folder"


class MovieLensSource(BaseModel):
    """Where the dataset comes from and a fingerprint of its content (the cache key)."""

    model_config = ConfigDict(frozen=True)

    kind: SourceKind
    location: str
    fingerprint: str
    expected_md5: str | None = None


class FetchedArchive(BaseModel):
    """A verified local copy: a zip file or an extracted folder, with its sha256."""

    model_config = ConfigDict(frozen=True)

    kind: SourceKind
    path: str
    sha256: str
    source: str


class RawFile(BaseModel):
    model_config = ConfigDict(frozen=True)

    file: str
    size: int
    sha256: str


class RawDataset(BaseModel):
    """Reference to a completed raw dataset in the lake (never the bytes)."""

    model_config = ConfigDict(frozen=True)

    dataset: str
    lake_url: str
    sha256: str
    files: tuple[RawFile, ...]

    @property
    def prefix(self) -> str:
        return f"raw/{self.dataset}/{self.sha256}"

    def key(self, file: str) -> str:
        return f"{self.prefix}/{file}"


# --- resolving the source --------------------------------------------------------------------
def resolve_source(location: str, expected_md5: str | None) -> MovieLensSource:
    """Classify ``location`` (URL, local zip, local folder) and fingerprint its content."""
    if urlparse(location).scheme in {"http", "https"}:
        # No checksum pins the archive (ml-latest is regenerated): fetch it anew once a day.
        pin = expected_md5 or f"unpinned {datetime.now(UTC).date().isoformat()}"
        fingerprint = sha256_text(f"{location}\n{pin}")
        return MovieLensSource(
            kind=SourceKind.URL,
            location=location,
            fingerprint=fingerprint,
            expected_md5=expected_md5,
        )
    path = Path(location.removeprefix("file://")).expanduser().resolve()
    if path.is_dir():
        return MovieLensSource(
            kind=SourceKind.FOLDER, location=str(path), fingerprint=folder_sha256(path)
        )
    if path.is_file():
        return MovieLensSource(
            kind=SourceKind.ZIP,
            location=str(path),
            fingerprint=file_digests(path)[1],
            expected_md5=expected_md5,
        )
    raise SourceNotFoundError(f"MovieLens source {location}: no such file, folder or URL")


def folder_sha256(folder: Path) -> str:
    """One hash over every file's relative name and content hash, in name order."""
    digest = hashlib.sha256()
    for path in folder_files(folder):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{file_digests(path)[1]}\n".encode())
    return digest.hexdigest()


def folder_files(folder: Path) -> list[Path]:
    """The files under ``folder``, in name order; a symbolic link that leads outside it is
    refused, never followed (its target would be copied into the lake)."""
    root = folder.resolve()
    files = []
    for path in sorted(folder.rglob("*")):
        target = path.resolve()
        if not target.is_relative_to(root):
            raise ArchiveError(
                f"{folder}: {path.relative_to(folder).as_posix()} is a symbolic link to "
                f"{target}, outside the source folder: refused"
            )
        if target.is_file():
            files.append(path)
    return files


def file_digests(path: Path) -> tuple[str, str]:
    """(md5, sha256) of a file, read once in chunks."""
    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            md5.update(chunk)
            sha256.update(chunk)
    return md5.hexdigest(), sha256.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --- fetching ---------------------------------------------------------------------------------
def _is_transient(task: object, task_run: object, state: State[Any]) -> bool:
    """Retry network failures only: a checksum mismatch or a bad archive will not heal."""
    try:
        state.result()
    except DownloadError:
        return True
    except Exception:
        return False
    return False


@task(
    cache_policy=DATA_CONTENT,
    persist_result=True,
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=1),
    retry_jitter_factor=0.5,
    retry_condition_fn=_is_transient,
)
def fetch_archive(source: MovieLensSource, downloads_dir: Path) -> FetchedArchive:
    """Download (streaming, with progress) or locate the archive and verify its checksum."""
    if source.kind is SourceKind.FOLDER:
        return FetchedArchive(
            kind=source.kind,
            path=source.location,
            sha256=source.fingerprint,
            source=source.location,
        )
    if source.kind is SourceKind.URL:
        path = download(source.location, downloads_dir, load_settings().download_timeout_seconds)
    else:
        path = Path(source.location)
    md5, sha256 = file_digests(path)
    if source.expected_md5 and md5 != source.expected_md5:
        if source.kind is SourceKind.URL:
            path.unlink(missing_ok=True)
        raise ChecksumMismatchError(
            f"{source.location}: MD5 {md5} does not match the expected {source.expected_md5}"
            " (corrupt or different archive; set RECSYS_MOVIELENS_MD5 if it is intended)"
        )
    check_zip(path, source.location)
    return FetchedArchive(
        kind=SourceKind.ZIP, path=str(path), sha256=sha256, source=source.location
    )


def download(url: str, downloads_dir: Path, timeout: float) -> Path:
    """Stream ``url`` into ``downloads_dir``; the file appears complete or not at all.

    The file is the archive itself: a body sent with a ``Content-Encoding`` (a proxy may gzip
    the zip) is decoded, and its ``Content-Length``, which counts the encoded bytes, is
    compared with the bytes that came over the wire."""
    logger = get_run_logger()
    downloads_dir.mkdir(parents=True, exist_ok=True)
    target = downloads_dir / (PurePosixPath(urlparse(url).path).name or "archive.zip")
    partial = target.with_suffix(target.suffix + ".part")
    try:
        with requests.get(url, stream=True, timeout=timeout) as response:
            if response.status_code >= 500 or response.status_code == 429:
                raise DownloadError(f"{url}: server answered HTTP {response.status_code}")
            if response.status_code >= 400:
                raise IngestError(f"{url}: HTTP {response.status_code} {response.reason}")
            encoding = response.headers.get("Content-Encoding", "")
            decoders = response.raw.CONTENT_DECODERS  # urllib3's: gzip and deflate at least
            undecodable = [
                coding
                for coding in (part.strip().lower() for part in encoding.split(","))
                if coding and coding != "identity" and coding not in decoders
            ]
            if undecodable:
                # written undecoded, the file would not be the archive
                raise IngestError(
                    f"{url}: the server sent the archive with Content-Encoding {encoding!r}, "
                    f"which cannot be decoded here ({', '.join(undecodable)})"
                )
            expected = int(response.headers.get("Content-Length") or 0)
            received, written = _stream_to_file(response, partial, expected, url, logger)
    except requests.RequestException as exc:
        partial.unlink(missing_ok=True)
        if _host_not_found(exc):
            # no network or a mistyped host: retrying will not help, a local copy will
            raise IngestError(
                f"{url}: cannot resolve the host {urlparse(url).hostname!r} (offline?). "
                "Set RECSYS_MOVIELENS_SOURCE to a local copy: the extracted folder or the zip"
            ) from exc
        raise DownloadError(f"{url}: cannot download ({type(exc).__name__}: {exc})") from exc
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    if expected and received != expected:
        partial.unlink(missing_ok=True)
        raise DownloadError(f"{url}: truncated download, {received} of {expected} bytes")
    partial.replace(target)
    logger.info("Downloaded %s (%d bytes, %d on the wire) to %s", url, written, received, target)
    return target


def _host_not_found(exc: BaseException) -> bool:
    """Whether a request failed because its host name did not resolve (DNS), not mid-transfer."""
    if any(isinstance(e, socket.gaierror | NameResolutionError) for e in exception_chain(exc)):
        return True
    # requests keeps urllib3's MaxRetryError as the first argument, its reason inside
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, NameResolutionError)


def _stream_to_file(
    response: requests.Response,
    partial: Path,
    expected: int,
    url: str,
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
) -> tuple[int, int]:
    """Write the decoded body to ``partial``; returns (bytes received on the wire, bytes
    written). Progress counts wire bytes, as ``expected`` (the Content-Length) does."""
    received, written, next_report = 0, 0, PROGRESS_STEP
    with open(partial, "wb") as sink:
        for chunk in response.iter_content(chunk_size=1024 * 1024):
            sink.write(chunk)
            written += len(chunk)
            received = response.raw.tell()  # urllib3 counts the bytes it read, before decoding
            if expected and received / expected >= next_report:
                logger.info(
                    "Downloading %s: %d%% (%d bytes)",
                    url,
                    int(100 * received / expected),
                    received,
                )
                next_report += PROGRESS_STEP
    return response.raw.tell(), written


def check_zip(path: Path, label: str) -> None:
    """Fail unless ``path`` is a complete, readable zip archive (CRC of every member)."""
    try:
        with zipfile.ZipFile(path) as archive:
            broken = archive.testzip()
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise ArchiveError(f"{label}: not a zip archive, or truncated ({exc})") from exc
    if broken is not None:
        raise ArchiveError(f"{label}: archive member {broken} is corrupt (CRC mismatch)")


# --- storing in the lake ----------------------------------------------------------------------
@task(cache_policy=DATA_CONTENT, persist_result=True)
def store_raw_files(archive: FetchedArchive, lake_url: str, dataset: str) -> RawDataset:
    """Copy every file of the archive to ``raw/<dataset>/<sha256>/`` and write the manifest."""
    logger = get_run_logger()
    lake = Lake.from_settings(load_settings(), lake_url)
    prefix = f"raw/{dataset}/{archive.sha256}"
    if lake.exists(f"{prefix}/{MANIFEST}"):
        logger.info("Raw %s %s already in the lake", dataset, archive.sha256[:12])
        return read_raw_dataset(lake, dataset, archive.sha256)
    with _open_members(archive, load_settings().max_member_bytes) as found:
        members = _known_members(dataset, found, archive.source, logger)
        _require_files(dataset, [member.name for member in members], archive.source)
        files = _copy_members(lake, prefix, members)
    manifest = {
        "dataset": dataset,
        "sha256": archive.sha256,
        "source": archive.source,
        "fetched_at": datetime.now(UTC).isoformat(),
        "files": [file.model_dump() for file in files],
    }
    lake.put_json(f"{prefix}/{MANIFEST}", manifest)  # last: the version is now complete
    logger.info("Stored %d raw files of %s in %s", len(files), dataset, lake.uri(prefix))
    for gone in remove_stale_partials(lake, dataset, completed=prefix):
        logger.info("Removed %s, left unfinished by a run that died", lake.uri(gone))
    return RawDataset(dataset=dataset, lake_url=lake.url, sha256=archive.sha256, files=files)


def raw_in_lake(raw: RawDataset) -> bool:
    """Whether the lake still holds this raw version: its manifest and every file."""
    lake = Lake.from_settings(load_settings(), raw.lake_url)
    held = set(lake.list(raw.prefix))
    return all(raw.key(name) in held for name in (MANIFEST, *(f.file for f in raw.files)))


def read_raw_dataset(lake: Lake, dataset: str, sha256: str) -> RawDataset:
    """The completed raw dataset whose manifest is in ``lake``."""
    manifest = lake.get_json(f"raw/{dataset}/{sha256}/{MANIFEST}")
    files = tuple(RawFile(**entry) for entry in manifest["files"])
    return RawDataset(dataset=dataset, lake_url=lake.url, sha256=sha256, files=files)


def _require_files(dataset: str, names: list[str], source: str) -> None:
    missing = [name for name in movielens_set(dataset).required_files if name not in names]
    if missing:
        raise ArchiveError(f"{source}: {dataset} file(s) {', '.join(missing)} missing")


def _copy_members(lake: Lake, prefix: str, members: list[Member]) -> tuple[RawFile, ...]:
    """Copy each member. A failure deletes nothing: another run may be writing (or have
    completed) the same content-addressed version, and a version without its manifest is
    never read; the next successful ingest removes it once it is stale."""
    written: list[RawFile] = []
    for member in members:
        key = f"{prefix}/{member.name}"
        with member.open() as stream:
            sha256 = lake.put_stream(key, stream)
        written.append(RawFile(file=member.name, size=lake.size(key), sha256=sha256))
    return tuple(written)


STALE_SECONDS = 3600.0  # an unfinished raw version untouched this long is no live run's work


def remove_stale_partials(
    lake: Lake, dataset: str, now: float | None = None, completed: str | None = None
) -> list[str]:
    """Delete what dead runs left under ``raw/<dataset>/``: versions without a manifest and
    temporary files (``.<name>.<uuid>.tmp``), once nothing in them changed for
    ``STALE_SECONDS``, and at once the temporary files in ``completed`` (the version this run
    just completed: its own were renamed into place); returns the keys or prefixes removed. A
    cleanup failure is logged, never raised: it must not fail the ingest that completed."""
    now = time.time() if now is None else now
    removed: list[str] = []
    try:
        keys = lake.list(f"raw/{dataset}")
        versions: dict[str, list[str]] = {}
        for key in keys:
            parts = key.split("/")
            if len(parts) >= 4:
                versions.setdefault("/".join(parts[:3]), []).append(key)
        for prefix, files in versions.items():
            complete = f"{prefix}/{MANIFEST}" in files
            stale = [k for k in files if now - lake.modified(k) > STALE_SECONDS]
            if not complete and len(stale) == len(files):
                lake.delete(prefix)
                removed.append(prefix)
            elif complete:
                for key in files if prefix == completed else stale:
                    if PurePosixPath(key).name.startswith(".") and key.endswith(".tmp"):
                        lake.delete(key)
                        removed.append(key)
    except LakeError as error:
        logging.getLogger(__name__).warning("raw cleanup skipped: %s", error)
    return removed


# The files GroupLens ships besides those catalog.py names, per layout: nothing else is stored.
ML100K_EXTRAS = frozenset(
    {"u.genre", "u.occupation", "u.info", "README", "allbut.pl", "mku.sh"}
    | {f"u{fold}.{part}" for fold in (1, 2, 3, 4, 5, "a", "b") for part in ("base", "test")}
)
DOCUMENTATION = frozenset({"README", "README.txt", "README.html", "checksums.txt"})
GENOME = frozenset({"genome-scores.csv", "genome-tags.csv"})
LAYOUT_EXTRAS = {
    Layout.ML100K: ML100K_EXTRAS,
    Layout.DAT: DOCUMENTATION | {"allbut.pl", "split_ratings.sh"},
    Layout.CSV: DOCUMENTATION | GENOME,
}


def known_files(dataset: str) -> frozenset[str]:
    """The names of the files of ``dataset`` that are stored in the lake."""
    member = movielens_set(dataset)
    catalogued = {*member.parsed_files, *((member.tags_file,) if member.tags_file else ())}
    return frozenset(catalogued) | LAYOUT_EXTRAS[member.layout]


def _known_members(
    dataset: str,
    members: list[Member],
    source: str,
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
) -> list[Member]:
    """The members that are files of ``dataset``; the others are left out, with a warning."""
    known = known_files(dataset)
    unknown = [member.name for member in members if member.name not in known]
    if unknown:
        logger.warning(
            "%s: %d file(s) that are no %s file left out of the lake: %s",
            source,
            len(unknown),
            dataset,
            ", ".join(unknown[:10]) + (" ..." if len(unknown) > 10 else ""),
        )
    return [member for member in members if member.name in known]


@dataclass(frozen=True)
class Member:
    """One file of an archive or folder: its relative name and how to open it, bounded."""

    name: str
    size: int
    opener: Opener
    limit: int
    label: str

    def open(self) -> IO[bytes]:
        if self.size > self.limit:
            raise ArchiveError(self._too_large(self.size))
        return cast(IO[bytes], BoundedReader(self.opener(), self.limit, self._too_large))

    def _too_large(self, size: int) -> str:
        return (
            f"{self.label}: {self.name} holds {size} bytes or more, more than the {self.limit} "
            "allowed by RECSYS_MAX_MEMBER_BYTES"
        )


class BoundedReader(io.RawIOBase):
    """A binary stream that fails once more than ``limit`` bytes came out of ``inner``: a
    member's declared size may lie, and a folder's file may grow while it is copied."""

    def __init__(self, inner: IO[bytes], limit: int, message: Callable[[int], str]) -> None:
        super().__init__()
        self._inner, self._limit, self._message, self._read = inner, limit, message, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        allowed = self._limit + 1 - self._read  # one byte past the limit tells it is past
        chunk = self._inner.read(allowed if size is None or size < 0 else min(size, allowed))
        self._read += len(chunk)
        if self._read > self._limit:
            raise ArchiveError(self._message(self._read))
        return chunk

    def close(self) -> None:
        self._inner.close()
        super().close()


@contextmanager
def _open_members(archive: FetchedArchive, limit: int) -> Iterator[list[Member]]:
    """Every file of the archive or folder, by its name inside the member's top folder."""
    if archive.kind is SourceKind.FOLDER:
        root = Path(archive.path)
        yield [
            Member(
                p.relative_to(root).as_posix(),
                p.stat().st_size,
                partial(_open_binary, p),
                limit,
                archive.source,
            )
            for p in folder_files(root)
        ]
        return
    with zipfile.ZipFile(archive.path) as handle:
        infos = [info for info in handle.infolist() if not info.filename.startswith("__MACOSX/")]
        for info in infos:
            _refuse_unsafe_path(info.filename, archive.source)
        files = [info for info in infos if not info.is_dir()]
        top = _common_top_folder([info.filename for info in files])
        yield [
            Member(
                info.filename.removeprefix(top),
                info.file_size,
                partial(handle.open, info),
                limit,
                archive.source,
            )
            for info in files
        ]


def _open_binary(path: Path) -> IO[bytes]:
    return path.open("rb")


def _refuse_unsafe_path(name: str, source: str) -> None:
    """A member path that is absolute or climbs out (``..``) is refused, whatever its name."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
        raise ArchiveError(f"{source}: unsafe member path {name!r} (absolute, or with '..')")


def _common_top_folder(names: list[str]) -> str:
    """``"<folder>/"`` when every name is inside that one folder (GroupLens's layout), else
    ``""``: root-level members keep their names."""
    tops = {name.split("/", 1)[0] for name in names}
    if len(tops) == 1 and all("/" in name for name in names):
        return f"{tops.pop()}/"
    return ""
