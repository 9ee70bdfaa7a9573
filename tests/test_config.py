"""Settings: embedded defaults under RECSYS_HOME, environment overrides, one reader of the env."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tasks.config import GROUPLENS_ML100K_MD5, GROUPLENS_ML100K_URL, load_settings

REPO = Path(__file__).resolve().parents[1]


def test_defaults_live_under_the_project_home(recsys_env: Path) -> None:
    settings = load_settings()

    assert settings.home == recsys_env.resolve()
    assert settings.resolved_lake_url == (recsys_env / "lake").resolve().as_uri()
    assert (
        settings.resolved_mlflow_tracking_uri
        == f"sqlite:///{recsys_env.resolve()}/mlflow/mlflow.db"
    )
    assert settings.resolved_prefect_home == (recsys_env / "prefect").resolve()
    assert settings.movielens_source == GROUPLENS_ML100K_URL
    assert settings.movielens_md5 == GROUPLENS_ML100K_MD5
    assert settings.database_url is None and settings.thingsboard_url is None


def test_home_defaults_to_dot_recsys_in_the_working_folder(
    recsys_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RECSYS_HOME")

    assert load_settings().home == (Path.cwd() / ".recsys").resolve()


def test_environment_points_each_part_at_a_service(
    recsys_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECSYS_LAKE_URL", "s3://bucket/prefix/")
    monkeypatch.setenv("RECSYS_S3_ENDPOINT_URL", "http://minio:9000")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "the-secret")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("RECSYS_DATABASE_URL", "postgresql://u:p@db/recsys")

    settings = load_settings()

    assert settings.resolved_lake_url == "s3://bucket/prefix"
    assert settings.lake_is_s3
    assert settings.s3_storage_options() == {
        "client_kwargs": {"region_name": "us-east-1"},
        "endpoint_url": "http://minio:9000",
        "key": "key-id",
        "secret": "the-secret",
    }
    assert settings.resolved_mlflow_tracking_uri == "http://mlflow:5000"
    assert "the-secret" not in repr(settings) and "u:p@" not in repr(settings)


def test_dotenv_file_is_read(recsys_env: Path) -> None:
    Path(".env").write_text("RECSYS_MOVIELENS_MD5=ABCDEF\nRECSYS_DATASET=ml-100k\n")

    assert load_settings().movielens_md5 == "abcdef"


def test_empty_md5_disables_the_check(recsys_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_MOVIELENS_MD5", "")

    assert load_settings().movielens_md5 is None


def test_prefect_runs_locally_with_analytics_off(recsys_env: Path) -> None:
    overrides = load_settings().prefect_overrides()

    assert overrides["PREFECT_HOME"] == str((recsys_env / "prefect").resolve())
    assert overrides["PREFECT_SERVER_ANALYTICS_ENABLED"] is False
    assert "PREFECT_API_URL" not in overrides
    assert overrides["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] is None  # no 1 s join per flow
    # the temporary server records task runs in batches, as `recsys server start`'s does
    assert overrides["PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE"] == 100


def test_a_recorder_batch_from_the_environment_wins(
    recsys_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE", "1")

    overrides = load_settings().prefect_overrides()

    assert "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE" not in overrides
    assert overrides["PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_READ_BATCH_SIZE"] == 100


def test_a_heartbeat_frequency_from_the_environment_wins(
    recsys_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "60")

    assert "PREFECT_FLOWS_HEARTBEAT_FREQUENCY" not in load_settings().prefect_overrides()


def test_only_the_settings_module_reads_the_environment() -> None:
    readers = [
        str(path.relative_to(REPO))
        for folder in ("tasks", "flows", "recommender")
        for path in (REPO / folder).rglob("*.py")
        if path.name != "config.py" and re.search(r"os\.environ|os\.getenv", path.read_text())
    ]

    assert readers == []


def test_env_example_documents_every_setting() -> None:
    from tasks.config import Settings

    example = (REPO / ".env.example").read_text()
    readme = (REPO / "README.md").read_text()
    for name, field in Settings.model_fields.items():
        aliases = getattr(field.validation_alias, "choices", None) or [f"RECSYS_{name.upper()}"]
        variable = str(aliases[0])
        assert variable in example, f"{variable} missing from .env.example"
        assert variable in readme, f"{variable} missing from the README's configuration table"
