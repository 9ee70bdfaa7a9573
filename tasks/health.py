"""Health of the configured stack: one probe per part (lake, PostgreSQL, MLflow, Prefect,
ThingsBoard), each timed and with the reason when it fails, never raising.

Unconfigured services are probed in their embedded form (local lake folder, MLflow on SQLite,
embedded PostgreSQL, Prefect's ephemeral API); parts that have no embedded form (ThingsBoard,
the work pool of a Prefect server) are reported as not configured.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlparse, urlsplit, urlunsplit

import psycopg
import requests
from prefect import task
from prefect.cache_policies import NO_CACHE
from psycopg.conninfo import conninfo_to_dict

from tasks.config import Settings, load_settings
from tasks.lake import Lake
from tasks.report.thingsboard import outbox_state_on

TIMEOUT_SECONDS = 5.0


class Status(StrEnum):
    OK = "ok"
    FAILED = "failed"
    NOT_CONFIGURED = "not configured"


@dataclass(frozen=True)
class PartHealth:
    """One part of the stack: its status, where it is, how long the probe took, and why."""

    part: str
    status: Status
    endpoint: str
    latency_ms: float | None = None
    reason: str = ""


class PartDown(RuntimeError):
    """A probe found the part unusable; the message is the reason shown in the table."""


class UnhealthyStackError(RuntimeError):
    """At least one configured part is down."""


Probe = Callable[[], str]


def probe(part: str, endpoint: str, check: Probe) -> PartHealth:
    """Run ``check`` (which returns a detail or raises) and time it; any error is a failure."""
    start = time.perf_counter()
    try:
        detail = check()
    except Exception as error:  # the reason goes into the report, nothing is swallowed silently
        return PartHealth(part, Status.FAILED, endpoint, _elapsed_ms(start), _reason(error))
    return PartHealth(part, Status.OK, endpoint, _elapsed_ms(start), detail)


def not_configured(part: str, how: str) -> PartHealth:
    return PartHealth(part, Status.NOT_CONFIGURED, "-", None, how)


# --- the parts ------------------------------------------------------------------------------
def check_lake(settings: Settings) -> PartHealth:
    """Write, read back and delete a small object at the lake root."""
    lake = Lake.from_settings(settings)

    def round_trip() -> str:
        key = f"_health/{uuid.uuid4().hex}.probe"
        payload = uuid.uuid4().bytes
        lake.put_bytes(key, payload)
        try:
            if lake.get_bytes(key) != payload:
                raise PartDown(f"{lake.uri(key)} read back different bytes")
        finally:
            lake.delete(key)
        return "write, read, delete"

    return probe("lake", lake.url, round_trip)


def check_postgres(settings: Settings) -> PartHealth:
    """Connect to the warehouse (the embedded server when none is configured) and ask its version."""
    if settings.database_url is None:
        return probe(
            "postgresql", "embedded", lambda: _server_version(_embedded_database_url(settings))
        )
    url = settings.database_url.get_secret_value()
    return probe("postgresql", _database_endpoint(url), lambda: _server_version(url))


def check_mlflow(settings: Settings) -> list[PartHealth]:
    """The tracking store (search experiments) and the model registry (search models)."""
    from mlflow import MlflowClient

    uri = settings.resolved_mlflow_tracking_uri
    endpoint = _without_credentials(uri) if settings.mlflow_tracking_uri else f"embedded ({uri})"
    if settings.mlflow_tracking_uri is None:
        (settings.home / "mlflow").mkdir(parents=True, exist_ok=True)
    elif urlparse(uri).scheme in {"http", "https"}:
        # MLflow's own client retries for minutes; a server that is down should fail at once
        down = probe("mlflow tracking", endpoint, lambda: _http_ok(f"{uri.rstrip('/')}/health"))
        if down.status is Status.FAILED:
            return [down, PartHealth("mlflow registry", Status.FAILED, endpoint, None, down.reason)]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    def experiments() -> str:
        return f"{len(client.search_experiments(max_results=100))} experiment(s)"

    def models() -> str:
        return f"{len(client.search_registered_models(max_results=100))} registered model(s)"

    return [
        probe("mlflow tracking", endpoint, experiments),
        probe("mlflow registry", endpoint, models),
    ]


def check_prefect(settings: Settings) -> list[PartHealth]:
    """The Prefect API in use and, on a server, the work pool the deployments run on."""
    if settings.prefect_api_url is None:
        api = probe("prefect api", "ephemeral", _ephemeral_prefect_health)
        return [api, not_configured("prefect work pool", "no Prefect server (PREFECT_API_URL)")]
    base = settings.prefect_api_url.rstrip("/")
    api = probe("prefect api", base, lambda: _http_ok(f"{base}/health"))
    if api.status is Status.FAILED:
        return [api, PartHealth("prefect work pool", Status.FAILED, base, None, api.reason)]
    pool = probe(
        "prefect work pool",
        f"{base} {settings.work_pool}",
        lambda: _work_pool(base, settings.work_pool),
    )
    return [api, pool]


def check_thingsboard(settings: Settings) -> PartHealth:
    """Log in as the tenant, or read the device's attributes with its token, or just reach it."""
    if not settings.thingsboard_url:
        return not_configured("thingsboard", "THINGSBOARD_URL unset: telemetry off")
    base = settings.thingsboard_url.rstrip("/")
    if settings.thingsboard_username and settings.thingsboard_password is not None:
        username, password = settings.thingsboard_username, settings.thingsboard_password

        def login() -> str:
            response = requests.post(
                f"{base}/api/auth/login",
                json={"username": username, "password": password.get_secret_value()},
                timeout=TIMEOUT_SECONDS,
            )
            _raise_for_status(response, f"login as {username}")
            return f"logged in as {username}"

        return probe("thingsboard", base, login)
    if settings.thingsboard_device_token:
        token = settings.thingsboard_device_token.get_secret_value()

        def device() -> str:
            try:
                response = requests.get(
                    f"{base}/api/v1/{token}/attributes", timeout=TIMEOUT_SECONDS
                )
            except requests.RequestException as error:  # its message holds the URL: mask the token
                raise PartDown(_reason(error).replace(token, "***")) from error
            _raise_for_status(response, "device attributes")
            return "device token accepted"

        return probe("thingsboard", base, device)
    return probe("thingsboard", base, lambda: _http_reachable(base))


