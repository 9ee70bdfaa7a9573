"""The API against real parts: a champion registered in a SQLite MLflow store, PostgreSQL of its
own (so a test can restart it), the loopback ThingsBoard stand-in, and ``python -m api`` as a
real uvicorn process on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import polars as pl
import pytest

from bench.synth import SyntheticSize, write_ml100k
from recommender import KMeansKNN, Ratings
from tasks.warehouse.connection import import_pgserver
from tests.conftest import free_port
from tests.report.test_thingsboard import TOKEN, FakeThingsBoard, running_thingsboard

REPO = Path(__file__).resolve().parents[2]
API_TOKEN = "api-token-for-tests"
SIZE = SyntheticSize(ratings=4000, users=80, items=150)


@dataclass
class Postgres:
    """A PostgreSQL server of the API tests' own, which a test may stop and start again."""

    folder: Path
    uri: str = ""
    server: Any = None

    def start(self) -> None:
        pgserver = import_pgserver()
        self.server = pgserver.get_server(self.folder, cleanup_mode="stop")
        self.uri = str(self.server.get_uri())

    def stop(self) -> None:
        pgserver = import_pgserver()
        pgserver.pg_ctl(  # type: ignore[attr-defined]
            ["-w", "-m", "fast", "stop"], pgdata=self.server.pgdata, user=self.server.system_user
        )

    def restart(self) -> None:
        pgserver = import_pgserver()
        # as pgserver starts it: no TCP, its socket in the data folder
        options = ["-o", '-h ""', "-o", f"-k {self.folder}"]
        pgserver.pg_ctl(  # type: ignore[attr-defined]
            ["-w", *options, "-l", str(self.server.log), "start"],
            pgdata=self.server.pgdata,
            user=self.server.system_user,
        )


@pytest.fixture(scope="package")
def api_postgres() -> Iterator[Postgres]:
    folder = Path(tempfile.mkdtemp(prefix="recsys-api-pg-", dir="/tmp"))
    postgres = Postgres(folder)
    postgres.start()
    try:
        yield postgres
    finally:
        # pg_ctl, not the handle: after a test's restart the handle no longer owns the server
        with contextlib.suppress(Exception):
            postgres.stop()
        postgres.server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="package")
def api_thingsboard() -> Iterator[FakeThingsBoard]:
    with running_thingsboard() as tb:
        yield tb


@dataclass
class Project:
    """A project home holding a registered champion, and the environment the API runs with."""

    home: Path
    data: Path
    env: dict[str, str]
    ratings: Ratings
    titles: dict[int, str] = field(default_factory=dict)


def fit_model(ratings: Ratings, n_clusters: int = 2) -> KMeansKNN:
    return KMeansKNN(n_clusters=n_clusters, n_neighbors=10).fit(ratings)


def register(project: Project, model: KMeansKNN, promote: bool = True) -> str:
    """Log and register ``model`` as the train flow does; it becomes champion when
    ``promote`` (else challenger). Runs in a subprocess-free way with the project's settings."""
    from mlflow import MlflowClient

    from tasks.config import environment_unchanged, load_settings
    from tasks.train.tracking import (
        REGISTERED_MODEL,
        configure_mlflow,
        experiment_id,
        log_model_version,
    )

    with environment_unchanged(*project.env):
        os.environ.update(project.env)
        settings = load_settings()
        client: MlflowClient = configure_mlflow(settings)
        experiment = experiment_id(client, settings)
        parent = client.create_run(experiment, run_name="sweep (test)")
        titles = pl.DataFrame(
            {"item_id": list(project.titles), "title": list(project.titles.values())}
        )
        summary = {"params": model.get_params(), "metrics": {"rmse": 0.95}}
        tags = {"dataset": "ml-100k", "dataset_version": "test"}
        run_id, uri = log_model_version(client, experiment, parent.info.run_id, model, titles,
                                        summary, tags)  # fmt: skip
        import mlflow

        version = str(mlflow.register_model(uri, REGISTERED_MODEL, tags=tags).version)
        alias = "champion" if promote else "challenger"
        client.set_registered_model_alias(REGISTERED_MODEL, alias, version)
        return version


