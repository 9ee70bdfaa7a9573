"""Settings: the one object that decides every endpoint, with embedded local defaults.

Nothing else in the project reads ``os.environ``. With nothing set, everything runs under
``RECSYS_HOME`` (default ``./.recsys``): a lake folder, MLflow on SQLite, Prefect's ephemeral
API with its own home, an embedded PostgreSQL. Environment variables (or ``.env``) point each
part at a real service instead.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tasks.movielens.catalog import DATASETS, movielens_set

GROUPLENS_ML100K_URL = DATASETS["ml-100k"].url
GROUPLENS_ML100K_MD5 = DATASETS["ml-100k"].md5


class Settings(BaseSettings):
    """Every endpoint and knob of the pipeline; see ``.env.example`` for each variable."""

    model_config = SettingsConfigDict(
        env_prefix="RECSYS_", env_file=".env", extra="ignore", populate_by_name=True
    )

    home: Path = Field(default=Path(".recsys"), description="project data folder")
    dataset: str = Field(
        default="ml-100k",
        description="MovieLens member: a name of tasks/movielens/catalog.py's registry",
    )
    # Unset, these two follow the dataset: its GroupLens archive and published MD5.
    movielens_source: str = Field(
        default=GROUPLENS_ML100K_URL,
        description="archive URL, local zip, or local extracted folder",
    )
    movielens_md5: str | None = Field(
        default=GROUPLENS_ML100K_MD5,
        description="expected MD5 of the archive; empty to skip the check",
    )
    fold_scheme: Literal["random", "temporal"] = Field(
        default="random",
        description="folds of the members without official ones (all but ml-100k)",
    )
    fold_seed: int = Field(default=0, ge=0, description="seed of the random fold scheme")
    download_timeout_seconds: float = Field(default=60.0, gt=0)
    lake_url: str | None = Field(default=None, description="file://... or s3://bucket/prefix")
    s3_endpoint_url: str | None = Field(default=None, description="MinIO or other S3 API URL")
    aws_access_key_id: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("AWS_ACCESS_KEY_ID", "RECSYS_AWS_ACCESS_KEY_ID"),
    )
    aws_secret_access_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("AWS_SECRET_ACCESS_KEY", "RECSYS_AWS_SECRET_ACCESS_KEY"),
    )
    aws_region: str = Field(
        default="us-east-1",
        validation_alias=AliasChoices("AWS_DEFAULT_REGION", "RECSYS_AWS_REGION"),
    )
    aws_credentials_block: str | None = Field(
        default=None, description="name of a prefect-aws AwsCredentials block (instead of keys)"
    )
    database_url: SecretStr | None = Field(
        default=None, description="postgresql://...; unset starts an embedded PostgreSQL"
    )
    mlflow_tracking_uri: str | None = Field(
        default=None,
        validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "RECSYS_MLFLOW_TRACKING_URI"),
    )
    thingsboard_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("THINGSBOARD_URL", "RECSYS_THINGSBOARD_URL"),
    )
    thingsboard_device_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "THINGSBOARD_DEVICE_TOKEN", "RECSYS_THINGSBOARD_DEVICE_TOKEN"
        ),
    )
    thingsboard_username: str | None = Field(
        default=None,
        validation_alias=AliasChoices("THINGSBOARD_USERNAME", "RECSYS_THINGSBOARD_USERNAME"),
        description="a tenant administrator: provisions the device and dashboard itself",
    )
    thingsboard_password: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("THINGSBOARD_PASSWORD", "RECSYS_THINGSBOARD_PASSWORD"),
    )
    thingsboard_device: str = Field(
        default="movielens-recommender",
        validation_alias=AliasChoices("THINGSBOARD_DEVICE", "RECSYS_THINGSBOARD_DEVICE"),
        description="device name the dashboard's alias finds",
    )
    thingsboard_retry_after_cap_seconds: float = Field(
        default=30.0, gt=0, description="the longest Retry-After of ThingsBoard's honoured"
    )
    outbox_max_attempts: int = Field(
        default=5, ge=1, description="tries of a telemetry message ThingsBoard refuses (4xx)"
    )
    reports_dir: Path | None = Field(
        default=None, description="where the report flow writes; default <home>/reports"
    )
    prefect_home: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("PREFECT_HOME", "RECSYS_PREFECT_HOME"),
        description="Prefect's home; default <home>/prefect",
    )
    prefect_api_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("PREFECT_API_URL", "RECSYS_PREFECT_API_URL"),
        description="a Prefect server; unset uses Prefect's ephemeral API",
    )
    prefect_startup_timeout_seconds: int = Field(
        default=120,
        ge=1,
        validation_alias=AliasChoices(
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS",
            "RECSYS_PREFECT_STARTUP_TIMEOUT_SECONDS",
        ),
        description="how long a local run waits for Prefect's temporary server to start",
    )
    max_rejects: int = Field(default=0, ge=0, description="rejected rows tolerated per load")
    max_member_bytes: int = Field(
        default=1536 * 1024 * 1024,
        ge=1,
        description="largest file of a MovieLens archive or folder that is stored and read",
    )
    task_runner: Literal["thread", "dask"] = Field(
        default="thread", description="how the training sweep runs its tasks"
    )
    dask_address: str | None = Field(
        default=None, description="a Dask scheduler (tcp://host:8786); unset: a local cluster"
    )
    sweep_workers: int = Field(default=2, ge=1, description="concurrent sweep tasks (local)")
    work_pool: str = Field(
        default="recsys-process", description="the Prefect process work pool of the deployments"
    )
    project_dir: Path | None = Field(
        default=None,
        description="the folder holding flows/ on a worker: prefect.yaml's pull step enters it",
    )
    # --- the HTTP service (api/) ---
    api_host: str = Field(default="127.0.0.1", description="address the API listens on")
    api_port: int = Field(default=8000, ge=1, le=65535, description="port the API listens on")
    api_workers: int = Field(default=1, ge=1, description="uvicorn worker processes of the API")
    api_token: SecretStr | None = Field(
        default=None,
        description="bearer token of the API's endpoints that change something; unset: they "
        "answer 403",
    )
    api_max_n: int = Field(default=100, ge=1, description="most recommendations one answer holds")
    api_max_batch: int = Field(default=1000, ge=1, description="most users or pairs per request")
    api_max_body_bytes: int = Field(
        default=1_048_576, ge=1024, description="largest JSON request body the API reads"
    )
    api_max_upload_bytes: int = Field(
        default=512 * 1024 * 1024, ge=1024, description="largest file or model upload"
    )
    model_poll_seconds: float = Field(
        default=10.0, gt=0, description="how often the API checks whether the alias moved"
    )
    telemetry_interval_seconds: float = Field(
        default=10.0, gt=0, description="how often the API sends its aggregates to ThingsBoard"
    )
    recorder_flush_seconds: float = Field(
        default=0.2, gt=0, description="how often the API writes its answers to PostgreSQL"
    )

    @field_validator("home", mode="after")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("thingsboard_device_token", "thingsboard_password", "api_token", mode="after")
    @classmethod
    def _secret_or_none(cls, value: SecretStr | None) -> SecretStr | None:
        """An empty value (``THINGSBOARD_DEVICE_TOKEN=`` in compose) means unset."""
        return value if value is not None and value.get_secret_value().strip() else None

    @field_validator("movielens_md5", mode="after")
    @classmethod
    def _md5_or_none(cls, value: str | None) -> str | None:
        return value.strip().lower() or None if value else None

    @field_validator("dataset", mode="after")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        return movielens_set(value).name

    @model_validator(mode="after")
    def _archive_of_the_dataset(self) -> Settings:
        """Source and MD5 not set explicitly are the dataset's published ones."""
        member = movielens_set(self.dataset)
        if "movielens_source" not in self.model_fields_set:
            self.movielens_source = member.url
        if "movielens_md5" not in self.model_fields_set:
            self.movielens_md5 = member.md5
        return self

    @cached_property
    def resolved_lake_url(self) -> str:
        """The lake root: ``RECSYS_LAKE_URL`` or a folder under the project home."""
        return (self.lake_url or (self.home / "lake").as_uri()).rstrip("/")

    @property
    def lake_is_s3(self) -> bool:
        return self.resolved_lake_url.startswith("s3://")

    @property
    def resolved_mlflow_tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.home / 'mlflow' / 'mlflow.db'}"

    @property
    def mlflow_artifact_location(self) -> str:
        return (self.home / "mlflow" / "artifacts").as_uri()

    @property
    def resolved_reports_dir(self) -> Path:
        return (self.reports_dir or self.home / "reports").expanduser().resolve()

    @property
    def thingsboard_configured(self) -> bool:
        """A URL and either a device token or a tenant login to provision one."""
        login = self.thingsboard_username and self.thingsboard_password is not None
        return bool(self.thingsboard_url) and bool(self.thingsboard_device_token or login)

    @property
    def resolved_prefect_home(self) -> Path:
        return (self.prefect_home or self.home / "prefect").expanduser().resolve()

    @property
    def downloads_dir(self) -> Path:
        return self.home / "downloads"

    def s3_storage_options(self) -> dict[str, Any]:
        """Keyword arguments for ``s3fs.S3FileSystem`` (credentials never logged)."""
        options: dict[str, Any] = {"client_kwargs": {"region_name": self.aws_region}}
        if self.s3_endpoint_url:
            options["endpoint_url"] = self.s3_endpoint_url
        if self.aws_access_key_id and self.aws_secret_access_key:
            options["key"] = self.aws_access_key_id.get_secret_value()
            options["secret"] = self.aws_secret_access_key.get_secret_value()
        return options

    def prefect_overrides(self) -> dict[str, Any]:
        """Prefect settings for a local run: project home, analytics off, results persisted."""
        overrides: dict[str, Any] = {
            "PREFECT_HOME": str(self.resolved_prefect_home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": False,
            "PREFECT_RESULTS_PERSIST_BY_DEFAULT": True,
            # Prefect's default (20 s, counted in its own sleeps) is too short on a busy
            # two-core machine: the first run's migrations alone can take longer
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": self.prefect_startup_timeout_seconds,
        }
        if self.prefect_api_url:
            overrides["PREFECT_API_URL"] = self.prefect_api_url
        # A flow's heartbeat thread sleeps in whole seconds and is joined when the flow ends:
        # up to 1 s at the end of every flow and subflow, 3 s of a 14 s cached pipeline run
        # (bench/pipeline.py). Heartbeats let automations mark a run whose process vanished;
        # a local run's process is the user's own. Workers keep them (they never come here),
        # and a PREFECT_FLOWS_HEARTBEAT_FREQUENCY set in the environment wins.
        if "PREFECT_FLOWS_HEARTBEAT_FREQUENCY" not in os.environ:
            overrides["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] = None
        # for the temporary server this process starts (it inherits these settings)
        overrides |= {k: v for k, v in PREFECT_SERVER_SETTINGS.items() if k not in os.environ}
        return overrides


# The local Prefect server's own settings (its SQLite database): the services that record task
# runs and events from the runs' events write them in batches instead of a transaction per
# event or per 20. Each such write can collide with the API's (SQLite has one writer): the API
# answers 503 and the client retries after 2 to 4 s. A cached pipeline run against the local
# server met three such collisions in most runs, 7 s of its 15; with the task-run batches one,
# with both none in three runs of four. What the UI shows is at most the services' 5 s flush
# interval late.
PREFECT_SERVER_SETTINGS = {
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": 100,
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE": 1000,
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_READ_BATCH_SIZE": 100,
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_READ_BATCH_SIZE": 100,
}


def set_process_environment(prefect_home: bool) -> None:
    """The environment an entry point sets before Prefect and MLflow are imported (see
    ``tasks/process_env.py``): Prefect's home inside RECSYS_HOME (when ``prefect_home``) and
    MLflow's usage telemetry off. Values already set win."""
    if prefect_home:
        os.environ.setdefault("PREFECT_HOME", str(load_settings().resolved_prefect_home))
        # Prefect creates its home at import without parents: a fresh RECSYS_HOME needs them
        Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


_ENVIRONMENT_LOCK = threading.RLock()


def load_settings(**overrides: Any) -> Settings:
    """Read the settings from the environment and ``.env`` (keyword overrides win)."""
    with _ENVIRONMENT_LOCK:  # never inside an environment_unchanged block of another thread
        return Settings(**overrides)


@contextlib.contextmanager
def environment_unchanged(*names: str) -> Iterator[None]:
    """Undo, on leaving, what the block wrote to these environment variables; no thread reads
    the settings meanwhile. For libraries that export what they are given (MLflow exports the
    tracking URI), which the settings would then read as the user's choice."""
    with _ENVIRONMENT_LOCK:
        before = {name: os.environ.get(name) for name in names}
        try:
            yield
        finally:
            for name, value in before.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