def check_outbox(settings: Settings, database: str | None = None) -> PartHealth:
    """The ThingsBoard outbox: messages waiting, and those ThingsBoard refused until they were
    given up (shown here, with the last reason; they never fail the stack: nothing retries
    them)."""
    if not settings.thingsboard_configured:
        return not_configured("telemetry outbox", "ThingsBoard off: messages wait in the outbox")

    def counts() -> str:
        url = database or _embedded_database_url(settings)
        with psycopg.connect(url, connect_timeout=int(TIMEOUT_SECONDS)) as conn:
            migrated = conn.execute(
                "SELECT 1 FROM information_schema.columns WHERE table_schema = 'ops'"
                " AND table_name = 'telemetry_outbox' AND column_name = 'failed_at'"
            ).fetchone()
            if migrated is None:
                return "no outbox yet (the warehouse is migrated by the first flow or the API)"
            state = outbox_state_on(conn, latest=1)
        detail = f"{state.pending} pending, {state.given_up} refused and given up"
        if not state.refused:
            return detail
        return f"{detail} (last: {_first_line(state.refused[0].reason)})"

    return probe("telemetry outbox", "ops.telemetry_outbox", counts)


def check_project_dir(settings: Settings) -> PartHealth:
    """The folder a worker's pull step enters must hold the flows and prefect.yaml."""
    folder = settings.project_dir
    if folder is None:
        return not_configured("project folder", "RECSYS_PROJECT_DIR unset (needed on workers)")

    def has_flows() -> str:
        missing = [n for n in ("prefect.yaml", "flows") if not (Path(folder) / n).exists()]
        if missing:
            raise PartDown(f"{folder} has no {', '.join(missing)}")
        return "prefect.yaml and flows/ present"

    return probe("project folder", str(folder), has_flows)


def check_stack(settings: Settings) -> list[PartHealth]:
    """Every part, in the order data flows through them."""
    return [
        check_project_dir(settings),
        check_lake(settings),
        check_postgres(settings),
        *check_mlflow(settings),
        *check_prefect(settings),
        check_thingsboard(settings),
        check_outbox(settings),
    ]


