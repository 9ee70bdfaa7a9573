"""Failures end in a few lines that say what failed and which variable to set."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from prefect.logging import disable_run_logger

from cli.main import main, report_failure
from tasks.config import load_settings
from tasks.errors import explain_failure, setting_variable
from tasks.movielens.errors import DownloadError, IngestError
from tasks.movielens.sources import download
from tests.cli.conftest import closed_port

MAX_LINES = 5


def short_message(err: str) -> list[str]:
    lines = err.strip().splitlines()
    assert 1 <= len(lines) <= MAX_LINES, err
    return lines


def test_a_bad_dataset_names_RECSYS_DATASET_not_the_field(
    recsys_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RECSYS_DATASET", "ml-9m")

    code = main(["ingest"])

    lines = short_message(capsys.readouterr().err)
    assert code == 1
    assert lines[0].startswith("recsys ingest failed: invalid setting RECSYS_DATASET='ml-9m'")
    assert "unknown MovieLens dataset 'ml-9m'; known: ml-100k" in lines[0]
    assert "Set RECSYS_DATASET" in lines[1]
    log = recsys_env / "logs" / "recsys.log"
    assert str(log) in lines[-1]
    assert "Traceback" in log.read_text() and "ValidationError" in log.read_text()


def test_debug_prints_the_traceback_too(
    recsys_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RECSYS_DATASET", "ml-9m")

    code = main(["--debug", "ingest"])

    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" in err and err.strip().splitlines()[-2].startswith("recsys ingest failed")


def test_settings_fields_map_to_their_variables() -> None:
    assert setting_variable("dataset") == "RECSYS_DATASET"
    assert setting_variable("database_url") == "RECSYS_DATABASE_URL"
    assert setting_variable("mlflow_tracking_uri") == "MLFLOW_TRACKING_URI"
    assert setting_variable("prefect_api_url") == "PREFECT_API_URL"


def test_a_secret_setting_is_never_echoed(
    recsys_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECSYS_API_PORT", "not-a-port")
    monkeypatch.setenv("RECSYS_DATABASE_URL", "postgresql://u:hunter2@h/db")
    with pytest.raises(Exception) as raised:
        load_settings()

    explanation = explain_failure(raised.value)
    assert "RECSYS_API_PORT='not-a-port'" in explanation.what
    assert "hunter2" not in explanation.what


def test_a_closed_database_port_names_RECSYS_DATABASE_URL(
    recsys_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = closed_port()
    monkeypatch.setenv("RECSYS_DATABASE_URL", f"postgresql://u:secret@127.0.0.1:{port}/db")
    settings = load_settings()
    with pytest.raises(psycopg.OperationalError) as raised:
        psycopg.connect(settings.database_url.get_secret_value(), connect_timeout=5)  # type: ignore[union-attr]

    code = report_failure(raised.value, settings, "recsys train", recsys_env / "x.log", False)

    lines = short_message(capsys.readouterr().err)
    assert code == 1
    assert lines[0].startswith("recsys train failed: cannot reach PostgreSQL")
    assert f"port {port} failed" in lines[0] and "secret" not in "\n".join(lines)
    assert "set RECSYS_DATABASE_URL" in lines[1]


def test_an_unresolvable_download_host_is_not_retried_and_suggests_a_local_source(
    tmp_path: Path,
) -> None:
    with disable_run_logger(), pytest.raises(IngestError) as raised:
        download("http://nonexistent-host.invalid/ml-100k.zip", tmp_path, timeout=10)

    assert not isinstance(raised.value, DownloadError)  # DownloadError is the retried one
    lines = explain_failure(raised.value).lines()
    assert lines[0] == (
        "http://nonexistent-host.invalid/ml-100k.zip: cannot resolve the host"
        " 'nonexistent-host.invalid' (offline?)"
    )
    assert lines[1].startswith("Set RECSYS_MOVIELENS_SOURCE to a local copy")
    assert not list(tmp_path.iterdir())  # no partial file left


def test_an_unreachable_mlflow_server_names_MLFLOW_TRACKING_URI(
    recsys_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.exceptions import MlflowException

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    failure = MlflowException(
        "API request to http://127.0.0.1:1/api/2.0/mlflow/experiments/get-by-name failed with"
        " exception HTTPConnectionPool(host='127.0.0.1', port=1): Max retries exceeded"
    )

    wrapped = RuntimeError("the sweep failed")
    wrapped.__cause__ = failure
    explanation = explain_failure(wrapped, load_settings())
    assert explanation.what.startswith("cannot reach the MLflow tracking server http://127.0.0.1:1")
    assert "MLFLOW_TRACKING_URI" in (explanation.action or "")


def test_an_unreachable_s3_endpoint_names_RECSYS_S3_ENDPOINT_URL(
    recsys_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from botocore.exceptions import EndpointConnectionError

    monkeypatch.setenv("RECSYS_S3_ENDPOINT_URL", "http://127.0.0.1:1")
    failure = OSError("lake write failed")
    failure.__cause__ = EndpointConnectionError(endpoint_url="http://127.0.0.1:1/lake")

    explanation = explain_failure(failure, load_settings())

    assert explanation.what.startswith("cannot reach the S3 endpoint http://127.0.0.1:1")
    assert "RECSYS_S3_ENDPOINT_URL" in (explanation.action or "")


def test_an_unknown_failure_still_ends_in_one_line(recsys_env: Path) -> None:
    explanation = explain_failure(ValueError("first\nsecond\nthird"), load_settings())

    assert explanation.lines() == ["ValueError: first"]