@pytest.fixture(scope="package")
def project(
    tmp_path_factory: pytest.TempPathFactory,
    api_postgres: Postgres,
    api_thingsboard: FakeThingsBoard,
) -> Project:
    root = tmp_path_factory.mktemp("api")
    data = write_ml100k(root / "ml-100k", SIZE, seed=5)
    frame = pl.read_csv(data / "u.data", separator="\t", has_header=False,
                        new_columns=["user_id", "item_id", "rating", "timestamp"])  # fmt: skip
    ratings = Ratings.from_frame(frame)
    items = pl.read_csv(data / "u.item", separator="|", has_header=False, encoding="latin-1",
                        truncate_ragged_lines=True)  # fmt: skip
    titles = dict(zip(items[:, 0].to_list(), items[:, 1].to_list(), strict=True))
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("RECSYS_", "MLFLOW_", "THINGS"))
    }
    env.update(
        {
            "RECSYS_HOME": str(root / "home"),
            "RECSYS_DATABASE_URL": api_postgres.uri,
            "RECSYS_API_TOKEN": API_TOKEN,
            "THINGSBOARD_URL": api_thingsboard.url,
            "THINGSBOARD_DEVICE_TOKEN": TOKEN,
            "RECSYS_MODEL_POLL_SECONDS": "0.5",
            "RECSYS_TELEMETRY_INTERVAL_SECONDS": "0.5",
            "RECSYS_API_MAX_N": "100",
        }
    )
    project = Project(root / "home", data, env, ratings, titles)
    register(project, fit_model(ratings))
    return project


@dataclass
class Api:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def stop(self) -> bool:
        """SIGTERM: uvicorn's graceful shutdown (the service flushes); whether it ended so
        (uvicorn re-raises the signal once shut down: -15, or 0)."""
        self.process.terminate()
        code = self.process.wait(timeout=60)
        return code in (0, -15) and "Finished server process" in self.log.read_text()


def start_api(project: Project, log: Path, **extra: str) -> Api:
    return launch_api({**project.env, **extra}, log)


def launch_api(env: dict[str, str], log: Path, cwd: Path = REPO) -> Api:
    """``python -m api`` with ``env`` on a free port, once it serves the champion."""
    port = free_port()
    handle = open(log, "ab")  # noqa: SIM115 (the process writes it until it stops)
    process = subprocess.Popen(
        [sys.executable, "-m", "api"], cwd=cwd, env={**env, "RECSYS_API_PORT": str(port)},
        stdout=handle, stderr=handle,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the API exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/model/info", timeout=2).status_code == 200:
                return Api(url, process, log)
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"the API did not answer within 120 s:\n{log.read_text()}")


@pytest.fixture(scope="package")
def api(project: Project, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    server = start_api(project, tmp_path_factory.mktemp("api-log") / "api.log")
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.stop()


def known_user(project: Project) -> int:
    return int(project.ratings.user_ids[0])


def rated_items(project: Project, user_id: int) -> set[int]:
    users = project.ratings.raw_users()
    return set(project.ratings.raw_items()[users == user_id].tolist())


def unrated_item(project: Project, user_id: int) -> int:
    rated = rated_items(project, user_id)
    return int(next(i for i in project.ratings.item_ids.tolist() if i not in rated))


def prediction_rows(project: Project) -> int:
    import psycopg

    with psycopg.connect(project.env["RECSYS_DATABASE_URL"]) as conn:
        row = conn.execute("SELECT count(*) FROM serving.predictions").fetchone()
    return int(row[0]) if row else 0


def unknown_user(project: Project) -> int:
    return int(np.max(project.ratings.user_ids)) + 1000