def check_service_stack(settings: Settings, database: str | None = None) -> list[PartHealth]:
    """The parts the HTTP service uses. Without a Prefect server the service starts no
    temporary one (its ingest and ETL endpoints need a server): Prefect is not configured.
    ``database``: the URL the service already resolved (the embedded server's, say)."""
    prefect = (
        check_prefect(settings)
        if settings.prefect_api_url
        else [not_configured("prefect api", "no Prefect server (PREFECT_API_URL)")]
    )
    postgres = (
        probe(
            "postgresql",
            "embedded" if settings.database_url is None else _database_endpoint(database),
            lambda: _server_version(database),
        )
        if database is not None
        else check_postgres(settings)
    )
    return [
        check_lake(settings),
        postgres,
        *check_mlflow(settings),
        *prefect,
        check_thingsboard(settings),
        check_outbox(settings, database),
    ]


@task(name="check-stack", cache_policy=NO_CACHE, persist_result=False)
def check_configured_stack() -> list[PartHealth]:
    """Probe every part of the stack the settings configure (never cached: health is now)."""
    return check_stack(load_settings())


def failed_parts(results: Sequence[PartHealth]) -> list[str]:
    return [result.part for result in results if result.status is Status.FAILED]


def health_table(results: Sequence[PartHealth]) -> str:
    """A fixed-width table: part, status, latency, endpoint, detail or reason."""
    header = ("part", "status", "latency", "endpoint", "detail / reason")
    rows = [
        (
            r.part,
            str(r.status),
            "-" if r.latency_ms is None else f"{r.latency_ms:.0f} ms",
            r.endpoint,
            r.reason,
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True))
        + f"  {row[-1]}"
        for row in [header, *rows]
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(line.rstrip() for line in lines)


# --- probes -----------------------------------------------------------------------------------
def _embedded_database_url(settings: Settings) -> str:
    from tasks.warehouse.connection import database_url

    return database_url(settings)


def _server_version(url: str) -> str:
    with psycopg.connect(url, connect_timeout=int(TIMEOUT_SECONDS)) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return f"PostgreSQL {row[0] if row else '?'}"


def _without_credentials(uri: str) -> str:
    """``uri`` with any ``user:password@`` removed (an MLflow URI may carry them)."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def _database_endpoint(url: str) -> str:
    """host:port/dbname, never the password."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "unparseable RECSYS_DATABASE_URL"
    return f"{parts.get('host', 'localhost')}:{parts.get('port', 5432)}/{parts.get('dbname', '')}"


def _ephemeral_prefect_health() -> str:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        error = client.api_healthcheck()
        if error is not None:
            raise PartDown(f"Prefect API unhealthy: {error}")
        return f"API at {client.api_url}"


def _work_pool(base: str, name: str) -> str:
    response = requests.get(f"{base}/work_pools/{name}", timeout=TIMEOUT_SECONDS)
    if response.status_code == 404:
        raise PartDown(f"no work pool {name!r}: prefect work-pool create {name} --type process")
    _raise_for_status(response, f"work pool {name}")
    pool = response.json()
    return f"{pool.get('type')} pool {name!r}, {pool.get('status') or 'status unknown'}"


def _http_ok(url: str) -> str:
    response = requests.get(url, timeout=TIMEOUT_SECONDS)
    _raise_for_status(response, url)
    return f"HTTP {response.status_code}"


def _http_reachable(url: str) -> str:
    response = requests.get(url, timeout=TIMEOUT_SECONDS)
    if response.status_code >= 500:
        raise PartDown(f"HTTP {response.status_code} from {url}")
    return f"reachable (HTTP {response.status_code}); no credentials, telemetry off"


def _raise_for_status(response: requests.Response, what: str) -> None:
    if response.status_code >= 400:
        raise PartDown(f"{what}: HTTP {response.status_code} {response.reason}")


def _reason(error: Exception) -> str:
    if isinstance(error, PartDown):
        return str(error)
    if isinstance(error, requests.Timeout):
        return f"no answer within {TIMEOUT_SECONDS:.0f} s"
    if isinstance(error, requests.ConnectionError):
        refused = "refused" in str(error).lower()
        return (
            "unreachable: connection refused" if refused else f"unreachable: {_first_line(error)}"
        )
    return f"{type(error).__name__}: {_first_line(error)}"


def _first_line(error: Exception | str) -> str:
    text = str(error).strip().splitlines()
    if text:
        return text[0][:300]
    return type(error).__name__ if isinstance(error, Exception) else ""


def _elapsed_ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000
