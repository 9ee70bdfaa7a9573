"""The health checks against real services: ok when up, failed with a reason when down, not
configured when unset; the health flow and ``python flows/health.py`` fail when a part is down."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from flows.health import health
from tasks.config import load_settings
from tasks.health import (
    PartHealth,
    Status,
    check_lake,
    check_mlflow,
    check_postgres,
    check_prefect,
    check_project_dir,
    check_stack,
    check_thingsboard,
    health_table,
)
from tasks.lake import Lake
from tests.conftest import HttpServer, S3Server

REPO = Path(__file__).resolve().parents[1]
TOKEN = "device-token-1234"


def closed_port_url(scheme: str = "http") -> str:
    """A loopback URL where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"{scheme}://127.0.0.1:{port}"


def by_part(results: list[PartHealth]) -> dict[str, PartHealth]:
    return {result.part: result for result in results}


# --- the lake ---------------------------------------------------------------------------------
def test_local_lake_round_trip_leaves_nothing(recsys_env: Path) -> None:
    result = check_lake(load_settings())

    assert result.status is Status.OK and result.latency_ms is not None
    assert result.endpoint == (recsys_env / "lake").resolve().as_uri()
    assert Lake.from_settings(load_settings()).list("_health") == []


def test_s3_lake_round_trip_leaves_nothing(s3_lake_env: str, s3_server: S3Server) -> None:
    result = check_lake(load_settings())

    assert result.status is Status.OK and result.endpoint == s3_lake_env
    assert s3_server.keys(s3_lake_env.removeprefix("s3://").split("/")[0]) == []


