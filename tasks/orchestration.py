"""Prefect's runtime for a local run: the project's Prefect home and settings, the local Prefect
server when one runs (``recsys server start``), results on the lake's S3 bucket when the lake is
on S3, and the sweep's task runner."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlparse
from urllib.request import urlopen

from tasks.config import Settings, load_settings

RESULT_STORAGE_BLOCK = "recsys-results"


@contextlib.contextmanager
def prefect_environment(settings: Settings | None = None) -> Iterator[Settings]:
    """Run Prefect inside the project's settings: a local home and, on S3, shared results.

    Prefect reads its settings once at import, so a local run enters this context (the
    flows' ``__main__`` does) instead of exporting environment variables. A deployment run by
    a worker takes Prefect's settings from the worker's own environment.
    """
    import prefect.settings
    from prefect.settings import temporary_settings

    settings = settings or load_settings()
    settings.resolved_prefect_home.mkdir(parents=True, exist_ok=True)
    overrides = settings.prefect_overrides()
    if "PREFECT_API_URL" not in overrides:
        # a server of the same home is faster than starting a temporary one, and shows the run
        server = running_local_server(settings)
        if server is not None:
            overrides["PREFECT_API_URL"] = server.api_url
    updates = {getattr(prefect.settings, name): value for name, value in overrides.items()}
    with temporary_settings(updates=updates):
        if "PREFECT_API_URL" not in overrides:
            stop_orphaned_servers(settings)
            prepare_local_database(settings)
        if not settings.lake_is_s3:
            yield settings
            return
        block_slug = save_result_storage_block(settings)
        with temporary_settings(
            updates={prefect.settings.PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK: block_slug}
        ):
            yield settings


TEMPORARY_SERVER = "prefect.server.api.server:create_app"  # in its uvicorn command line


def stop_orphaned_servers(settings: Settings) -> list[int]:
    """Stop the temporary Prefect servers of this Prefect home whose run died (SIGKILL leaves
    its server running, adopted by PID 1 or a subreaper); returns their pids."""
    import psutil

    home = str(settings.resolved_prefect_home)
    stopped = []
    for process in psutil.process_iter(["pid", "cmdline", "ppid"]):
        try:
            if TEMPORARY_SERVER not in " ".join(process.info["cmdline"] or []):
                continue
            if process.environ().get("PREFECT_HOME") != home:
                continue
            parent = process.parent()
            if parent is not None and parent.pid != 1 and "python" in parent.name():
                continue  # its run is alive
            process.terminate()
            stopped.append(process.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    psutil.wait_procs([psutil.Process(pid) for pid in stopped if psutil.pid_exists(pid)], 5)
    return stopped


def prepare_local_database(settings: Settings) -> None:
    """Create and migrate Prefect's database in the project's Prefect home once, under a file
    lock, before a temporary server does it: runs started together on a fresh home would race
    on the same SQLite file's migrations (and fail with 'Timed out while attempting to connect
    to ephemeral Prefect API server'). Later runs find the marker and skip this."""
    import fcntl

    import prefect
    from prefect.server.database import provide_database_interface

    home = settings.resolved_prefect_home
    marker = home / f".database-ready-{prefect.__version__}"
    if marker.exists():
        return
    with open(home / ".database.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if marker.exists():  # another run did it while this one waited
            return
        # in a thread of its own, with this context's settings: a caller may run an event loop
        context = contextvars.copy_context()
        with ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(context.run, asyncio.run, provide_database_interface().create_db()).result()
        marker.touch()


@dataclass(frozen=True)
class LocalServer:
    """A Prefect server started by ``recsys server start``: its process and where it answers."""

    pid: int
    url: str

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"


def local_server_file(settings: Settings) -> Path:
    """The pid file of the local Prefect server (JSON: pid and URL), in its Prefect home."""
    return settings.resolved_prefect_home / "server.json"


def read_local_server(settings: Settings) -> LocalServer | None:
    """The local server the pid file names, whether or not it still runs."""
    try:
        recorded = json.loads(local_server_file(settings).read_text())
        return LocalServer(pid=int(recorded["pid"]), url=str(recorded["url"]).rstrip("/"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def running_local_server(settings: Settings, timeout: float = 1.0) -> LocalServer | None:
    """The local server when its process lives and its API answers its health check."""
    server = read_local_server(settings)
    if server is None or not process_alive(server.pid):
        return None
    return server if server_healthy(server.url, timeout) else None


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def server_healthy(url: str, timeout: float = 1.0) -> bool:
    """Whether a Prefect server answers ``GET <url>/api/health`` with 200."""
    try:
        with urlopen(f"{url}/api/health", timeout=timeout) as response:  # noqa: S310 (our URL)
            return bool(response.status == 200)
    except OSError:
        return False


def save_result_storage_block(settings: Settings) -> str:
    """Save the prefect-aws ``S3Bucket`` block that holds Prefect's results next to the lake.

    Workers that share the lake then share task caches. Credentials come from the named
    AwsCredentials block, or from the settings (kept as secret fields by Prefect), or, when
    neither is given, from boto3's own chain (environment, instance profile).
    """
    from prefect_aws import AwsCredentials, S3Bucket
    from prefect_aws.credentials import AwsClientParameters

    parsed = urlparse(settings.resolved_lake_url)
    if settings.aws_credentials_block:
        credentials = cast(AwsCredentials, AwsCredentials.load(settings.aws_credentials_block))
    else:
        credentials = AwsCredentials(
            aws_access_key_id=_secret(settings.aws_access_key_id),
            aws_secret_access_key=settings.aws_secret_access_key,
            region_name=settings.aws_region,
            aws_client_parameters=AwsClientParameters(endpoint_url=settings.s3_endpoint_url),
        )
    folder = "/".join(part for part in (parsed.path.strip("/"), "prefect-results") if part)
    block = S3Bucket(bucket_name=parsed.netloc, bucket_folder=folder, credentials=credentials)
    block.save(RESULT_STORAGE_BLOCK, overwrite=True)
    return f"s3-bucket/{RESULT_STORAGE_BLOCK}"


def sweep_task_runner(settings: Settings) -> Any:
    """The sweep's task runner: Prefect's thread pool, or Dask (a cluster address or local)."""
    if settings.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if settings.dask_address:
            return DaskTaskRunner(address=settings.dask_address)
        return DaskTaskRunner(
            cluster_kwargs={"n_workers": settings.sweep_workers, "threads_per_worker": 1,
                            "processes": False, "dashboard_address": None}
        )  # fmt: skip
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=settings.sweep_workers)


def _secret(value: Any) -> str | None:
    return value.get_secret_value() if value is not None else None
