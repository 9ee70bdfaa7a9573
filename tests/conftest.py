"""Session fixtures: the real MovieLens files, and (below) real services started once per session."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import socket
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from prefect.client.schemas.objects import State

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ML100K = REPO_ROOT.parent / "shared" / "data" / "ml-100k"


def ml100k_path() -> Path:
    """Where the real ml-100k files are: $RECSYS_TEST_ML100K or ../shared/data/ml-100k."""
    return Path(os.environ.get("RECSYS_TEST_ML100K", str(DEFAULT_ML100K))).resolve()


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    """The real ml-100k folder; skip on a user's machine without it, fail under CI=true."""
    path = ml100k_path()
    if not (path / "u.data").is_file():
        message = (
            f"MovieLens 100K not found at {path} (set RECSYS_TEST_ML100K to the extracted folder)"
        )
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(message + ": CI must not pass by skipping real-data tests")
        pytest.skip(message)
    return path


# --- isolated settings --------------------------------------------------------------------
@pytest.fixture
def recsys_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean environment: only RECSYS_HOME set (to a temp folder), no .env from the repo."""
    for name in list(os.environ):
        if name.startswith(("RECSYS_", "AWS_", "MLFLOW_", "THINGSBOARD_")):
            monkeypatch.delenv(name)
    home = tmp_path / "recsys-home"
    monkeypatch.setenv("RECSYS_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    return home


# --- Prefect --------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One temporary Prefect API and database for the whole session, results in a temp folder."""
    from prefect.settings import (
        PREFECT_LOCAL_STORAGE_PATH,
        PREFECT_RESULTS_PERSIST_BY_DEFAULT,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    storage = tmp_path_factory.mktemp("prefect-results")
    with (
        temporary_settings(
            updates={
                PREFECT_LOCAL_STORAGE_PATH: str(storage),
                PREFECT_RESULTS_PERSIST_BY_DEFAULT: True,
                PREFECT_SERVER_ANALYTICS_ENABLED: False,
            }
        ),
        prefect_test_harness(server_startup_timeout=120),
    ):
        yield


def task_run_states(flow_state: State) -> dict[str, list[str]]:
    """Task name -> state names of every task run of a finished flow run."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flow_run_id = flow_state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    states: dict[str, list[str]] = {}
    for run in runs:
        states.setdefault(run.task_key.split("-")[0] if run.task_key else run.name, []).append(
            run.state.name if run.state else "?"
        )
    return states


def settled_task_states(state: State, task: str) -> list[str]:
    """The states of ``task``'s runs in a finished flow run, once Prefect has recorded them (it
    records them from events, a moment after the flow returns)."""
    deadline = time.monotonic() + 15
    while True:
        runs = sorted(task_run_states(state).get(task, []))
        if (runs and "?" not in runs and "Running" not in runs) or time.monotonic() > deadline:
            return runs
        time.sleep(0.5)


# --- a real S3 API server -------------------------------------------------------------------
@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    access_key: str = "testing-key"
    secret_key: str = "testing-secret"

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
        )

    def create_bucket(self) -> str:
        name = f"lake-{uuid.uuid4().hex[:10]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 API server on a free loopback port, for the whole session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Server(endpoint_url=f"http://{host}:{port}")
    finally:
        server.stop()


@pytest.fixture
def s3_lake_env(recsys_env: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """Settings pointing the lake at a fresh bucket on the S3 server; returns the lake URL."""
    bucket = s3_server.create_bucket()
    url = f"s3://{bucket}/lake"
    monkeypatch.setenv("RECSYS_LAKE_URL", url)
    monkeypatch.setenv("RECSYS_S3_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    return url


# --- archives ------------------------------------------------------------------------------
def zip_of(folder: Path) -> bytes:
    """A zip laid out like GroupLens's: every file under a top ``ml-100k/`` folder."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.iterdir()):
            archive.write(path, f"ml-100k/{path.name}")
    return buffer.getvalue()


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


# --- a loopback HTTP server -----------------------------------------------------------------
@contextlib.contextmanager
def loopback_http(
    handler: type[BaseHTTPRequestHandler], poll_interval: float = 0.5
) -> Iterator[ThreadingHTTPServer]:
    """``handler`` served on a free loopback port for as long as the block runs; the server's
    URL is ``server_url(server)``."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, args=(poll_interval,), daemon=True).start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


def free_port() -> int:
    """A loopback port free at the time of asking, for a server a test starts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def server_url(httpd: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{httpd.server_address[1]}"


@dataclass
class HttpServer:
    """Serves registered byte payloads; ``fail_first`` answers 503 that many times first."""

    url: str
    routes: dict[str, bytes] = field(default_factory=dict)
    fail_first: dict[str, int] = field(default_factory=dict)
    truncate: set[str] = field(default_factory=set)
    hits: dict[str, int] = field(default_factory=dict)

    def serve(self, path: str, payload: bytes) -> str:
        self.routes[path] = payload
        return f"{self.url}{path}"


@pytest.fixture(scope="session")
def http_server() -> Iterator[HttpServer]:
    server_state = HttpServer(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            path = self.path
            server_state.hits[path] = server_state.hits.get(path, 0) + 1
            if server_state.fail_first.get(path, 0) > 0:
                server_state.fail_first[path] -= 1
                self.send_error(503, "try again")
                return
            payload = server_state.routes.get(path)
            if payload is None:
                self.send_error(404, "not found")
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            body = payload[: len(payload) // 2] if path in server_state.truncate else payload
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with loopback_http(Handler) as httpd:
        server_state.url = server_url(httpd)
        yield server_state


# --- a real PostgreSQL ----------------------------------------------------------------------
@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """PostgreSQL for the session: pgserver's bundled binaries (run as root too), pip-only."""
    from tasks.warehouse.connection import import_pgserver

    pgserver = import_pgserver()
    # a short path: the server's unix socket lives in its data folder (108-byte limit)
    folder = Path(tempfile.mkdtemp(prefix="recsys-pg-", dir="/tmp"))
    server = pgserver.get_server(folder, cleanup_mode="delete")
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()


def new_database(postgres_server: str, prefix: str = "test") -> str:
    """A fresh, empty database on the session server; returns its URL."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return make_conninfo(postgres_server, dbname=name)


@pytest.fixture
def database_url(recsys_env: Path, postgres_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh, empty database on the session server, set as RECSYS_DATABASE_URL."""
    url = new_database(postgres_server)
    monkeypatch.setenv("RECSYS_DATABASE_URL", url)
    return url


@contextlib.contextmanager
def synthetic_project(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: str, name: str, size: Any, seed: int
) -> Iterator[tuple[Path, str, Path]]:
    """For a module's fixtures: a synthetic ml-100k-format folder of ``size``, and an
    environment with only a fresh project home and database set; yields (home, database URL,
    data folder)."""
    from bench.synth import write_ml100k

    root = tmp_path_factory.mktemp(name)
    folder = write_ml100k(root / "ml-100k", size, seed=seed)
    url = new_database(postgres_server, name)
    with pytest.MonkeyPatch.context() as env:
        prefixes = ("RECSYS_", "MLFLOW_", "THINGSBOARD_")
        for variable in [v for v in os.environ if v.startswith(prefixes)]:
            env.delenv(variable)
        env.setenv("RECSYS_HOME", str(root / "home"))
        env.setenv("RECSYS_DATABASE_URL", url)
        env.chdir(root)
        yield root / "home", url, folder