def test_s3_lake_that_is_down_fails(recsys_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_LAKE_URL", "s3://bucket/lake")
    monkeypatch.setenv("RECSYS_S3_ENDPOINT_URL", closed_port_url())
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")

    result = check_lake(load_settings())

    assert result.status is Status.FAILED and "s3://bucket/lake/_health/" in result.reason


# --- PostgreSQL -------------------------------------------------------------------------------
def test_configured_postgres_answers_its_version(database_url: str) -> None:
    result = check_postgres(load_settings())

    assert result.status is Status.OK and result.reason.startswith("PostgreSQL ")
    assert result.endpoint.endswith(f"/{conninfo_to_dict(database_url)['dbname']}")


def test_postgres_that_is_down_fails_without_showing_the_password(
    recsys_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = closed_port_url().rsplit(":", 1)[1]
    monkeypatch.setenv("RECSYS_DATABASE_URL", f"postgresql://u:the-password@127.0.0.1:{port}/db")

    result = check_postgres(load_settings())

    assert result.status is Status.FAILED and "refused" in result.reason.lower()
    assert result.endpoint == f"127.0.0.1:{port}/db"
    assert "the-password" not in result.reason + result.endpoint


# --- MLflow -----------------------------------------------------------------------------------
def test_embedded_mlflow_tracking_and_registry(recsys_env: Path) -> None:
    results = by_part(check_mlflow(load_settings()))

    assert results["mlflow tracking"].status is Status.OK
    assert results["mlflow registry"].status is Status.OK
    assert results["mlflow registry"].reason == "0 registered model(s)"
    assert "embedded (sqlite:///" in results["mlflow tracking"].endpoint


def test_mlflow_server_that_is_down_fails_fast(
    recsys_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", closed_port_url())
    start = time.monotonic()

    results = by_part(check_mlflow(load_settings()))

    assert time.monotonic() - start < 10
    assert results["mlflow tracking"].status is Status.FAILED
    assert results["mlflow registry"].status is Status.FAILED
    assert results["mlflow tracking"].reason == "unreachable: connection refused"


def test_mlflow_credentials_in_the_uri_are_not_shown(
    recsys_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = closed_port_url()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", plain.replace("http://", "http://mlflow:s3cr3t@"))

    results = check_mlflow(load_settings())

    assert all("s3cr3t" not in f"{r.endpoint} {r.reason}" for r in results)
    assert results[0].endpoint == plain


# --- Prefect ----------------------------------------------------------------------------------
@pytest.mark.usefixtures("prefect_harness")
def test_ephemeral_prefect_api_is_checked_and_no_pool_is_expected(recsys_env: Path) -> None:
    results = by_part(check_prefect(load_settings()))

    assert results["prefect api"].status is Status.OK
    assert results["prefect work pool"].status is Status.NOT_CONFIGURED


@pytest.mark.usefixtures("prefect_harness")
def test_prefect_server_without_the_work_pool_fails_on_the_pool(
    recsys_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.settings import PREFECT_API_URL

    monkeypatch.setenv("PREFECT_API_URL", str(PREFECT_API_URL.value()))
    monkeypatch.setenv("RECSYS_WORK_POOL", "no-such-pool")

    results = by_part(check_prefect(load_settings()))

    assert results["prefect api"].status is Status.OK
    assert results["prefect work pool"].status is Status.FAILED
    assert (
        "prefect work-pool create no-such-pool --type process"
        in results["prefect work pool"].reason
    )


@pytest.mark.usefixtures("prefect_harness")
def test_prefect_server_with_the_work_pool(
    recsys_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="health-pool", type="process"), overwrite=True)
    monkeypatch.setenv("PREFECT_API_URL", str(PREFECT_API_URL.value()))
    monkeypatch.setenv("RECSYS_WORK_POOL", "health-pool")

    results = by_part(check_prefect(load_settings()))

    assert results["prefect work pool"].status is Status.OK
    assert "process pool 'health-pool'" in results["prefect work pool"].reason


def test_prefect_server_that_is_down_fails(
    recsys_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", f"{closed_port_url()}/api")

    results = by_part(check_prefect(load_settings()))

    assert results["prefect api"].status is Status.FAILED
    assert results["prefect work pool"].status is Status.FAILED


# --- ThingsBoard ------------------------------------------------------------------------------
def test_thingsboard_unset_is_not_configured(recsys_env: Path) -> None:
    assert check_thingsboard(load_settings()).status is Status.NOT_CONFIGURED


def test_thingsboard_accepts_the_device_token(
    recsys_env: Path, http_server: HttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    http_server.serve(f"/api/v1/{TOKEN}/attributes", b"{}")
    monkeypatch.setenv("THINGSBOARD_URL", http_server.url)
    monkeypatch.setenv("THINGSBOARD_DEVICE_TOKEN", TOKEN)

    result = check_thingsboard(load_settings())

    assert result.status is Status.OK and result.reason == "device token accepted"


def test_thingsboard_rejecting_the_token_fails(
    recsys_env: Path, http_server: HttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("THINGSBOARD_URL", http_server.url)
    monkeypatch.setenv("THINGSBOARD_DEVICE_TOKEN", "unknown-token")

    result = check_thingsboard(load_settings())

    assert result.status is Status.FAILED and "HTTP 404" in result.reason


def test_thingsboard_that_is_down_fails_with_the_token_masked(
    recsys_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("THINGSBOARD_URL", closed_port_url())
    monkeypatch.setenv("THINGSBOARD_DEVICE_TOKEN", TOKEN)

    result = check_thingsboard(load_settings())

    assert result.status is Status.FAILED and result.reason == "unreachable: connection refused"
    assert TOKEN not in result.reason + result.endpoint


# --- the project folder a worker enters -------------------------------------------------------
def test_project_folder_must_hold_the_flows(
    recsys_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECSYS_PROJECT_DIR", str(REPO))
    assert check_project_dir(load_settings()).status is Status.OK

    monkeypatch.setenv("RECSYS_PROJECT_DIR", str(tmp_path))
    assert check_project_dir(load_settings()).status is Status.FAILED


# --- the whole stack --------------------------------------------------------------------------
@pytest.mark.usefixtures("prefect_harness")
def test_table_lists_every_part_with_status_and_latency(database_url: str) -> None:
    results = check_stack(load_settings())

    table = health_table(results).splitlines()
    assert table[0].split()[:3] == ["part", "status", "latency"]
    assert [line.split("  ")[0].strip() for line in table[2:]] == [r.part for r in results]
    assert {r.part for r in results} == {
        "project folder", "lake", "postgresql", "mlflow tracking", "mlflow registry",
        "prefect api", "prefect work pool", "thingsboard", "telemetry outbox",
    }  # fmt: skip
    assert "not configured" in table[-1] and " ms " in table[3]


@pytest.mark.usefixtures("prefect_harness")
def test_health_flow_completes_when_every_configured_part_is_up(database_url: str) -> None:
    state = health(return_state=True)

    assert state.is_completed()
    statuses = {r.part: r.status for r in state.result()}
    assert statuses["postgresql"] is Status.OK and statuses["lake"] is Status.OK
    assert statuses["thingsboard"] is Status.NOT_CONFIGURED


@pytest.mark.usefixtures("prefect_harness")
def test_health_flow_fails_when_a_configured_part_is_down(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("THINGSBOARD_URL", closed_port_url())
    monkeypatch.setenv("THINGSBOARD_DEVICE_TOKEN", TOKEN)

    state = health(return_state=True)

    assert state.is_failed()
    assert "1 part(s) down: thingsboard" in str(state.message)


@pytest.mark.slow
def test_script_exits_non_zero_and_prints_the_reason(database_url: str, tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
        "THINGSBOARD_URL": closed_port_url(),
        "THINGSBOARD_DEVICE_TOKEN": TOKEN,
    }

    done = subprocess.run(
        [sys.executable, str(REPO / "flows" / "health.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip

    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    row = next(line for line in output.splitlines() if line.startswith("thingsboard"))
    assert "failed" in row and "unreachable: connection refused" in row
    assert TOKEN not in output


def test_the_outbox_part_shows_messages_given_up(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.health import check_outbox
    from tasks.warehouse.connection import connect
    from tasks.warehouse.schema import migrate

    monkeypatch.setenv("THINGSBOARD_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("THINGSBOARD_DEVICE_TOKEN", "token")
    migrate(database_url)
    with connect(database_url) as conn:
        conn.execute(
            "INSERT INTO ops.telemetry_outbox (kind, payload, attempts, last_error, failed_at)"
            " VALUES ('telemetry', '{}', 5, 'HTTP 400 Bad Request: no values', now()),"
            " ('telemetry', '{}', 0, NULL, NULL)"
        )

    part = check_outbox(load_settings())

    assert part.status is Status.OK
    assert (
        part.reason == "1 pending, 1 refused and given up (last: HTTP 400 Bad Request: no values)"
    )
